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
#include <vector>

#include "absl/status/statusor.h"

namespace peft::cli {

struct FlagSpec {
  std::string name;
  std::string help;
  std::string default_value;  // used when absent and not required
  bool required = false;
  bool is_bool = false;
  /// May be given several times (get_all returns every value in order).
  bool repeated = false;
};

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
