//
// Helpers for the tokenizer tests: reading the reference_encodings*.jsonl
// files of ../shared/assets, comparing a tokenizer against them with one
// summarised failure message, and small file utilities.
#ifndef PEFT_TESTS_DATA_REFERENCE_TESTING_H_
#define PEFT_TESTS_DATA_REFERENCE_TESTING_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace peft::testing {

/// One line of a reference_encodings*.jsonl file.
struct ReferenceRecord {
  std::string text;
  std::vector<int32_t> ids;
  /// run.c's ids over the llama2.c tokenizer.bin, where they differ from `ids`.
  std::optional<std::vector<int32_t>> llama2c_run_c_ids;
};

/// All records of `path`; adds a gtest failure for unreadable/malformed lines.
std::vector<ReferenceRecord> read_reference_jsonl(const std::string& path);

/// Result of running a tokenizer over reference records.
struct CheckResult {
  int passed = 0;
  int total = 0;
  std::string failures;  // "" when all passed; else the first few cases
};

/// Compares `tok.encode(text)` with `ids` (or `llama2c_run_c_ids` when
/// `prefer_run_c_ids` and present) for every record.
CheckResult check_encodings(const data::Tokenizer& tok, const std::vector<ReferenceRecord>& records,
                            bool prefer_run_c_ids = false);

/// Checks `decode(encode(text)) == text` for every record.
CheckResult check_round_trips(const data::Tokenizer& tok, const std::vector<ReferenceRecord>& records);

/// "[1, 2, 3]".
std::string ids_to_string(const std::vector<int32_t>& ids);

/// Whole-file read/write for test fixtures (gtest failure on error).
std::string read_binary_file(const std::string& path);
void write_binary_file(const std::string& path, const std::string& content);

}  // namespace peft::testing

#endif  // PEFT_TESTS_DATA_REFERENCE_TESTING_H_
