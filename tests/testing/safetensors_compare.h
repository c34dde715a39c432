// Two safetensors files compared tensor by tensor, for tests that train the
// same adapter two ways and expect the same values.
#ifndef PEFT_TESTS_TESTING_SAFETENSORS_COMPARE_H_
#define PEFT_TESTS_TESTING_SAFETENSORS_COMPARE_H_

#include <string>

namespace peft::testing {

struct SafetensorsDifference {
  /// Empty when both files opened and hold the same tensor names and shapes.
  std::string error;
  /// The largest |a - b| over all elements of same-named tensors.
  double max_abs_difference = 0;
  /// The largest |a| (the scale the difference is judged against).
  double max_abs_value = 0;
};

/// Compares every tensor of `a` with the tensor of the same name in `b`
/// (values as float64).
SafetensorsDifference compare_safetensors(const std::string& a, const std::string& b);

}  // namespace peft::testing

#endif  // PEFT_TESTS_TESTING_SAFETENSORS_COMPARE_H_
