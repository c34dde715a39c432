// File: data/hf/json_fields.h (internal to //data)
//
// Reading the fields of one tokenizer.json component with errors that name
// the file, the component and the field:
//
//   Fields f(j, "tokenizer.json", "pre_tokenizer Metaspace");
//   PEFT_ASSIGN_OR_RETURN(std::string rep, f.string("replacement"));
//   PEFT_ASSIGN_OR_RETURN(bool split, f.boolean("split", /*fallback=*/true));
#ifndef PEFT_DATA_HF_JSON_FIELDS_H_
#define PEFT_DATA_HF_JSON_FIELDS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "data/hf/unicode.h"

namespace peft::data::hf {

using json = nlohmann::json;

/// The member `key` of object `j`, nullptr when `j` is not an object or has
/// no such member.
inline const json* member(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

/// The "type" of a component object, else a description of what `j` is.
inline std::string component_type(const json& j) {
  const json* type = member(j, "type");
  if (type != nullptr && type->is_string()) return type->get<std::string>();
  return j.is_null() ? "null" : std::string(j.type_name());
}

/// Typed access to the fields of one component.
class Fields {
 public:
  Fields(const json& j, std::string where, std::string what)
      : j_(j), where_(std::move(where)), what_(std::move(what)) {}

  /// InvalidArgumentError "<where>: <what>: <why>".
  absl::Status error(const std::string& why) const {
    return absl::InvalidArgumentError(absl::StrCat(where_, ": ", what_, ": ", why));
  }

  const json* get(const char* key) const { return member(j_, key); }

  /// A required string field.
  absl::StatusOr<std::string> string(const char* key) const {
    const json* v = get(key);
    if (v == nullptr || !v->is_string()) return error(absl::StrCat("\"", key, "\" must be a string"));
    return v->get<std::string>();
  }
  /// A boolean field; `fallback` when missing or null.
  absl::StatusOr<bool> boolean(const char* key, bool fallback) const {
    const json* v = get(key);
    if (v == nullptr || v->is_null()) return fallback;
    if (!v->is_boolean()) return error(absl::StrCat("\"", key, "\" must be true or false"));
    return v->get<bool>();
  }
  /// A non-negative integer field; `fallback` when missing or null.
  absl::StatusOr<int64_t> count(const char* key, int64_t fallback) const {
    const json* v = get(key);
    if (v == nullptr || v->is_null()) return fallback;
    if (!v->is_number_integer() || v->get<int64_t>() < 0 || v->get<int64_t>() > (int64_t{1} << 30)) {
      return error(absl::StrCat("\"", key, "\" must be a non-negative integer"));
    }
    return v->get<int64_t>();
  }
  /// A required array field.
  absl::StatusOr<const json*> array(const char* key) const {
    const json* v = get(key);
    if (v == nullptr || !v->is_array()) return error(absl::StrCat("\"", key, "\" must be a list"));
    return v;
  }

  const std::string& where() const { return where_; }

 private:
  const json& j_;
  std::string where_;
  std::string what_;
};

/// A string field of exactly one character (Metaspace and Strip's
/// replacement, Replace's content): its code point.
inline absl::StatusOr<uint32_t> one_char(const Fields& f, const char* key) {
  absl::StatusOr<std::string> s = f.string(key);
  if (!s.ok()) return s.status();
  if (s->empty() || utf8_char_len(*s, 0) != s->size()) {
    return f.error(std::string("\"") + key + "\" must be exactly one character");
  }
  return next_char(*s, 0).cp;
}

/// The steps of a Sequence component: each item of list `key`, parsed by
/// `parse(item, where)` into a std::unique_ptr<T>.
template <typename T, typename Parse>
absl::StatusOr<std::vector<std::unique_ptr<T>>> parse_steps(const Fields& f, const char* key, const std::string& where,
                                                            Parse&& parse) {
  absl::StatusOr<const json*> list = f.array(key);
  if (!list.ok()) return list.status();
  std::vector<std::unique_ptr<T>> steps;
  for (const json& item : **list) {
    absl::StatusOr<std::unique_ptr<T>> step = parse(item, where);
    if (!step.ok()) return step.status();
    steps.push_back(*std::move(step));
  }
  return steps;
}

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_JSON_FIELDS_H_
