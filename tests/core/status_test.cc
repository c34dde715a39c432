#include "peft/core/status.h"

#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace peft {
namespace {

absl::StatusOr<int> half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd: " + std::to_string(x));
  return x / 2;
}

absl::StatusOr<int> quarter(int x) {
  PEFT_ASSIGN_OR_RETURN(int h, half(x));
  PEFT_ASSIGN_OR_RETURN(int q, half(h));
  return q;
}

absl::Status check_positive(int x) {
  if (x <= 0) return absl::OutOfRangeError("not positive");
  return absl::OkStatus();
}

absl::Status both(int x) {
  PEFT_RETURN_IF_ERROR(check_positive(x));
  PEFT_RETURN_IF_ERROR(quarter(x).status());
  return absl::OkStatus();
}

TEST(StatusTest, AssignOrReturnPropagates) {
  EXPECT_EQ(*quarter(8), 2);
  absl::StatusOr<int> bad = quarter(6);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "odd: 3");
}

TEST(StatusTest, ReturnIfErrorPropagates) {
  EXPECT_TRUE(both(8).ok());
  EXPECT_EQ(both(-1).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(both(6).code(), absl::StatusCode::kInvalidArgument);
}

TEST(StatusTest, TorchErrorBecomesStatus) {
  absl::Status s = status_from_torch_error("matmul", [] {
    at::Tensor a = at::ones({2, 3});
    at::Tensor b = at::ones({4, 5});
    (void)at::matmul(a, b);
  });
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("matmul: "), std::string::npos);
  EXPECT_TRUE(status_from_torch_error("ok", [] {}).ok());
}

}  // namespace
}  // namespace peft
