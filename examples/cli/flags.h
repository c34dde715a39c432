//
// A strict flag parser for the `peft` subcommands: `--name=value`,
// `--name value`, bare `--flag` for booleans. Unknown flags, missing required
// flags and malformed numbers are errors that name the flag, so a typo never
// silently falls back to a default.
#ifndef PEFT_EXAMPLES_CLI_FLAGS_H_
#define PEFT_EXAMPLES_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace peft::cli {

/// One flag: its name, value type, help text and default. Declared with the
/// named builders below, never positionally:
///
///   text_flag("model", "Hugging Face model directory").required()
///   int_flag("seed", "random seed", 0)
///   double_flag("temperature", "sampling temperature", 0.8)
///   bool_flag("overwrite", "replace a non-empty output directory")
///   text_flag("set", "override a recipe field (repeatable)").repeated()
///
/// The value of an int or double flag is checked when the command line is
/// parsed, so a malformed number is an error naming the flag before any work.
struct FlagSpec {
  enum class Type { kText, kInt, kDouble, kBool };

  std::string name;
  Type type = Type::kText;
  std::string help;
  /// The value used when the flag is absent; "" for none (has() is false and
  /// get() returns "").
  std::string default_value;
  bool is_required = false;
  /// May be given several times (get_all returns every value in order).
  bool is_repeated = false;

  bool is_bool() const { return type == Type::kBool; }
  /// Builder: the flag must be given.
  FlagSpec required() && {
    is_required = true;
    return std::move(*this);
  }
  /// Builder: the flag may be given several times.
  FlagSpec repeated() && {
    is_repeated = true;
    return std::move(*this);
  }
};

/// A string flag ("" default: absent unless given).
FlagSpec text_flag(std::string name, std::string help, std::string default_value = "");
/// An integer flag without a default (absent unless given) or with one.
FlagSpec int_flag(std::string name, std::string help);
FlagSpec int_flag(std::string name, std::string help, int64_t default_value);
/// A floating-point flag without a default or with one.
FlagSpec double_flag(std::string name, std::string help);
FlagSpec double_flag(std::string name, std::string help, double default_value);
/// A boolean flag: false unless given; `--name` alone means true.
FlagSpec bool_flag(std::string name, std::string help);

class ParsedFlags {
 public:
  bool has(const std::string& name) const { return given_.count(name) > 0; }
  /// The given value, else the spec default.
  const std::string& get(const std::string& name) const;
  absl::StatusOr<int64_t> get_int(const std::string& name) const;
  absl::StatusOr<double> get_double(const std::string& name) const;
  absl::StatusOr<bool> get_bool(const std::string& name) const;
  /// Every value of a repeated flag, in command-line order.
  std::vector<std::string> get_all(const std::string& name) const;

 private:
  friend absl::StatusOr<ParsedFlags> parse_flags(const std::vector<std::string>&, const std::vector<FlagSpec>&);
  std::map<std::string, std::string> given_;
  std::map<std::string, std::vector<std::string>> all_;
  std::map<std::string, std::string> defaults_;
};

/// Parses `args` (after the subcommand name) against `specs`.
absl::StatusOr<ParsedFlags> parse_flags(const std::vector<std::string>& args, const std::vector<FlagSpec>& specs);

/// Multi-line help text for a subcommand.
std::string usage(const std::string& command, const std::string& summary, const std::vector<FlagSpec>& specs);

}  // namespace peft::cli

#endif  // PEFT_EXAMPLES_CLI_FLAGS_H_
