// Recipes: text format parsing, --set overrides (scalars, enums, strings,
// indexed adapters), errors that name the field for unknown fields, wrong
// types and out-of-range values, and the training device / c10d backend
// against this build and machine.
#include <algorithm>
#include <string>

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "tests/testing/assets.h"
#include "trainers/recipe.h"

namespace peft::trainers {
namespace {

constexpr const char* kRecipe = R"(
model: "/models/stories260K"
output_dir: "runs/x"
data { train_file: "train.jsonl" seq_len: 128 }
adapters { name: "default" lora { r: 8 alpha: 16 } target { preset: "all_linear" } }
training { steps: 20 micro_batch: 2 precision: BF16 }
reweighting { strategy: LIN_UPPER temperature: 0.5 }
)";

std::string message(const absl::Status& s) { return std::string(s.message()); }

TEST(Recipe, ParsesWithDefaults) {
  absl::StatusOr<proto::Recipe> r = parse_recipe(kRecipe);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(validate_recipe(*r).ok());
  EXPECT_EQ(r->data().seq_len(), 128);
  EXPECT_EQ(r->training().grad_accum(), 1);  // default
  EXPECT_FLOAT_EQ(r->optimizer().lr(), 2e-4f);
  EXPECT_EQ(r->training().precision(), proto::PrecisionChoice::BF16);
  EXPECT_EQ(r->adapters(0).lora().r(), 8);
  // The effective recipe round-trips through text.
  absl::StatusOr<proto::Recipe> again = parse_recipe(recipe_to_text(*r));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->SerializeAsString(), r->SerializeAsString());
}

TEST(Recipe, OverridesSetScalarsEnumsStringsAndIndexedAdapters) {
  proto::Recipe r = *parse_recipe(kRecipe);
  ASSERT_TRUE(apply_override(&r, "training.steps=200").ok());
  ASSERT_TRUE(apply_override(&r, "optimizer.lr=0.001").ok());
  ASSERT_TRUE(apply_override(&r, "training.precision=FP32").ok());
  ASSERT_TRUE(apply_override(&r, "output_dir=runs/other dir").ok());
  ASSERT_TRUE(apply_override(&r, "adapters.0.lora.r=16").ok());
  ASSERT_TRUE(apply_override(&r, "checkpoint.merge_on_finish=true").ok());
  EXPECT_EQ(r.training().steps(), 200);
  EXPECT_FLOAT_EQ(r.optimizer().lr(), 0.001f);
  EXPECT_EQ(r.training().precision(), proto::PrecisionChoice::FP32);
  EXPECT_EQ(r.output_dir(), "runs/other dir");
  EXPECT_EQ(r.adapters(0).lora().r(), 16);
  EXPECT_EQ(r.adapters(0).lora().alpha(), 16);  // untouched siblings stay
  EXPECT_TRUE(r.checkpoint().merge_on_finish());
}

TEST(Recipe, OverridesReplaceListsAndWholeMessages) {
  proto::Recipe r = *parse_recipe(kRecipe);
  // A list, comma-separated or in text format, replaces the field.
  ASSERT_TRUE(apply_override(&r, "adapters.0.target.modules=q_proj,v_proj").ok());
  ASSERT_EQ(r.adapters(0).target().modules_size(), 2);
  EXPECT_EQ(r.adapters(0).target().modules(0), "q_proj");
  EXPECT_EQ(r.adapters(0).target().modules(1), "v_proj");
  ASSERT_TRUE(apply_override(&r, "adapters.0.target.modules=[\"o_proj\"]").ok());
  ASSERT_EQ(r.adapters(0).target().modules_size(), 1);
  EXPECT_EQ(r.adapters(0).target().modules(0), "o_proj");
  EXPECT_EQ(r.adapters(0).target().preset(), "all_linear");  // siblings stay
  // A message in text format replaces the whole message.
  ASSERT_TRUE(apply_override(&r, "reweighting={ strategy: QUADRATIC }").ok());
  EXPECT_EQ(r.reweighting().strategy(), proto::ReweightingConfig::QUADRATIC);
  EXPECT_FALSE(r.reweighting().has_temperature()) << "the old message was merged, not replaced";
  ASSERT_TRUE(apply_override(&r, "adapters.0.lora={ r: 4 }").ok());
  EXPECT_EQ(r.adapters(0).lora().r(), 4);
  EXPECT_FALSE(r.adapters(0).lora().has_alpha());
  // A whole list entry: switch the adapter's method.
  ASSERT_TRUE(apply_override(&r, "adapters.0={ name: \"b\" bone { r: 32 } target { preset: \"mlp\" } }").ok());
  ASSERT_EQ(r.adapters_size(), 1);
  EXPECT_EQ(r.adapters(0).name(), "b");
  EXPECT_FALSE(r.adapters(0).has_lora());
  EXPECT_EQ(r.adapters(0).bone().r(), 32);
  EXPECT_EQ(r.adapters(0).target().preset(), "mlp");
  EXPECT_NE(message(apply_override(&r, "adapters.1={ name: \"c\" }")).find("adapters has 1 entries, no index 1"),
            std::string::npos);
  EXPECT_NE(message(apply_override(&r, "adapters.0=lora")).find("'adapters.0' is a message"), std::string::npos);
  EXPECT_NE(message(apply_override(&r, "training.0={ }")).find("'training' is not a list of messages"),
            std::string::npos);
  EXPECT_NE(message(apply_override(&r, "adapters.0={ nope: 1 }")).find("--set adapters.0"), std::string::npos);
  // Errors name the field.
  EXPECT_NE(message(apply_override(&r, "reweighting=QUADRATIC")).find("'reweighting' is a message"), std::string::npos);
  EXPECT_NE(message(apply_override(&r, "adapters={ name: \"x\" }")).find("'adapters' is a list of messages"),
            std::string::npos);
  EXPECT_NE(message(apply_override(&r, "reweighting={ strategy: NOPE }")).find("--set reweighting"), std::string::npos);
}

TEST(Recipe, DifferencesNameEachChangedField) {
  const proto::Recipe a = *parse_recipe(kRecipe);
  EXPECT_EQ(recipe_differences(a, a), "");
  proto::Recipe b = a;
  ASSERT_TRUE(apply_override(&b, "training.steps=40").ok());
  ASSERT_TRUE(apply_override(&b, "adapters.0.lora.r=4").ok());
  const std::string d = recipe_differences(a, b);
  EXPECT_NE(d.find("modified: training.steps: 20 -> 40"), std::string::npos) << d;
  EXPECT_NE(d.find("adapters[0].lora.r: 8 -> 4"), std::string::npos) << d;
  EXPECT_EQ(std::count(d.begin(), d.end(), '\n'), 2) << d;
}

TEST(Recipe, ACustomPromptTemplateServesRecordsWithoutInputToo) {
  proto::Recipe r = *parse_recipe(kRecipe);
  const data::DataOptions alpaca = data_options(r);
  EXPECT_EQ(alpaca.prompt_template, data::DataOptions().prompt_template);
  EXPECT_EQ(alpaca.prompt_template_no_input, data::DataOptions().prompt_template_no_input);
  ASSERT_TRUE(apply_override(&r, "data.prompt_template=\"Q: {instruction} {input}\\nA: \"").ok());
  data::DataOptions o = data_options(r);
  EXPECT_EQ(o.prompt_template, "Q: {instruction} {input}\nA: ");
  EXPECT_EQ(o.prompt_template_no_input, "Q: {instruction} {input}\nA: ") << "mixed with Alpaca's no-input template";
  ASSERT_TRUE(apply_override(&r, "data.prompt_template_no_input=\"Q: {instruction}\\nA: \"").ok());
  o = data_options(r);
  EXPECT_EQ(o.prompt_template_no_input, "Q: {instruction}\nA: ");
  EXPECT_TRUE(validate_recipe(r).ok());
  ASSERT_TRUE(apply_override(&r, "data.prompt_template_no_input=\"A: \"").ok());
  absl::Status st = validate_recipe(r);
  EXPECT_NE(message(st).find("data.prompt_template_no_input has no \"{instruction}\""), std::string::npos) << st;
}

// A --set changes exactly the field it names: a value that would reach
// other fields through the text-format parser is refused, and nothing
// changes.
TEST(Recipe, SetChangesOnlyTheFieldItNames) {
  const proto::Recipe before = *parse_recipe(kRecipe);
  proto::Recipe r = before;
  absl::Status st = apply_override(&r, "training={ steps: 2 } data { train_file: \"/etc/passwd\" }");
  EXPECT_EQ(message(st), "--set training: the value also sets 'data'; a --set changes only the field it names");
  st = apply_override(&r, "model=\"/tmp/m\" output_dir: \"/etc\"");
  EXPECT_EQ(message(st), "--set model: the value also sets 'output_dir'; a --set changes only the field it names");
  st = apply_override(&r, "training.steps=3 micro_batch: 9");
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(r.SerializeAsString(), before.SerializeAsString());
  ASSERT_TRUE(apply_override(&r, "training={ steps: 2 }").ok());
  EXPECT_EQ(r.training().steps(), 2);
  EXPECT_EQ(r.data().train_file(), before.data().train_file());
}

TEST(Recipe, ChatDataOptions) {
  proto::Recipe r = *parse_recipe(kRecipe);
  data::DataOptions o = data_options(r);
  EXPECT_EQ(o.chat_template, "auto");
  EXPECT_FALSE(o.split_special_tokens);
  ASSERT_TRUE(apply_override(&r, "data.format=CHAT").ok());
  ASSERT_TRUE(apply_override(&r, "data.chat_template=\"chatml\"").ok());
  ASSERT_TRUE(apply_override(&r, "data.split_special_tokens=true").ok());
  o = data_options(r);
  EXPECT_EQ(o.format, data::DataOptions::Format::kChat);
  EXPECT_EQ(o.chat_template, "chatml");
  EXPECT_TRUE(o.split_special_tokens);
  EXPECT_TRUE(validate_recipe(r).ok());
  ASSERT_TRUE(apply_override(&r, "data.chat_template=\"vicuna\"").ok());
  absl::Status st = validate_recipe(r);
  EXPECT_NE(message(st).find("data.chat_template: unknown chat template \"vicuna\""), std::string::npos) << st;
}

TEST(Recipe, ErrorsNameTheField) {
  proto::Recipe r = *parse_recipe(kRecipe);
  EXPECT_NE(message(apply_override(&r, "training.stepz=3")).find("unknown field 'training.stepz'"), std::string::npos);
  EXPECT_NE(message(apply_override(&r, "training.steps=many")).find("--set training.steps"), std::string::npos);
  EXPECT_NE(message(apply_override(&r, "training.precision=FP8")).find("--set training.precision"), std::string::npos);
  EXPECT_NE(message(apply_override(&r, "adapters.3.lora.r=1")).find("no index 3"), std::string::npos);
  EXPECT_NE(message(apply_override(&r, "adapters.lora.r=1")).find("needs an index"), std::string::npos);
  EXPECT_NE(message(apply_override(&r, "adapters.99999999999.lora.r=1")).find("no index 99999999999"),
            std::string::npos);
  EXPECT_NE(message(apply_override(&r, "adapters.99999999999={ }")).find("no index 99999999999"), std::string::npos);
  EXPECT_NE(message(apply_override(&r, "nonsense")).find("expected path.to.field=value"), std::string::npos);

  absl::Status s = parse_recipe("model: \"m\"\nbogus_field: 3\n").status();
  EXPECT_NE(message(s).find("line 2"), std::string::npos) << s;
  EXPECT_NE(message(s).find("bogus_field"), std::string::npos) << s;
  s = parse_recipe("training { steps: \"ten\" }").status();
  EXPECT_FALSE(s.ok());

  auto invalid = [&](const std::string& assignment) {
    proto::Recipe copy = *parse_recipe(kRecipe);
    EXPECT_TRUE(apply_override(&copy, assignment).ok()) << assignment;
    return message(validate_recipe(copy));
  };
  EXPECT_NE(invalid("training.micro_batch=0").find("training.micro_batch must be positive, got 0"), std::string::npos);
  EXPECT_NE(invalid("optimizer.lr=-1").find("optimizer.lr must be positive"), std::string::npos);
  EXPECT_NE(invalid("data.validation_fraction=1.5").find("data.validation_fraction must be in [0, 1)"),
            std::string::npos);
  EXPECT_NE(invalid("schedule.warmup_steps=50").find("exceeds training.steps"), std::string::npos);
  EXPECT_NE(invalid("adapters.0.lora.r=0").find("adapters[0]: lora.r must be positive"), std::string::npos);
  proto::Recipe no_model = *parse_recipe(kRecipe);
  no_model.clear_model();
  EXPECT_NE(message(validate_recipe(no_model)).find("model is required"), std::string::npos);
  EXPECT_EQ(load_recipe("/nonexistent.textproto").status().code(), absl::StatusCode::kNotFound);
}

TEST(Recipe, DeviceDefaultsToTheCpuWithGloo) {
  proto::Recipe r = *parse_recipe(kRecipe);
  EXPECT_EQ(r.training().device(), proto::TrainingConfig::CPU);
  EXPECT_TRUE(validate_recipe(r).ok());
  EXPECT_EQ(resolved_device(r), proto::TrainingConfig::CPU);
  EXPECT_EQ(resolved_backend(r), proto::DistributedConfig::GLOO);
  ASSERT_TRUE(apply_override(&r, "distributed.backend=GLOO").ok());
  EXPECT_TRUE(validate_recipe(r).ok());
  EXPECT_NE(message(apply_override(&r, "training.device=TPU")).find("--set training.device"), std::string::npos);
}

TEST(Recipe, AutoDeviceFollowsTheMachine) {
  proto::Recipe r = *parse_recipe("training { device: AUTO }");
  ASSERT_EQ(r.training().device(), proto::TrainingConfig::AUTO);
  r = *parse_recipe(kRecipe);
  ASSERT_TRUE(apply_override(&r, "training.device=AUTO").ok());
  EXPECT_TRUE(validate_recipe(r).ok());
  const bool cuda = torch::cuda::is_available();
  EXPECT_EQ(resolved_device(r), cuda ? proto::TrainingConfig::CUDA : proto::TrainingConfig::CPU);
  EXPECT_EQ(resolved_backend(r), cuda ? proto::DistributedConfig::NCCL : proto::DistributedConfig::GLOO);
}

TEST(Recipe, CudaDeviceNeedsACudaDevice) {
  proto::Recipe r = *parse_recipe(kRecipe);
  ASSERT_TRUE(apply_override(&r, "training.device=CUDA").ok());
  const absl::Status s = validate_recipe(r);
  if (torch::cuda::is_available()) {
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(resolved_device(r), proto::TrainingConfig::CUDA);
    EXPECT_EQ(resolved_backend(r), proto::DistributedConfig::NCCL);
    ASSERT_TRUE(apply_override(&r, "distributed.backend=GLOO").ok());
    EXPECT_TRUE(validate_recipe(r).ok());  // Gloo stages CUDA tensors through the CPU
    EXPECT_EQ(resolved_backend(r), proto::DistributedConfig::GLOO);
    return;
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
#if defined(PEFT_WITH_CUDA)
  const char* const has_cuda = "yes";
#else
  const char* const has_cuda = "no";
#endif
  EXPECT_NE(message(s).find(std::string("training.device: CUDA requested but no CUDA device is available (this ") +
                            "LibTorch has CUDA: " + has_cuda + ")"),
            std::string::npos)
      << s;
}

TEST(Recipe, NcclNeedsACudaBuildAndTheCudaDevice) {
  proto::Recipe r = *parse_recipe(kRecipe);
  ASSERT_TRUE(apply_override(&r, "distributed.backend=NCCL").ok());
  const absl::Status s = validate_recipe(r);  // training.device CPU
#if defined(PEFT_WITH_CUDA)
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(message(s).find("distributed.backend: NCCL needs training.device CUDA"), std::string::npos) << s;
  EXPECT_NE(message(s).find("training.device CPU"), std::string::npos) << s;
  if (torch::cuda::is_available()) {
    ASSERT_TRUE(apply_override(&r, "training.device=CUDA").ok());
    EXPECT_TRUE(validate_recipe(r).ok());
  }
#else
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(message(s).find("distributed.backend NCCL needs a CUDA build"), std::string::npos) << s;
#endif
}

}  // namespace
}  // namespace peft::trainers
