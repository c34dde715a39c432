#include "tests/data/reference_testing.h"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace peft::testing {
namespace {

constexpr int kMaxListedFailures = 5;

std::string show(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text.substr(0, 60)) {
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20) {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out + (text.size() > 60 ? "...\"" : "\"");
}

void add_failure(CheckResult* result, int failed, const std::string& line) {
  if (failed <= kMaxListedFailures) result->failures += "\n  " + line;
}

void finish(CheckResult* result) {
  int failed = result->total - result->passed;
  if (failed > 0) {
    result->failures = std::to_string(failed) + " of " + std::to_string(result->total) +
                       " records failed; first ones:" + result->failures;
  }
}

}  // namespace

std::vector<ReferenceRecord> read_reference_jsonl(const std::string& path) {
  std::vector<ReferenceRecord> records;
  std::ifstream in(path);
  if (!in) {
    ADD_FAILURE() << "cannot open " << path;
    return records;
  }
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("text") || !j.contains("ids")) {
      ADD_FAILURE() << path << ":" << line_no << ": malformed record";
      continue;
    }
    ReferenceRecord r;
    r.text = j["text"].get<std::string>();
    r.ids = j["ids"].get<std::vector<int32_t>>();
    if (j.contains("llama2c_run_c_ids")) r.llama2c_run_c_ids = j["llama2c_run_c_ids"].get<std::vector<int32_t>>();
    records.push_back(std::move(r));
  }
  return records;
}

CheckResult check_encodings(const data::Tokenizer& tok, const std::vector<ReferenceRecord>& records,
                            bool prefer_run_c_ids) {
  CheckResult result;
  for (const ReferenceRecord& r : records) {
    ++result.total;
    const std::vector<int32_t>& expected = prefer_run_c_ids && r.llama2c_run_c_ids ? *r.llama2c_run_c_ids : r.ids;
    std::vector<int32_t> got = tok.encode(r.text);
    if (got == expected) {
      ++result.passed;
    } else {
      add_failure(&result, result.total - result.passed,
                  show(r.text) + ": got " + ids_to_string(got) + ", expected " + ids_to_string(expected));
    }
  }
  finish(&result);
  return result;
}

CheckResult check_round_trips(const data::Tokenizer& tok, const std::vector<ReferenceRecord>& records) {
  CheckResult result;
  for (const ReferenceRecord& r : records) {
    ++result.total;
    std::string back = tok.decode(tok.encode(r.text));
    if (back == r.text) {
      ++result.passed;
    } else {
      add_failure(&result, result.total - result.passed, show(r.text) + " decoded as " + show(back));
    }
  }
  finish(&result);
  return result;
}

std::string ids_to_string(const std::vector<int32_t>& ids) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < ids.size(); ++i) out << (i ? ", " : "") << ids[i];
  out << "]";
  return out.str();
}

std::string read_binary_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "cannot open " << path;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_binary_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
  if (!out) ADD_FAILURE() << "cannot write " << path;
}

}  // namespace peft::testing
