// peft tokenize.
#include <cstdio>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "examples/cli/command.h"
#include "peft/core/status.h"

namespace peft::cli {
namespace {

using json = nlohmann::ordered_json;

absl::Status run_tokenize(const ParsedFlags& f) {
  data::TokenizerOptions options;
  PEFT_ASSIGN_OR_RETURN(options.split_special_tokens, f.get_bool("split_special_tokens"));
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<data::Tokenizer> tok, data::load_tokenizer(f.get("tokenizer"), options));
  PEFT_ASSIGN_OR_RETURN(bool add_bos, f.get_bool("add_bos"));
  if (add_bos && tok->bos_id() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--add_bos: this ", tok->kind(), " tokenizer has no BOS token"));
  }
  // Each output line is written only after its input line parsed, and the
  // whole output is held until the end, so a bad line produces no output.
  std::string out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(std::cin, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("text") || !j["text"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("stdin line ", lineno, ": expected {\"text\": \"...\"}"));
    }
    std::vector<int32_t> ids;
    if (add_bos) ids.push_back(tok->bos_id());
    for (int32_t id : tok->encode(j["text"].get<std::string>())) ids.push_back(id);
    absl::StrAppend(&out, json{{"ids", ids}}.dump(), "\n");
  }
  std::fputs(out.c_str(), stdout);
  return absl::OkStatus();
}

}  // namespace

std::vector<Command> data_commands() {
  return {
      {"tokenize",
       "Encode JSON lines {\"text\": ...} from stdin to {\"ids\": [...]} on stdout.",
       {text_flag("tokenizer", "tokenizer file or model directory").required(),
        bool_flag("add_bos", "prepend the BOS id"),
        bool_flag("split_special_tokens",
                  "read special-token text such as <|eot_id|> as ordinary text (default: map it to the token's id)")},
       run_tokenize}};
}

}  // namespace peft::cli
