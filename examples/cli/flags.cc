#include "examples/cli/flags.h"

#include <cerrno>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"

namespace peft::cli {

FlagSpec text_flag(std::string name, std::string help, std::string default_value) {
  FlagSpec s;
  s.name = std::move(name);
  s.help = std::move(help);
  s.default_value = std::move(default_value);
  return s;
}

FlagSpec int_flag(std::string name, std::string help) {
  FlagSpec s = text_flag(std::move(name), std::move(help));
  s.type = FlagSpec::Type::kInt;
  return s;
}

FlagSpec int_flag(std::string name, std::string help, int64_t default_value) {
  FlagSpec s = int_flag(std::move(name), std::move(help));
  s.default_value = absl::StrCat(default_value);
  return s;
}

FlagSpec double_flag(std::string name, std::string help) {
  FlagSpec s = text_flag(std::move(name), std::move(help));
  s.type = FlagSpec::Type::kDouble;
  return s;
}

FlagSpec double_flag(std::string name, std::string help, double default_value) {
  FlagSpec s = double_flag(std::move(name), std::move(help));
  s.default_value = absl::StrCat(default_value);
  return s;
}

FlagSpec bool_flag(std::string name, std::string help) {
  FlagSpec s = text_flag(std::move(name), std::move(help), "false");
  s.type = FlagSpec::Type::kBool;
  return s;
}

const std::string& ParsedFlags::get(const std::string& name) const {
  auto it = given_.find(name);
  if (it != given_.end()) return it->second;
  return defaults_.at(name);
}

absl::StatusOr<int64_t> ParsedFlags::get_int(const std::string& name) const {
  const std::string& v = get(name);
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be an integer, got '", v, "'"));
  }
  return static_cast<int64_t>(x);
}

absl::StatusOr<double> ParsedFlags::get_double(const std::string& name) const {
  const std::string& v = get(name);
  errno = 0;
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a number, got '", v, "'"));
  }
  return x;
}

absl::StatusOr<bool> ParsedFlags::get_bool(const std::string& name) const {
  const std::string& v = get(name);
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no" || v.empty()) return false;
  return absl::InvalidArgumentError(absl::StrCat("--", name, " must be true or false, got '", v, "'"));
}

std::vector<std::string> ParsedFlags::get_all(const std::string& name) const {
  auto it = all_.find(name);
  return it == all_.end() ? std::vector<std::string>() : it->second;
}

absl::StatusOr<ParsedFlags> parse_flags(const std::vector<std::string>& args, const std::vector<FlagSpec>& specs) {
  ParsedFlags out;
  std::map<std::string, const FlagSpec*> by_name;
  for (const FlagSpec& s : specs) {
    by_name[s.name] = &s;
    out.defaults_[s.name] = s.default_value;
  }
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "' (flags look like --name=value)"));
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    bool has_value = eq != std::string::npos;
    if (has_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto it = by_name.find(name);
    if (it == by_name.end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (!has_value) {
      if (it->second->is_bool()) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
    }
    if (out.given_.count(name) && !it->second->is_repeated) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given twice"));
    }
    out.given_[name] = value;
    out.all_[name].push_back(value);
    // Numbers and booleans are checked now, so a typo fails before any work.
    absl::Status typed = absl::OkStatus();
    switch (it->second->type) {
      case FlagSpec::Type::kInt: typed = out.get_int(name).status(); break;
      case FlagSpec::Type::kDouble: typed = out.get_double(name).status(); break;
      case FlagSpec::Type::kBool: typed = out.get_bool(name).status(); break;
      case FlagSpec::Type::kText: break;
    }
    PEFT_RETURN_IF_ERROR(typed);
  }
  for (const FlagSpec& s : specs) {
    if (s.is_required && !out.has(s.name)) {
      return absl::InvalidArgumentError(absl::StrCat("missing required flag --", s.name));
    }
  }
  return out;
}

std::string usage(const std::string& command, const std::string& summary, const std::vector<FlagSpec>& specs) {
  std::string u = absl::StrCat("usage: peft ", command, " [flags]\n", summary, "\n\nflags:\n");
  for (const FlagSpec& s : specs) {
    absl::StrAppend(&u, "  --", s.name, s.is_bool() ? "" : "=VALUE", "\n      ", s.help);
    if (s.is_required)
      absl::StrAppend(&u, " (required)");
    else if (!s.default_value.empty())
      absl::StrAppend(&u, " (default: ", s.default_value, ")");
    absl::StrAppend(&u, "\n");
  }
  return u;
}

}  // namespace peft::cli
