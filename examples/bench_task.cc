#include "examples/bench_task.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>

#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "data/dataset.h"
#include "models/generate.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/io/atomic_file.h"
#include "trainers/recipe.h"

namespace peft::bench_task {
namespace {

// kBaseRecipe and kLoraRecipe: the text of examples/recipes/quickstart_{base,lora}.textproto
// (a genrule in examples/BUILD).
#include "examples/quickstart_recipes.inc"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

// Bump when the pretraining data or procedure changes: a cached base with
// another version is rebuilt.
constexpr int kBaseVersion = 2;
constexpr const char* kEndOfText = "<|endoftext|>";

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

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

std::string trim(std::string s) {
  const char* ws = " \t\r\n";
  const size_t first = s.find_first_not_of(ws);
  s.erase(0, first == std::string::npos ? s.size() : first);
  s.erase(s.find_last_not_of(ws) + 1);
  return s;
}

absl::StatusOr<Score> score(models::CausalLm& lm, const Prompting& p, const char* instruction,
                            const std::vector<std::string>& words, std::string (*truth)(const std::string&)) {
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

std::string copy_of(const std::string& w) { return w; }

models::ModelConfig base_config(const BaseOptions& o) {
  models::ModelConfig cfg;
  cfg.arch = models::Architecture::kLlama;
  models::LlamaConfig& c = cfg.llama;
  c.vocab_size = 257;
  c.hidden_size = o.hidden_size;
  c.intermediate_size = ((8 * o.hidden_size / 3 + 31) / 32) * 32;
  c.num_hidden_layers = o.num_layers;
  c.num_attention_heads = o.num_heads;
  c.num_key_value_heads = o.num_kv_heads;
  c.head_dim = o.hidden_size / o.num_heads;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  cfg.bos_token_id = 256;
  cfg.eos_token_ids = {256};
  return cfg;
}

}  // namespace

const std::vector<std::string>& demo_words() {
  static const std::vector<std::string> w = {"hello", "lora", "quick"};
  return w;
}

std::string reversed(const std::string& s) { return std::string(s.rbegin(), s.rend()); }

absl::Status TaskOptions::validate() const {
  if (test_examples < 1 || train_examples < 2 || pretrain_examples < 2) {
    return absl::InvalidArgumentError("--test_examples must be >= 1, --train_examples and --pretrain_examples >= 2");
  }
  if (min_len < 2 || max_len < min_len || max_len > 12) {
    return absl::InvalidArgumentError("need 2 <= --min_len <= --max_len <= 12");
  }
  if (!(replay >= 0 && replay < 1)) return absl::InvalidArgumentError("--replay must be in [0, 1)");
  return absl::OkStatus();
}

// The test words first (no palindromes: a copying model would get them
// right), then training and pretraining words that avoid them.
TaskData make_data(const TaskOptions& o) {
  TaskData d;
  Rng rng{o.seed * 0x2545F4914F6CDD1Dull + 17};
  std::set<std::string> held_out(demo_words().begin(), demo_words().end());
  while (static_cast<int64_t>(d.test_words.size()) < o.test_examples) {
    std::string w = random_word(rng, o.min_len, o.max_len);
    if (w == reversed(w) || held_out.count(w)) continue;
    held_out.insert(w);
    d.test_words.push_back(w);
  }
  auto fresh_word = [&] {
    for (;;) {
      std::string w = random_word(rng, o.min_len, o.max_len);
      if (!held_out.count(w)) return w;
    }
  };
  const int64_t n = o.train_examples;
  const int64_t n_replay = static_cast<int64_t>(o.replay * static_cast<double>(n) + 0.5);
  for (int64_t i = 0; i < n; ++i) {
    std::string w = fresh_word();
    // Replay records are spread evenly through the file.
    const bool copy = (i + 1) * n_replay / n != i * n_replay / n;
    d.train.push_back(copy ? Record{kControl, w, w} : Record{kTask, w, reversed(w)});
  }
  for (int64_t i = 0; i < o.pretrain_examples; ++i) {
    std::string w = fresh_word();
    d.pretrain.push_back({kControl, w, w});
  }
  return d;
}

std::vector<Record> test_records(const TaskData& data) {
  std::vector<Record> out;
  for (const std::string& w : data.test_words) out.push_back({kTask, w, reversed(w)});
  return out;
}

std::string to_jsonl(const std::vector<Record>& records) {
  std::string out;
  for (const Record& r : records) {
    absl::StrAppend(&out, json{{"instruction", r.instruction}, {"input", r.input}, {"output", r.output}}.dump(), "\n");
  }
  return out;
}

absl::Status write_text(const std::string& path, const std::string& text) {
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", parent.string(), ": ", ec.message()));
  return io::write_file_atomically(path, text);
}

// A byte-level BPE with no merges: id b is byte b, 256 is <|endoftext|>
// (BOS = EOS, no BOS by default, as GPT-2).
absl::Status write_byte_tokenizer(const std::string& dir) {
  json vocab = json::object();
  const std::vector<std::string> symbols = byte_symbols();
  for (int b = 0; b < 256; ++b) vocab[symbols[b]] = b;
  vocab[kEndOfText] = 256;
  json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", json::array({{{"id", 256},
                                     {"content", kEndOfText},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", true},
                                     {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", vocab},
        {"merges", json::array()}}},
  };
  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"bos_token", kEndOfText},
                 {"eos_token", kEndOfText},
                 {"unk_token", kEndOfText},
                 {"add_bos_token", false},
                 {"model_max_length", 1024}};
  PEFT_RETURN_IF_ERROR(write_text(dir + "/tokenizer.json", tok.dump(2) + "\n"));
  return write_text(dir + "/tokenizer_config.json", config.dump(2) + "\n");
}

// ---- Recipes -------------------------------------------------------------------

const char* builtin_base_recipe() { return kBaseRecipe; }
const char* builtin_lora_recipe() { return kLoraRecipe; }

absl::StatusOr<proto::Recipe> recipe_from(const std::string& file, const char* builtin) {
  if (file.empty()) return trainers::parse_recipe(builtin, "built-in recipe");
  return trainers::read_recipe(file);
}

void set_steps(proto::Recipe* r, int64_t steps) {
  r->mutable_training()->set_steps(static_cast<int32_t>(steps));
  if (r->schedule().warmup_steps() > steps) r->mutable_schedule()->set_warmup_steps(static_cast<int32_t>(steps / 10));
}

trainers::TrainOptions train_options(const std::string& log_file, std::function<void(const std::string&)> echo) {
  auto log = std::make_shared<std::ofstream>(log_file, std::ios::app);
  trainers::TrainOptions o;
  o.log = [log, echo = std::move(echo)](const std::string& line) {
    *log << line << "\n" << std::flush;
    if (echo && line.find('\n') == std::string::npos) echo(line);
  };
  return o;
}

// ---- The built-in base -------------------------------------------------------------

absl::Status BaseOptions::validate() const {
  if (hidden_size <= 0 || num_layers <= 0 || num_heads <= 0 || num_kv_heads <= 0 || hidden_size % num_heads ||
      num_heads % num_kv_heads) {
    return absl::InvalidArgumentError(
        "--hidden_size, --num_layers, --num_heads, --num_kv_heads must be positive, "
        "heads must divide hidden_size and kv heads must divide heads");
  }
  if (pretrain_steps < 0) return absl::InvalidArgumentError("--pretrain_steps must be >= 0");
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  return absl::OkStatus();
}

absl::StatusOr<Base> build_base(const std::string& work, const TaskData& data, uint64_t seed, const BaseOptions& o,
                                const std::function<void(const std::string&)>& log) {
  PEFT_RETURN_IF_ERROR(o.validate());
  PEFT_ASSIGN_OR_RETURN(proto::Recipe recipe, recipe_from(o.recipe_file, kBaseRecipe));
  if (o.pretrain_steps > 0) set_steps(&recipe, o.pretrain_steps);
  if (o.threads > 0) recipe.mutable_training()->set_threads(static_cast<int32_t>(o.threads));
  recipe.mutable_training()->set_seed(seed);
  const models::ModelConfig cfg = base_config(o);

  Base b;
  b.dir = work + "/base";
  // Everything that changes the base; a cached base with another fingerprint is rebuilt.
  const std::string pretrain_jsonl = to_jsonl(data.pretrain);
  const json fingerprint = {{"version", kBaseVersion},
                            {"config", json::parse(models::model_config_to_json(cfg))},
                            {"recipe", trainers::recipe_to_text(recipe)},
                            {"data_hash", absl::StrFormat("%016x", std::hash<std::string>{}(pretrain_jsonl))}};
  const std::string marker = b.dir + "/quickstart_base.json";
  std::error_code ec;
  if (!o.rebuild && fs::is_regular_file(marker, ec)) {
    std::ifstream in(marker);
    const json m = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (m.is_object() && m.contains("fingerprint") && m["fingerprint"] == fingerprint) {
      b.cached = true;
      const json p = m.value("pretrain", json::object());
      b.pretrain = {p.value("steps", int64_t{0}), p.value("seconds", 0.0), p.value("first_train_loss", 0.0),
                    p.value("final_train_loss", 0.0), p.value("final_eval_loss", 0.0)};
      return b;
    }
    log("the cached base was made with other settings; rebuilding it");
  }

  // Tokenizer and a random init, then full fine-tuning on the pretraining task.
  const std::string tok_dir = work + "/tokenizer";
  PEFT_RETURN_IF_ERROR(write_byte_tokenizer(tok_dir));
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, models::create_model(cfg));
  models::init_weights_(*lm, seed);
  models::SaveOptions so;
  so.overwrite = true;
  so.extra_files = models::tokenizer_files(tok_dir);
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
  log(
      absl::StrFormat("pretraining %lld parameters from random init (full fine-tuning): %d steps x %d "
                      "examples of \"copy: <word> -> <word>\" (%lld generated records)",
                      static_cast<long long>(count_parameters(*lm)), recipe.training().steps(),
                      recipe.training().micro_batch(), static_cast<long long>(data.pretrain.size())));
  lm.reset();
  fs::create_directories(run, ec);
  const double t0 = now();
  PEFT_ASSIGN_OR_RETURN(trainers::TrainSummary ts,
                        trainers::train(recipe, train_options(run + "/train.log", [&log](const std::string& line) {
                                          log("[pretrain] " + line);
                                        })));
  // <run>/model plus the tokenizer becomes the cached base; the marker goes last.
  fs::remove_all(b.dir, ec);
  fs::rename(run + "/model", b.dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot move ", run, "/model to ", b.dir, ": ", ec.message()));
  for (const auto& [src, name] : models::tokenizer_files(tok_dir)) {
    fs::copy_file(src, b.dir + "/" + name, fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot copy ", src, ": ", ec.message()));
  }
  b.pretrain = {ts.steps, now() - t0, ts.first_train_loss, ts.final_train_loss, ts.final_eval_loss};
  const json stats = {{"steps", b.pretrain.steps},
                      {"seconds", b.pretrain.seconds},
                      {"first_train_loss", b.pretrain.first_train_loss},
                      {"final_train_loss", b.pretrain.final_train_loss},
                      {"final_eval_loss", b.pretrain.final_eval_loss}};
  PEFT_RETURN_IF_ERROR(write_text(marker, json{{"fingerprint", fingerprint}, {"pretrain", stats}}.dump(2) + "\n"));
  fs::remove_all(init_dir, ec);
  return b;
}

// ---- Scoring -------------------------------------------------------------------

std::string Prompting::prompt(const std::string& instruction, const std::string& input) const {
  return absl::StrReplaceAll(tmpl, {{"{instruction}", instruction}, {"{input}", input}});
}

absl::StatusOr<Prompting> make_prompting(const proto::Recipe& recipe, const data::Tokenizer& tok,
                                         const models::ModelConfig& config) {
  Prompting p;
  // The trainer renders prompts with this template (data/dataset.h's default when unset).
  p.tmpl = recipe.data().has_prompt_template() ? recipe.data().prompt_template() : data::DataOptions().prompt_template;
  if (p.tmpl.find("{input}") == std::string::npos) {
    return absl::InvalidArgumentError("the recipe's data.prompt_template needs {input}: the task's word goes there");
  }
  p.tok = &tok;
  if (tok.eos_id() >= 0) p.stop_ids.push_back(tok.eos_id());
  for (int64_t e : config.eos_token_ids) p.stop_ids.push_back(e);
  if (std::vector<int32_t> nl = tok.encode("\n"); nl.size() == 1) p.stop_ids.push_back(nl[0]);
  return p;
}

absl::StatusOr<std::string> answer(models::CausalLm& lm, const Prompting& p, const std::string& instruction,
                                   const std::string& input, const std::string& expected) {
  std::vector<int64_t> ids;
  if (p.tok->add_bos_by_default() && p.tok->bos_id() >= 0) ids.push_back(p.tok->bos_id());
  for (int32_t id : p.tok->encode(p.prompt(instruction, input))) ids.push_back(id);
  models::GenerateOptions o;
  o.max_new_tokens = static_cast<int64_t>(p.tok->encode(expected).size()) + 2;
  o.stop_ids = p.stop_ids;
  PEFT_ASSIGN_OR_RETURN(models::GenerateResult r, models::generate(lm, ids, o));
  std::vector<int32_t> out(r.generated_ids.begin(), r.generated_ids.end());
  std::string text = p.tok->decode(out);
  if (size_t nl = text.find('\n'); nl != std::string::npos) text.resize(nl);
  return trim(text);
}

absl::StatusOr<TaskScores> score_tasks(models::CausalLm& lm, const Prompting& p,
                                       const std::vector<std::string>& words) {
  torch::NoGradGuard no_grad;
  lm.module().eval();
  TaskScores s;
  PEFT_ASSIGN_OR_RETURN(s.task, score(lm, p, kTask, words, reversed));
  PEFT_ASSIGN_OR_RETURN(s.control, score(lm, p, kControl, words, copy_of));
  return s;
}

int64_t identical_answers(const TaskScores& a, const TaskScores& b) {
  int64_t same = 0;
  for (size_t i = 0; i < a.task.answers.size() && i < b.task.answers.size(); ++i) {
    same += a.task.answers[i] == b.task.answers[i] && a.control.answers[i] == b.control.answers[i];
  }
  return same;
}

int64_t count_parameters(models::CausalLm& lm) {
  int64_t n = 0;
  for (const auto& p : lm.hf_parameters()) n += p.tensor.numel();
  return n;
}

// ---- Flags -------------------------------------------------------------------

std::vector<cli::FlagSpec> task_flags() {
  using cli::bool_flag, cli::double_flag, cli::int_flag, cli::text_flag;
  const TaskOptions t;
  const BaseOptions b;
  return {
      int_flag("seed", "data, initialisation and training seed", t.seed),
      int_flag("test_examples", "held-out test words", t.test_examples),
      int_flag("train_examples", "task training records", t.train_examples),
      double_flag("replay", "share of the training records that are copy (the control task)", t.replay),
      int_flag("min_len", "shortest word", t.min_len),
      int_flag("max_len", "longest word", t.max_len),
      int_flag("pretrain_examples", "built-in base: generated pretraining records", t.pretrain_examples),
      int_flag("pretrain_steps", "built-in base: steps (0 = the base recipe's training.steps)", 0),
      text_flag("base_recipe",
                "built-in base: pretraining recipe (default: examples/recipes/quickstart_base.textproto, built in)"),
      int_flag("hidden_size", "built-in base: hidden size", b.hidden_size),
      int_flag("num_layers", "built-in base: layers", b.num_layers),
      int_flag("num_heads", "built-in base: attention heads", b.num_heads),
      int_flag("num_kv_heads", "built-in base: key/value heads", b.num_kv_heads),
      bool_flag("rebuild_base", "built-in base: pretrain again even when cached"),
  };
}

absl::StatusOr<TaskOptions> task_options_from(const cli::ParsedFlags& f) {
  TaskOptions t;
  PEFT_ASSIGN_OR_RETURN(int64_t seed, f.get_int("seed"));
  t.seed = static_cast<uint64_t>(seed);
  PEFT_ASSIGN_OR_RETURN(t.test_examples, f.get_int("test_examples"));
  PEFT_ASSIGN_OR_RETURN(t.train_examples, f.get_int("train_examples"));
  PEFT_ASSIGN_OR_RETURN(t.pretrain_examples, f.get_int("pretrain_examples"));
  PEFT_ASSIGN_OR_RETURN(t.min_len, f.get_int("min_len"));
  PEFT_ASSIGN_OR_RETURN(t.max_len, f.get_int("max_len"));
  PEFT_ASSIGN_OR_RETURN(t.replay, f.get_double("replay"));
  PEFT_RETURN_IF_ERROR(t.validate());
  return t;
}

absl::StatusOr<BaseOptions> base_options_from(const cli::ParsedFlags& f) {
  BaseOptions b;
  PEFT_ASSIGN_OR_RETURN(b.hidden_size, f.get_int("hidden_size"));
  PEFT_ASSIGN_OR_RETURN(b.num_layers, f.get_int("num_layers"));
  PEFT_ASSIGN_OR_RETURN(b.num_heads, f.get_int("num_heads"));
  PEFT_ASSIGN_OR_RETURN(b.num_kv_heads, f.get_int("num_kv_heads"));
  PEFT_ASSIGN_OR_RETURN(b.pretrain_steps, f.get_int("pretrain_steps"));
  PEFT_ASSIGN_OR_RETURN(b.rebuild, f.get_bool("rebuild_base"));
  b.recipe_file = f.get("base_recipe");
  PEFT_RETURN_IF_ERROR(b.validate());
  return b;
}

}  // namespace peft::bench_task
