// The `peft` flag parser: typed builders, parse-time checks, errors that name
// the flag.
#include "examples/cli/flags.h"

#include <gtest/gtest.h>

namespace peft::cli {
namespace {

std::vector<FlagSpec> specs() {
  return {text_flag("model", "model directory").required(), int_flag("seed", "random seed", 7),
          int_flag("limit", "an optional count"),           double_flag("temperature", "sampling temperature", 0.8),
          bool_flag("overwrite", "replace the output"),     text_flag("set", "override a field").repeated(),
          text_flag("dtype", "storage dtype", "float32")};
}

TEST(FlagsTest, BuildersSetTypeAndDefault) {
  const std::vector<FlagSpec> s = specs();
  EXPECT_EQ(s[0].type, FlagSpec::Type::kText);
  EXPECT_TRUE(s[0].is_required);
  EXPECT_EQ(s[1].type, FlagSpec::Type::kInt);
  EXPECT_EQ(s[1].default_value, "7");
  EXPECT_EQ(s[2].default_value, "");
  EXPECT_EQ(s[3].type, FlagSpec::Type::kDouble);
  EXPECT_EQ(s[3].default_value, "0.8");
  EXPECT_TRUE(s[4].is_bool());
  EXPECT_EQ(s[4].default_value, "false");
  EXPECT_TRUE(s[5].is_repeated);
  EXPECT_FALSE(s[6].is_required);
}

TEST(FlagsTest, ParsesValuesAndDefaults) {
  absl::StatusOr<ParsedFlags> f =
      parse_flags({"--model=m", "--temperature", "0.5", "--overwrite", "--set=a=1", "--set", "b=2"}, specs());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->get("model"), "m");
  EXPECT_EQ(*f->get_int("seed"), 7);
  EXPECT_DOUBLE_EQ(*f->get_double("temperature"), 0.5);
  EXPECT_TRUE(*f->get_bool("overwrite"));
  EXPECT_EQ(f->get_all("set"), (std::vector<std::string>{"a=1", "b=2"}));
  EXPECT_FALSE(f->has("limit"));
  EXPECT_EQ(f->get("dtype"), "float32");
}

TEST(FlagsTest, MalformedNumbersFailAtParseNamingTheFlag) {
  absl::StatusOr<ParsedFlags> f = parse_flags({"--model=m", "--seed=12x"}, specs());
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().message(), "--seed must be an integer, got '12x'");
  f = parse_flags({"--model=m", "--temperature=warm"}, specs());
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().message(), "--temperature must be a number, got 'warm'");
  f = parse_flags({"--model=m", "--overwrite=maybe"}, specs());
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().message(), "--overwrite must be true or false, got 'maybe'");
}

TEST(FlagsTest, StructuralErrors) {
  EXPECT_EQ(parse_flags({}, specs()).status().message(), "missing required flag --model");
  EXPECT_EQ(parse_flags({"--model=m", "--nope=1"}, specs()).status().message(), "unknown flag --nope");
  EXPECT_EQ(parse_flags({"--model=m", "--model=n"}, specs()).status().message(), "flag --model given twice");
  EXPECT_EQ(parse_flags({"--model"}, specs()).status().message(), "flag --model needs a value");
  EXPECT_EQ(parse_flags({"model=m"}, specs()).status().message(),
            "unexpected argument 'model=m' (flags look like --name=value)");
}

TEST(FlagsTest, UsageListsEveryFlag) {
  const std::string u = usage("demo", "A demo.", specs());
  EXPECT_NE(u.find("usage: peft demo [flags]\nA demo.\n"), std::string::npos) << u;
  EXPECT_NE(u.find("  --model=VALUE\n      model directory (required)\n"), std::string::npos) << u;
  EXPECT_NE(u.find("  --seed=VALUE\n      random seed (default: 7)\n"), std::string::npos) << u;
  EXPECT_NE(u.find("  --overwrite\n      replace the output (default: false)\n"), std::string::npos) << u;
}

}  // namespace
}  // namespace peft::cli
