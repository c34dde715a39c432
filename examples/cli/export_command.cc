// peft export: a model (merged with its adapters) or a LoRA adapter as a GGUF
// file for llama.cpp. See docs/export.md.
#include <malloc.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "examples/cli/command.h"
#include "models/gguf/export.h"
#include "models/gguf/vocab.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/export/gguf_lora.h"
#include "peft/peft_model.h"
#include "trainers/process_stats.h"

namespace peft::cli {
namespace {

namespace fs = std::filesystem;
namespace gguf = models::gguf;
using json = nlohmann::ordered_json;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// general.name: the model directory's own name.
std::string model_name(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

// The output is checked before anything is loaded, so a mistake costs no
// time; GgufWriter::create checks again when it writes.
absl::Status check_output(const std::string& path, bool overwrite) {
  std::error_code ec;
  if (path.empty()) return absl::InvalidArgumentError("--output is empty");
  if (fs::is_directory(path, ec)) return absl::AlreadyExistsError(absl::StrCat("--output=", path, " is a directory"));
  if (fs::exists(path, ec) && !overwrite) {
    return absl::AlreadyExistsError(absl::StrCat(path, " already exists (use --overwrite to replace it)"));
  }
  const fs::path parent = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec)) {
    return absl::NotFoundError(absl::StrCat("the output directory ", parent.string(), " does not exist"));
  }
  return absl::OkStatus();
}

absl::Status run_adapter_export(const ParsedFlags& f, const gguf::ExportOptions& options) {
  const std::string adapter = f.get("adapter");
  if (adapter.find(',') != std::string::npos) {
    return absl::InvalidArgumentError("--adapter_only exports one adapter: give a single --adapter directory");
  }
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, load_base(f.get("model")));
  PeftModel pm(lm);
  PEFT_RETURN_IF_ERROR(pm.load_adapter(adapter, "default"));
  const double t0 = trainers::now_seconds();
  PEFT_ASSIGN_OR_RETURN(GgufLoraStats s, export_lora_gguf(pm, "default", f.get("output"), options));
  std::fprintf(stdout, "%s\n",
               dump({{"output", f.get("output")},
                     {"format", "gguf"},
                     {"type", "lora"},
                     {"modules", s.modules},
                     {"alpha", s.alpha},
                     {"rescaled_modules", s.rescaled},
                     {"dtype", gguf::tensor_type_name(options.dtype)},
                     {"bytes", s.file_bytes},
                     {"seconds", trainers::now_seconds() - t0}})
                   .c_str());
  return absl::OkStatus();
}

absl::Status run_model_export(const ParsedFlags& f, const gguf::ExportOptions& options) {
  PEFT_ASSIGN_OR_RETURN(bool prune, f.get_bool("prune"));
  if (prune && !f.has("adapter")) return absl::InvalidArgumentError("--prune needs --adapter (an HSM adapter)");
  // The tokenizer first: a model without a usable one fails before loading.
  const std::string model_dir = f.get("model");
  const std::string tok_source = f.has("tokenizer") ? f.get("tokenizer") : model_dir;
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<data::Tokenizer> tok, tokenizer_for(f, model_dir));
  PEFT_ASSIGN_OR_RETURN(gguf::Vocab vocab, gguf::vocab_from_tokenizer(*tok, tok_source));
  tok.reset();

  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, load_base(model_dir));
  const double t0 = trainers::now_seconds();
  std::shared_ptr<models::CausalLm> out = lm;
  if (f.has("adapter")) {
    PeftModel pm(lm);
    PEFT_RETURN_IF_ERROR(load_adapters(pm, f.get("adapter")));
    if (prune) {
      PEFT_ASSIGN_OR_RETURN(out, prune_adapters(pm));
    } else {
      PEFT_RETURN_IF_ERROR(pm.merge_and_unload_());
    }
  }
  lm.reset();
  const double merge_s = trainers::now_seconds() - t0;
  // glibc keeps the merge's freed temporaries (a few hundred MB for a 100M
  // model) in its heap; give them back before the export adds its own.
  malloc_trim(0);
  const double rss_before = trainers::proc_status_mb("VmRSS");
  const bool peak_reset = trainers::reset_peak_rss();  // VmHWM after: the export's own peak
  const double t1 = trainers::now_seconds();
  PEFT_ASSIGN_OR_RETURN(gguf::ExportStats s, gguf::export_model(*out, std::move(vocab), f.get("output"), options));
  for (const std::string& note : gguf::export_notes(out->config())) std::fprintf(stderr, "note: %s\n", note.c_str());
  json j = {{"output", f.get("output")},
            {"format", "gguf"},
            {"type", "model"},
            {"architecture", gguf::architecture_name(out->config())},
            {"dtype", gguf::tensor_type_name(options.dtype)},
            {"tensors", s.tensors},
            {"parameters", s.parameters},
            {"bytes", s.file_bytes},
            {"merge_seconds", merge_s},
            {"export_seconds", trainers::now_seconds() - t1},
            {"rss_before_export_mb", rss_before}};
  if (peak_reset) j["peak_rss_during_export_mb"] = trainers::peak_rss_mb();
  std::fprintf(stdout, "%s\n", dump(j).c_str());
  return absl::OkStatus();
}

absl::Status run_export(const ParsedFlags& f) {
  PEFT_RETURN_IF_ERROR(apply_threads(f));
  if (f.get("format") != "gguf") {
    return absl::InvalidArgumentError(
        absl::StrCat("--format=", f.get("format"), " is not supported (supported: gguf)"));
  }
  gguf::ExportOptions options;
  PEFT_ASSIGN_OR_RETURN(options.dtype, with_context(gguf::tensor_type_from_name(f.get("dtype")), "--dtype"));
  PEFT_ASSIGN_OR_RETURN(options.overwrite, f.get_bool("overwrite"));
  PEFT_ASSIGN_OR_RETURN(bool adapter_only, f.get_bool("adapter_only"));
  options.name = model_name(f.get("model"));
  PEFT_RETURN_IF_ERROR(check_output(f.get("output"), options.overwrite));
  if (adapter_only) {
    if (!f.has("adapter")) return absl::InvalidArgumentError("--adapter_only needs --adapter");
    PEFT_ASSIGN_OR_RETURN(bool prune, f.get_bool("prune"));
    if (prune) return absl::InvalidArgumentError("--prune merges the adapter: it cannot go with --adapter_only");
    return run_adapter_export(f, options);
  }
  return run_model_export(f, options);
}

}  // namespace

std::vector<Command> export_commands() {
  std::vector<Command> c;
  c.push_back(
      {"export",
       "Write a model (merged with its adapters) or a LoRA adapter as a GGUF file for llama.cpp.",
       {text_flag("model", "the base model directory (Hugging Face LLaMA or GPT-2)").required(),
        text_flag("adapter", "adapter directory, or several separated by commas, merged before the export"),
        text_flag("format", "output format (gguf)").required(),
        text_flag("output", "the file to write, e.g. model.gguf").required(),
        text_flag("dtype", "weight matrices as f32, f16, bf16 or q8_0 (norms and biases stay f32)", "f32"),
        bool_flag("adapter_only", "write the --adapter LoRA alone, for llama.cpp's --lora on the base model's GGUF"),
        bool_flag("prune", "apply the HSM structural prune of --adapter (as peft merge --prune)"),
        text_flag("tokenizer", "tokenizer file or directory (default: the model directory)"),
        bool_flag("overwrite", "replace an existing output file"), threads_flag()},
       run_export});
  return c;
}

}  // namespace peft::cli
