// The autocast shim (peft/core/autocast.h): the scope turns bf16 autocast on
// for its device only, restores the previous state on exit, and
// autocast_dtype_for reports the dtype that applies to a tensor.
#include "peft/core/autocast.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace peft {
namespace {

TEST(Autocast, ScopeTurnsBf16OnForItsDeviceAndRestores) {
  const at::Tensor x = at::ones({2, 3});
  ASSERT_FALSE(autocast_enabled(at::kCPU));
  EXPECT_FALSE(autocast_dtype_for(x).has_value());
  EXPECT_FALSE(autocast_dtype_for(at::Tensor()).has_value());
  {
    AutocastScope off(false);
    EXPECT_FALSE(autocast_enabled(at::kCPU));
  }
  {
    AutocastScope on(true, at::kCPU);
    EXPECT_TRUE(autocast_enabled(at::kCPU));
    EXPECT_FALSE(autocast_enabled(at::kCUDA));
    EXPECT_EQ(autocast_dtype(at::kCPU), at::kBFloat16);
    EXPECT_EQ(autocast_dtype_for(x), at::kBFloat16);
    // Autocast really applies: a CPU matmul runs in bf16.
    EXPECT_EQ(at::matmul(x, x.t()).scalar_type(), at::kBFloat16);
    {
      AutocastScope nested(true);
      EXPECT_TRUE(autocast_enabled(at::kCPU));
    }
    EXPECT_TRUE(autocast_enabled(at::kCPU)) << "an inner scope must restore, not switch off";
  }
  EXPECT_FALSE(autocast_enabled(at::kCPU));
  EXPECT_EQ(at::matmul(x, x.t()).scalar_type(), at::kFloat);
  EXPECT_FALSE(autocast_enabled(at::kMeta));  // not a device autocast knows here
}

}  // namespace
}  // namespace peft
