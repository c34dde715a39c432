//
// The two project macros for early return on error (the installed abseil
// 20220623 lacks them) and the one place where c10::Error becomes a Status.
//
//   absl::StatusOr<Model> load(const std::string& dir) {
//     PEFT_ASSIGN_OR_RETURN(Config config, read_config(dir));
//     PEFT_RETURN_IF_ERROR(check(config));
//     ...
//   }
#ifndef PEFT_CORE_STATUS_H_
#define PEFT_CORE_STATUS_H_

#include <exception>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

/// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define PEFT_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status peft_status_ = (expr);        \
    if (!peft_status_.ok()) return peft_status_; \
  } while (0)

#define PEFT_STATUS_CONCAT_INNER_(a, b) a##b
#define PEFT_STATUS_CONCAT_(a, b) PEFT_STATUS_CONCAT_INNER_(a, b)

/// `PEFT_ASSIGN_OR_RETURN(T x, expr)`: evaluates `expr` (an absl::StatusOr),
/// returns its status on error, else moves the value into the declaration.
#define PEFT_ASSIGN_OR_RETURN(lhs, expr) \
  PEFT_ASSIGN_OR_RETURN_IMPL_(PEFT_STATUS_CONCAT_(peft_statusor_, __LINE__), lhs, expr)

#define PEFT_ASSIGN_OR_RETURN_IMPL_(var, lhs, expr) \
  auto var = (expr);                                \
  if (!var.ok()) return std::move(var).status();    \
  lhs = std::move(var).value()

namespace peft {

/// Runs `fn` and turns a thrown c10::Error or std::exception into an
/// absl::Status with `context` prepended. Used on load paths, where tensor
/// code may throw on hostile input.
template <typename Fn>
absl::Status status_from_torch_error(const char* context, Fn&& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::InternalError(std::string(context) + ": " + e.what());
  }
}

/// `status` with "context: " before its message (same code); OK stays OK.
inline absl::Status with_context(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), std::string(context) + ": " + std::string(status.message()));
}

/// The StatusOr form: the value passes through, an error gains the context.
template <typename T>
absl::StatusOr<T> with_context(absl::StatusOr<T> result, std::string_view context) {
  if (result.ok()) return result;
  return with_context(result.status(), context);
}

}  // namespace peft

#endif  // PEFT_CORE_STATUS_H_
