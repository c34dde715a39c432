// The quickstart (scripts/quickstart.sh runs it): the whole PEFT workflow on
// a task whose success is measurable, end to end, in a few minutes on a
// laptop-class CPU and with nothing from outside the repository.
//
//   1. Base model. By default a small LLaMA (hidden 128, 4 layers, GQA 4/2
//      heads, byte-level vocabulary of 257) made here: a byte-level BPE
//      tokenizer.json is written, the model is randomly initialised and
//      pretrained by full fine-tuning through trainers::train
//      (examples/recipes/quickstart_base.textproto) on generated string tasks
//      - copy, uppercase, first/last letter, drop first/last letter - that
//      teach the "<op>: <word> -> <answer>" format but never the task below.
//      It is cached in <work_dir>/base; a second run skips pretraining.
//      `--base=DIR` uses a Hugging Face model directory instead (its own
//      tokenizer, or --tokenizer).
//   2. Task: "reverse: <word> -> <reversed word>" on random lowercase words.
//      Generated with a fixed seed: instruction-format training data and 100
//      held-out test words that appear in no training data.
//   3. Exact-match accuracy of greedy generation on the test words, before.
//   4. LoRA r=8 on all linear projections via trainers::train
//      (examples/recipes/quickstart_lora.textproto).
//   5. Accuracy of base + adapter (unmerged), then merge_and_unload_, export a
//      Hugging Face directory (<work_dir>/merged), reload it with load_model,
//      and check the merged model answers exactly as base + adapter did.
//   6. A few generations from the merged model, a summary table on stdout and
//      <work_dir>/summary.json.
//
//   bazel-bin/examples/quickstart [--work_dir=runs/quickstart] [--base=DIR]
//       [--steps=N] [--set=training.micro_batch=16 ...] [--seed=S]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "examples/cli/flags.h"
#include "models/generate.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/peft_model.h"
#include "trainers/recipe.h"
#include "trainers/trainer.h"

namespace peft::quickstart {
namespace {

// kBaseRecipe and kLoraRecipe: the text of examples/recipes/quickstart_{base,lora}.textproto,
// compiled in by a genrule so the binary runs from any directory.
#include "examples/quickstart_recipes.inc"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

// Bump when the pretraining data or procedure changes: a cached base with
// another version is rebuilt.
constexpr int kBaseVersion = 1;
constexpr const char* kEndOfText = "<|endoftext|>";
constexpr const char* kTask = "reverse";   // the new task
constexpr const char* kControl = "copy";   // the base's pretraining task, replayed during fine-tuning
// Shown at the end; excluded from all training data like the test words.
const std::vector<std::string> kDemoWords = {"hello", "lora", "quick"};

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void say(const std::string& s) {
  std::fprintf(stdout, "%s\n", s.c_str());
  std::fflush(stdout);
}

// ---- Generated data ---------------------------------------------------------

// splitmix64: the same stream on every platform (no std:: distributions).
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
};

std::string random_word(Rng& rng, int64_t min_len, int64_t max_len) {
  const int64_t n = min_len + rng.below(max_len - min_len + 1);
  std::string w;
  for (int64_t i = 0; i < n; ++i) w.push_back(static_cast<char>('a' + rng.below(26)));
  return w;
}

struct Record {
  std::string instruction, input, output;
};

std::string reversed(const std::string& s) { return std::string(s.rbegin(), s.rend()); }

std::string to_jsonl(const std::vector<Record>& records) {
  std::string out;
  for (const Record& r : records) {
    absl::StrAppend(&out, json{{"instruction", r.instruction}, {"input", r.input}, {"output", r.output}}.dump(), "\n");
  }
  return out;
}

absl::Status write_text(const std::string& path, const std::string& text) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

struct TaskData {
  std::vector<std::string> test_words;  // held out: in no training data
  std::vector<Record> train;            // the task, plus `replay` of copy records
  std::vector<Record> pretrain;         // the built-in base's pretraining: copy
};

// The test words first (no palindromes: a copying model would get them
// right), then training and pretraining words that avoid them.
TaskData make_data(uint64_t seed, int64_t n_test, int64_t n_train, int64_t n_pretrain, int64_t min_len,
                   int64_t max_len, double replay) {
  TaskData d;
  Rng rng{seed * 0x2545F4914F6CDD1Dull + 17};
  std::set<std::string> held_out(kDemoWords.begin(), kDemoWords.end());
  while (static_cast<int64_t>(d.test_words.size()) < n_test) {
    std::string w = random_word(rng, min_len, max_len);
    if (w == reversed(w) || held_out.count(w)) continue;
    held_out.insert(w);
    d.test_words.push_back(w);
  }
  auto fresh_word = [&] {
    for (;;) {
      std::string w = random_word(rng, min_len, max_len);
      if (!held_out.count(w)) return w;
    }
  };
  const int64_t n_replay = static_cast<int64_t>(replay * static_cast<double>(n_train) + 0.5);
  for (int64_t i = 0; i < n_train; ++i) {
    std::string w = fresh_word();
    // Replay records are spread evenly through the file.
    const bool copy = (i + 1) * n_replay / n_train != i * n_replay / n_train;
    d.train.push_back(copy ? Record{kControl, w, w} : Record{kTask, w, reversed(w)});
  }
  for (int64_t i = 0; i < n_pretrain; ++i) {
    std::string w = fresh_word();
    d.pretrain.push_back({kControl, w, w});
  }
  return d;
}

// ---- The built-in tokenizer -------------------------------------------------

// GPT-2's printable byte alphabet (encoder.py bytes_to_unicode).
std::vector<std::string> byte_symbols() {
  std::vector<std::string> out(256);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const uint32_t cp = printable ? b : 256 + n++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out[b] = s;
  }
  return out;
}

// A byte-level BPE with no merges: id b is byte b, 256 is <|endoftext|>
// (BOS = EOS, no BOS by default, as GPT-2). Loads in peft-cpp and in
// Hugging Face `tokenizers`.
absl::Status write_byte_tokenizer(const std::string& dir) {
  json vocab = json::object();
  const std::vector<std::string> symbols = byte_symbols();
  for (int b = 0; b < 256; ++b) vocab[symbols[b]] = b;
  vocab[kEndOfText] = 256;
  json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       json::array({{{"id", 256}, {"content", kEndOfText}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", true}, {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
        {"merges", json::array()}}},
  };
  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"bos_token", kEndOfText},
                 {"eos_token", kEndOfText}, {"unk_token", kEndOfText}, {"add_bos_token", false},
                 {"model_max_length", 1024}};
  PEFT_RETURN_IF_ERROR(write_text(dir + "/tokenizer.json", tok.dump(2) + "\n"));
  return write_text(dir + "/tokenizer_config.json", config.dump(2) + "\n");
}

// Tokenizer files that travel with a model directory.
std::vector<std::pair<std::string, std::string>> tokenizer_files(const std::string& dir) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const char* name : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.bin",
                           "generation_config.json"}) {
    std::error_code ec;
    if (fs::is_regular_file(fs::path(dir) / name, ec)) out.push_back({(fs::path(dir) / name).string(), name});
  }
  return out;
}

// ---- Evaluation -------------------------------------------------------------

struct Prompting {
  std::string tmpl;  // the recipe's data.prompt_template
  const data::Tokenizer* tok = nullptr;
  std::vector<int64_t> stop_ids;

  std::string prompt(const std::string& instruction, const std::string& input) const {
    return absl::StrReplaceAll(tmpl, {{"{instruction}", instruction}, {"{input}", input}});
  }
};

std::string trim(std::string s) {
  const char* ws = " \t\r\n";
  s.erase(0, s.find_first_not_of(ws) == std::string::npos ? s.size() : s.find_first_not_of(ws));
  s.erase(s.find_last_not_of(ws) + 1);
  return s;
}

// Greedy answer to `instruction: input`: generation stops at EOS or a newline;
// the text is cut at the first newline and trimmed.
absl::StatusOr<std::string> answer(models::CausalLm& lm, const Prompting& p, const std::string& instruction,
                                   const std::string& input, const std::string& expected) {
  std::vector<int64_t> ids;
  if (p.tok->add_bos_by_default() && p.tok->bos_id() >= 0) ids.push_back(p.tok->bos_id());
  for (int32_t id : p.tok->encode(p.prompt(instruction, input))) ids.push_back(id);
  models::GenerateOptions o;
  // Room for the expected answer and its end: a longer answer is wrong anyway.
  o.max_new_tokens = static_cast<int64_t>(p.tok->encode(expected).size()) + 2;
  o.stop_ids = p.stop_ids;
  PEFT_ASSIGN_OR_RETURN(models::GenerateResult r, models::generate(lm, ids, o));
  std::vector<int32_t> out(r.generated_ids.begin(), r.generated_ids.end());
  std::string text = p.tok->decode(out);
  if (size_t nl = text.find('\n'); nl != std::string::npos) text.resize(nl);
  return trim(text);
}

struct Score {
  double accuracy = 0;
  int64_t correct = 0;
  std::vector<std::string> answers;
};

absl::StatusOr<Score> score(models::CausalLm& lm, const Prompting& p, const char* instruction,
                            const std::vector<std::string>& words,
                            std::string (*truth)(const std::string&)) {
  torch::NoGradGuard no_grad;
  lm.module().eval();
  Score s;
  for (const std::string& w : words) {
    const std::string expected = truth(w);
    PEFT_ASSIGN_OR_RETURN(std::string a, answer(lm, p, instruction, w, expected));
    s.correct += a == trim(expected);
    s.answers.push_back(std::move(a));
  }
  s.accuracy = words.empty() ? 0.0 : static_cast<double>(s.correct) / static_cast<double>(words.size());
  return s;
}

std::string reversed_fn(const std::string& w) { return reversed(w); }
std::string copy_fn(const std::string& w) { return w; }

int64_t count_parameters(models::CausalLm& lm) {
  int64_t n = 0;
  for (const auto& p : lm.hf_parameters()) n += p.tensor.numel();
  return n;
}

// ---- Training through the recipe-driven trainer --------------------------------

// Trainer log lines go to <run>/train.log; one-line progress is echoed.
trainers::TrainOptions train_options(const std::string& run_dir, const std::string& tag,
                                     std::shared_ptr<std::ofstream> log) {
  trainers::TrainOptions o;
  o.log = [tag, log](const std::string& line) {
    *log << line << "\n" << std::flush;
    if (line.find('\n') == std::string::npos) say(absl::StrCat("      ", tag, " ", line));
  };
  return o;
}

absl::StatusOr<proto::Recipe> recipe_from(const std::string& file, const char* builtin) {
  if (file.empty()) return trainers::parse_recipe(builtin, "built-in recipe");
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open recipe ", file));
  std::stringstream ss;
  ss << in.rdbuf();
  return trainers::parse_recipe(ss.str(), file);
}

// training.steps, with the warm-up shortened to fit.
void set_steps(proto::Recipe* r, int64_t steps) {
  r->mutable_training()->set_steps(static_cast<int32_t>(steps));
  if (r->schedule().warmup_steps() > steps) r->mutable_schedule()->set_warmup_steps(static_cast<int32_t>(steps / 10));
}

absl::Status apply_overrides(proto::Recipe* r, const std::vector<std::string>& sets) {
  for (const std::string& s : sets) PEFT_RETURN_IF_ERROR(trainers::apply_override(r, s));
  return trainers::validate_recipe(*r);
}

// ---- The base model ---------------------------------------------------------

struct Base {
  std::string dir;
  std::string source;  // "built-in" or the --base directory
  bool cached = false;
  json pretrain;  // steps, seconds, losses (built-in only)
};

absl::StatusOr<Base> built_in_base(const cli::ParsedFlags& f, const std::string& work, const TaskData& data,
                                   uint64_t seed) {
  PEFT_ASSIGN_OR_RETURN(int64_t hidden, f.get_int("hidden_size"));
  PEFT_ASSIGN_OR_RETURN(int64_t layers, f.get_int("num_layers"));
  PEFT_ASSIGN_OR_RETURN(int64_t heads, f.get_int("num_heads"));
  PEFT_ASSIGN_OR_RETURN(int64_t kv_heads, f.get_int("num_kv_heads"));
  PEFT_ASSIGN_OR_RETURN(int64_t pretrain_steps, f.get_int("pretrain_steps"));
  PEFT_ASSIGN_OR_RETURN(bool rebuild, f.get_bool("rebuild_base"));
  if (hidden <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || hidden % heads || heads % kv_heads) {
    return absl::InvalidArgumentError("--hidden_size, --num_layers, --num_heads, --num_kv_heads must be positive, "
                                      "heads must divide hidden_size and kv heads must divide heads");
  }
  PEFT_ASSIGN_OR_RETURN(proto::Recipe recipe, recipe_from(f.get("base_recipe"), kBaseRecipe));
  if (pretrain_steps > 0) set_steps(&recipe, pretrain_steps);
  recipe.mutable_training()->set_seed(seed);

  models::ModelConfig cfg;
  cfg.arch = models::Architecture::kLlama;
  models::LlamaConfig& c = cfg.llama;
  c.vocab_size = 257;
  c.hidden_size = hidden;
  c.intermediate_size = ((8 * hidden / 3 + 31) / 32) * 32;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  cfg.bos_token_id = 256;
  cfg.eos_token_ids = {256};

  Base b;
  b.dir = work + "/base";
  b.source = "built-in";
  // Everything that changes the base; a cached base with another fingerprint is rebuilt.
  std::string pretrain_jsonl = to_jsonl(data.pretrain);
  const json fingerprint = {{"version", kBaseVersion},
                            {"config", json::parse(models::model_config_to_json(cfg))},
                            {"recipe", trainers::recipe_to_text(recipe)},
                            {"data_hash", absl::StrFormat("%016x", std::hash<std::string>{}(pretrain_jsonl))}};
  const std::string marker = b.dir + "/quickstart_base.json";
  std::error_code ec;
  if (!rebuild && fs::is_regular_file(marker, ec)) {
    std::ifstream in(marker);
    json m = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (m.is_object() && m.contains("fingerprint") && m["fingerprint"] == fingerprint) {
      b.cached = true;
      b.pretrain = m.value("pretrain", json::object());
      return b;
    }
    say("      the cached base was made with other settings; rebuilding it");
  }

  // Tokenizer and a random init, then full fine-tuning on the pretraining tasks.
  const std::string tok_dir = work + "/tokenizer";
  PEFT_RETURN_IF_ERROR(write_byte_tokenizer(tok_dir));
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, models::create_model(cfg));
  models::init_weights_(*lm, seed);
  models::SaveOptions so;
  so.overwrite = true;
  so.extra_files = tokenizer_files(tok_dir);
  const std::string init_dir = work + "/base_init";
  PEFT_RETURN_IF_ERROR(models::save_model(*lm, init_dir, so));
  const std::string data_path = work + "/data/pretrain.jsonl";
  PEFT_RETURN_IF_ERROR(write_text(data_path, pretrain_jsonl));

  const std::string run = work + "/pretrain";
  fs::remove_all(run, ec);
  recipe.set_model(init_dir);
  recipe.set_output_dir(run);
  recipe.mutable_data()->set_train_file(data_path);
  recipe.clear_adapters();  // full fine-tuning
  PEFT_RETURN_IF_ERROR(trainers::validate_recipe(recipe));
  say(absl::StrFormat("      pretraining %lld parameters from random init (full fine-tuning): %d steps x %d "
                      "examples of \"copy: <word> -> <word>\" (%lld generated records)",
                      static_cast<long long>(count_parameters(*lm)), recipe.training().steps(),
                      recipe.training().micro_batch(), static_cast<long long>(data.pretrain.size())));
  fs::create_directories(run, ec);
  auto log = std::make_shared<std::ofstream>(run + "/train.log");
  const double t0 = now();
  PEFT_ASSIGN_OR_RETURN(trainers::TrainSummary ts, trainers::train(recipe, train_options(run, "[pretrain]", log)));
  const double seconds = now() - t0;

  // <run>/model plus the tokenizer becomes the cached base; the marker goes last.
  fs::remove_all(b.dir, ec);
  fs::rename(run + "/model", b.dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot move ", run, "/model to ", b.dir, ": ", ec.message()));
  for (const auto& [src, name] : tokenizer_files(tok_dir)) {
    fs::copy_file(src, b.dir + "/" + name, fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot copy ", src, ": ", ec.message()));
  }
  b.pretrain = {{"steps", ts.steps},
                {"seconds", seconds},
                {"first_train_loss", ts.first_train_loss},
                {"final_train_loss", ts.final_train_loss},
                {"final_eval_loss", ts.final_eval_loss}};
  PEFT_RETURN_IF_ERROR(
      write_text(marker, json{{"fingerprint", fingerprint}, {"pretrain", b.pretrain}}.dump(2) + "\n"));
  fs::remove_all(init_dir, ec);
  return b;
}

// ---- The run ----------------------------------------------------------------

std::string pct(double a) { return absl::StrFormat("%.0f%%", 100.0 * a); }

absl::Status run(const cli::ParsedFlags& f) {
  const double t_start = now();
  PEFT_ASSIGN_OR_RETURN(int64_t threads, f.get_int("threads"));
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(static_cast<int>(threads));
  PEFT_ASSIGN_OR_RETURN(int64_t seed_i, f.get_int("seed"));
  const uint64_t seed = static_cast<uint64_t>(seed_i);
  PEFT_ASSIGN_OR_RETURN(int64_t n_test, f.get_int("test_examples"));
  PEFT_ASSIGN_OR_RETURN(int64_t n_train, f.get_int("train_examples"));
  PEFT_ASSIGN_OR_RETURN(int64_t n_pretrain, f.get_int("pretrain_examples"));
  PEFT_ASSIGN_OR_RETURN(int64_t min_len, f.get_int("min_len"));
  PEFT_ASSIGN_OR_RETURN(int64_t max_len, f.get_int("max_len"));
  PEFT_ASSIGN_OR_RETURN(int64_t steps, f.get_int("steps"));
  PEFT_ASSIGN_OR_RETURN(double replay, f.get_double("replay"));
  if (n_test < 1 || n_train < 2 || n_pretrain < 2) {
    return absl::InvalidArgumentError("--test_examples must be >= 1, --train_examples and --pretrain_examples >= 2");
  }
  if (min_len < 2 || max_len < min_len || max_len > 12) {
    return absl::InvalidArgumentError("need 2 <= --min_len <= --max_len <= 12");
  }
  if (!(replay >= 0 && replay < 1)) return absl::InvalidArgumentError("--replay must be in [0, 1)");
  const std::string work = f.get("work_dir");
  std::error_code ec;
  fs::create_directories(work, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create --work_dir ", work, ": ", ec.message()));

  // The fine-tuning recipe first: a bad --recipe / --set fails before any work.
  PEFT_ASSIGN_OR_RETURN(proto::Recipe recipe, recipe_from(f.get("recipe"), kLoraRecipe));
  if (recipe.adapters_size() == 0) return absl::InvalidArgumentError("the fine-tuning recipe has no adapters");
  const std::string data_path = work + "/data/train.jsonl";
  const std::string lora_run = work + "/lora";
  recipe.set_output_dir(lora_run);
  recipe.mutable_data()->set_train_file(data_path);
  recipe.mutable_training()->set_seed(seed);
  recipe.set_model(f.has("base") ? f.get("base") : work + "/base");
  if (f.has("tokenizer")) recipe.set_tokenizer(f.get("tokenizer"));
  if (steps > 0) set_steps(&recipe, steps);
  PEFT_RETURN_IF_ERROR(apply_overrides(&recipe, f.get_all("set")));
  if (recipe.model() != (f.has("base") ? f.get("base") : work + "/base")) {
    return absl::InvalidArgumentError("the recipe's model is the base: pass --base=DIR instead of --set model=...");
  }
  // The trainer renders prompts with this template (data/dataset.h's default when unset).
  Prompting prompting;
  prompting.tmpl = recipe.data().has_prompt_template() ? recipe.data().prompt_template()
                                                       : data::DataOptions().prompt_template;
  if (prompting.tmpl.find("{input}") == std::string::npos) {
    return absl::InvalidArgumentError("the recipe's data.prompt_template needs {input}: the task's word goes there");
  }

  say(absl::StrFormat("[1/6] data: \"%s\" on random lowercase words of %lld-%lld letters; %lld training "
                      "records (%.0f%% of them \"%s\" replay), %lld held-out test words",
                      prompting.prompt(kTask, "<word>") + "<reversed word>", static_cast<long long>(min_len),
                      static_cast<long long>(max_len), static_cast<long long>(n_train), 100 * replay,
                      prompting.prompt(kControl, "<word>") + "<word>", static_cast<long long>(n_test)));
  const TaskData data = make_data(seed, n_test, n_train, n_pretrain, min_len, max_len, replay);
  PEFT_RETURN_IF_ERROR(write_text(data_path, to_jsonl(data.train)));
  {
    std::vector<Record> test;
    for (const std::string& w : data.test_words) test.push_back({kTask, w, reversed(w)});
    PEFT_RETURN_IF_ERROR(write_text(work + "/data/test.jsonl", to_jsonl(test)));
  }

  // 2. The base.
  Base base;
  const double t_base = now();
  if (f.has("base")) {
    base.dir = f.get("base");
    base.source = base.dir;
    say(absl::StrCat("[2/6] base: ", base.dir));
  } else {
    say(absl::StrCat("[2/6] base: the built-in byte-level LLaMA in ", work, "/base"));
    PEFT_ASSIGN_OR_RETURN(base, built_in_base(f, work, data, seed));
    if (base.cached) say("      cached (delete it or pass --rebuild_base to pretrain again)");
  }
  const double base_seconds = now() - t_base;
  const std::string tok_path = recipe.has_tokenizer() ? recipe.tokenizer() : recipe.model();
  absl::StatusOr<std::unique_ptr<data::Tokenizer>> tok_or = data::load_tokenizer(tok_path);
  if (!tok_or.ok()) {
    return absl::Status(tok_or.status().code(), absl::StrCat("no usable tokenizer for the base (pass --tokenizer=FILE): ",
                                                             tok_or.status().message()));
  }
  std::unique_ptr<data::Tokenizer> tok = std::move(*tok_or);
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> base_lm, models::load_model(recipe.model()));
  const int64_t base_params = count_parameters(*base_lm);
  prompting.tok = tok.get();
  if (tok->eos_id() >= 0) prompting.stop_ids.push_back(tok->eos_id());
  for (int64_t e : base_lm->config().eos_token_ids) prompting.stop_ids.push_back(e);
  if (std::vector<int32_t> nl = tok->encode("\n"); nl.size() == 1) prompting.stop_ids.push_back(nl[0]);

  // Both tasks on the held-out words: reverse (new) and copy (the control).
  struct Scores {
    Score reverse, copy;
  };
  auto evaluate = [&](models::CausalLm& lm) -> absl::StatusOr<Scores> {
    Scores s;
    PEFT_ASSIGN_OR_RETURN(s.reverse, score(lm, prompting, kTask, data.test_words, reversed_fn));
    PEFT_ASSIGN_OR_RETURN(s.copy, score(lm, prompting, kControl, data.test_words, copy_fn));
    return s;
  };
  auto fraction = [&](const Score& s) {
    return absl::StrFormat("%s (%lld/%lld)", pct(s.accuracy), static_cast<long long>(s.correct),
                           static_cast<long long>(n_test));
  };

  // 3. Before.
  say(absl::StrFormat("[3/6] the base, greedy exact match on the %lld held-out words", static_cast<long long>(n_test)));
  PEFT_ASSIGN_OR_RETURN(Scores before, evaluate(*base_lm));
  say(absl::StrFormat("      %s: %s, e.g. \"%s%s\"; %s: %s", kTask, fraction(before.reverse),
                      prompting.prompt(kTask, data.test_words[0]), before.reverse.answers[0], kControl,
                      fraction(before.copy)));
  base_lm.reset();

  // 4. LoRA through the trainer.
  fs::remove_all(lora_run, ec);
  fs::create_directories(lora_run, ec);
  say(absl::StrFormat("[4/6] fine-tuning: %s; %d steps x %d examples, lr %g", recipe.adapters(0).ShortDebugString(),
                      recipe.training().steps(), recipe.training().micro_batch(), recipe.optimizer().lr()));
  auto lora_log = std::make_shared<std::ofstream>(lora_run + "/train.log");
  const double t_lora = now();
  PEFT_ASSIGN_OR_RETURN(trainers::TrainSummary ts, trainers::train(recipe, train_options(lora_run, "[lora]", lora_log)));
  const double lora_seconds = now() - t_lora;
  auto adapter_dir = [&](int i) {
    return recipe.adapters_size() == 1 ? lora_run + "/adapter" : lora_run + "/adapter_" + recipe.adapters(i).name();
  };

  // 5. After: base + adapter (unmerged), then merged, exported and reloaded.
  say("[5/6] base + adapter (unmerged), then merge_and_unload, export, reload");
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, models::load_model(recipe.model()));
  PeftModel pm(lm);
  std::vector<std::pair<std::string, double>> active;
  for (int i = 0; i < recipe.adapters_size(); ++i) {
    PEFT_RETURN_IF_ERROR(pm.load_adapter(adapter_dir(i), recipe.adapters(i).name()));
    active.emplace_back(recipe.adapters(i).name(), 1.0);
  }
  PEFT_RETURN_IF_ERROR(pm.set_active(active));
  pm.freeze_base_();
  const int64_t trainable = pm.num_trainable();
  PEFT_ASSIGN_OR_RETURN(Scores after, evaluate(pm.model()));
  say(absl::StrFormat("      %s: %s; %s: %s", kTask, fraction(after.reverse), kControl, fraction(after.copy)));
  PEFT_RETURN_IF_ERROR(pm.merge_and_unload_());
  const std::string merged_dir = work + "/merged";
  models::SaveOptions so;
  so.overwrite = true;
  // The tokenizer travels with the export, so `peft generate --model=merged` works.
  so.extra_files = tokenizer_files(recipe.model());
  if (recipe.has_tokenizer()) {
    if (fs::is_regular_file(recipe.tokenizer(), ec)) {
      so.extra_files = {{recipe.tokenizer(), fs::path(recipe.tokenizer()).filename().string()}};
    } else {
      so.extra_files = tokenizer_files(recipe.tokenizer());
    }
  }
  PEFT_RETURN_IF_ERROR(models::save_model(pm.model(), merged_dir, so));
  lm.reset();
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> merged, models::load_model(merged_dir));
  PEFT_ASSIGN_OR_RETURN(Scores merged_scores, evaluate(*merged));
  int64_t same = 0;
  for (size_t i = 0; i < data.test_words.size(); ++i) {
    same += after.reverse.answers[i] == merged_scores.reverse.answers[i] &&
            after.copy.answers[i] == merged_scores.copy.answers[i];
  }
  const bool match = same == n_test;
  say(absl::StrFormat("      %s (reloaded): %s: %s; %s: %s; identical answers to base + adapter: %lld/%lld",
                      merged_dir, kTask, fraction(merged_scores.reverse), kControl, fraction(merged_scores.copy),
                      static_cast<long long>(same), static_cast<long long>(n_test)));

  // 6. Examples from the merged model.
  say("[6/6] generations from the merged model");
  json examples = json::array();
  for (const std::string& w : kDemoWords) {
    PEFT_ASSIGN_OR_RETURN(std::string a, answer(*merged, prompting, kTask, w, reversed(w)));
    examples.push_back({{"prompt", prompting.prompt(kTask, w)}, {"expected", reversed(w)}, {"generated", a},
                        {"correct", a == reversed(w)}});
  }
  const double total = now() - t_start;

  json summary = {
      {"task", kTask},
      {"control_task", kControl},
      {"prompt_template", prompting.tmpl},
      {"test_examples", n_test},
      {"train_examples", n_train},
      {"replay", replay},
      {"base",
       {{"source", base.source},
        {"dir", base.dir},
        {"parameters", base_params},
        {"cached", base.cached},
        {"seconds", base_seconds},
        {"pretrain", base.pretrain}}},
      {"lora",
       {{"adapter", recipe.adapters(0).ShortDebugString()},
        {"adapter_dir", adapter_dir(0)},
        {"trainable_parameters", trainable},
        {"steps", ts.steps},
        {"micro_batch", recipe.training().micro_batch()},
        {"lr", recipe.optimizer().lr()},
        {"seconds", lora_seconds},
        {"first_train_loss", ts.first_train_loss},
        {"final_train_loss", ts.final_train_loss},
        {"final_eval_loss", ts.final_eval_loss}}},
      {"accuracy_before", before.reverse.accuracy},
      {"accuracy_after", after.reverse.accuracy},
      {"accuracy_merged", merged_scores.reverse.accuracy},
      {"control_accuracy_before", before.copy.accuracy},
      {"control_accuracy_after", after.copy.accuracy},
      {"control_accuracy_merged", merged_scores.copy.accuracy},
      {"merged_identical_answers", same},
      {"merged_matches_unmerged", match},
      {"merged_dir", merged_dir},
      {"examples", examples},
      {"total_seconds", total},
  };
  PEFT_RETURN_IF_ERROR(write_text(work + "/summary.json", summary.dump(2) + "\n"));

  // The table.
  auto row = [](const std::string& k, const std::string& v) { say(absl::StrFormat("  %-26s %s", k, v)); };
  say("");
  say("quickstart summary");
  if (f.has("base")) {
    row("base model", absl::StrFormat("%s, %lld parameters", base.dir, static_cast<long long>(base_params)));
  } else {
    row("base model", absl::StrFormat("built-in LLaMA, %lld parameters, pretrained on copy only (%s)",
                                      static_cast<long long>(base_params),
                                      base.cached ? "cached" : absl::StrFormat("%.0f s", base_seconds)));
  }
  row("adapter", absl::StrFormat("LoRA r=%d on %s: %lld trainable parameters (%.1f%% of the base)",
                                 recipe.adapters(0).lora().r(),
                                 recipe.adapters(0).target().preset().empty() ? "its targets"
                                                                              : recipe.adapters(0).target().preset(),
                                 static_cast<long long>(trainable),
                                 100.0 * static_cast<double>(trainable) / static_cast<double>(base_params)));
  row("fine-tuning", absl::StrFormat("%lld steps x %d examples in %.0f s, loss %.3f -> %.3f",
                                     static_cast<long long>(ts.steps), recipe.training().micro_batch(), lora_seconds,
                                     ts.first_train_loss, ts.final_train_loss));
  row(absl::StrFormat("%s (new task)", kTask),
      absl::StrFormat("%s -> %s  (exact match, %lld held-out words)", pct(before.reverse.accuracy),
                      pct(after.reverse.accuracy), static_cast<long long>(n_test)));
  row(absl::StrFormat("%s (control)", kControl),
      absl::StrFormat("%s -> %s", pct(before.copy.accuracy), pct(after.copy.accuracy)));
  row("merged export, reloaded",
      match ? absl::StrFormat("%s; the same answers as base + adapter", pct(merged_scores.reverse.accuracy))
            : absl::StrFormat("%s; only %lld/%lld answers identical to base + adapter",
                              pct(merged_scores.reverse.accuracy), static_cast<long long>(same),
                              static_cast<long long>(n_test)));
  for (const json& e : examples) {
    row("merged generates", absl::StrFormat("%s%s%s", e["prompt"].get<std::string>(), e["generated"].get<std::string>(),
                                            e["correct"].get<bool>()
                                                ? ""
                                                : "  (expected " + e["expected"].get<std::string>() + ")"));
  }
  row("outputs", absl::StrCat(work, "/{summary.json, lora/adapter, merged}"));
  row("total time", absl::StrFormat("%.0f s", total));
  if (!match) {
    return absl::InternalError("the merged export does not answer exactly as base + adapter (see summary.json)");
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace peft::quickstart

int main(int argc, char** argv) {
  const std::vector<peft::cli::FlagSpec> specs = {
      {"work_dir", "outputs (data, base, lora, merged, summary.json)", "runs/quickstart"},
      {"base", "a Hugging Face model directory to fine-tune instead of the built-in base", ""},
      {"tokenizer", "tokenizer for --base (default: the model directory)", ""},
      {"steps", "LoRA steps (0 = the recipe's training.steps)", "0"},
      {"recipe", "fine-tuning recipe (default: examples/recipes/quickstart_lora.textproto, built in)", ""},
      {"set", "override a recipe field, e.g. --set=training.micro_batch=16 (repeatable)", "", false, false, true},
      {"seed", "data, initialisation and training seed", "0"},
      {"threads", "LibTorch threads (0 = all cores)", "0"},
      {"test_examples", "held-out test words", "100"},
      {"train_examples", "task training records", "4000"},
      {"replay", "share of the training records that are copy (the control task)", "0.5"},
      {"min_len", "shortest word", "3"},
      {"max_len", "longest word", "6"},
      {"pretrain_examples", "built-in base: generated pretraining records", "20000"},
      {"pretrain_steps", "built-in base: steps (0 = the base recipe's training.steps)", "0"},
      {"base_recipe", "built-in base: pretraining recipe (default: examples/recipes/quickstart_base.textproto, built in)", ""},
      {"hidden_size", "built-in base: hidden size", "128"},
      {"num_layers", "built-in base: layers", "4"},
      {"num_heads", "built-in base: attention heads", "4"},
      {"num_kv_heads", "built-in base: key/value heads", "2"},
      {"rebuild_base", "built-in base: pretrain again even when cached", "false", false, true},
  };
  const char* summary = "The main job: a base LLaMA, LoRA on a measurable task, merge, export, generate.";
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::fputs(peft::cli::usage("quickstart", summary, specs).c_str(), stdout);
      return 0;
    }
  }
  auto flags = peft::cli::parse_flags(args, specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "quickstart: %s (see quickstart --help)\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  absl::Status st = peft::quickstart::run(*flags);
  if (!st.ok()) {
    std::fprintf(stderr, "quickstart: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}
