//
// Strict reads of JSON fields from files users bring (adapter_config.json,
// config.json): a present key of the wrong type or out of range is an error
// naming the file, the key and the value, never a silent default or a
// truncated integer.
//
//   PEFT_ASSIGN_OR_RETURN(std::optional<int64_t> r, json_fields::integer(j, "r", path, 1, 1 << 16));
//   if (r) options.set_r(static_cast<int>(*r));
//
// A missing key or an explicit null gives nullopt (the caller's default).
// Works with nlohmann::json and nlohmann::ordered_json.
#ifndef PEFT_CORE_JSON_FIELDS_H_
#define PEFT_CORE_JSON_FIELDS_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace peft::json_fields {

namespace internal {

template <typename Json>
const Json* find(const Json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

template <typename Json>
absl::Status wrong_type(const Json& v, const char* key, const std::string& source, const char* want) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": \"", key, "\" must be ", want, ", got ", v.type_name(), " ", v.dump().substr(0, 80)));
}

}  // namespace internal

/// An integer in [min, max]. 1e3 and 2.0 are not integers; a value beyond
/// int64 is out of range (never wrapped).
template <typename Json>
absl::StatusOr<std::optional<int64_t>> integer(const Json& j, const char* key, const std::string& source,
                                               int64_t min = std::numeric_limits<int64_t>::min(),
                                               int64_t max = std::numeric_limits<int64_t>::max()) {
  const Json* v = internal::find(j, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) return internal::wrong_type(*v, key, source, "an integer");
  const bool too_big = v->is_number_unsigned() &&
                       v->template get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  const int64_t x = too_big ? 0 : v->template get<int64_t>();
  if (too_big || x < min || x > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": \"", key, "\" must be in [", min, ", ", max, "], got ", v->dump()));
  }
  return x;
}

/// A finite number in [min, max].
template <typename Json>
absl::StatusOr<std::optional<double>> number(const Json& j, const char* key, const std::string& source,
                                             double min = -std::numeric_limits<double>::max(),
                                             double max = std::numeric_limits<double>::max()) {
  const Json* v = internal::find(j, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) return internal::wrong_type(*v, key, source, "a number");
  const double x = v->template get<double>();
  if (!std::isfinite(x) || x < min || x > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": \"", key, "\" must be in [", min, ", ", max, "], got ", v->dump()));
  }
  return x;
}

template <typename Json>
absl::StatusOr<std::optional<bool>> boolean(const Json& j, const char* key, const std::string& source) {
  const Json* v = internal::find(j, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return internal::wrong_type(*v, key, source, "true or false");
  return v->template get<bool>();
}

template <typename Json>
absl::StatusOr<std::optional<std::string>> string(const Json& j, const char* key, const std::string& source) {
  const Json* v = internal::find(j, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) return internal::wrong_type(*v, key, source, "a string");
  return v->template get<std::string>();
}

}  // namespace peft::json_fields

#endif  // PEFT_CORE_JSON_FIELDS_H_
