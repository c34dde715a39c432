//
// The built-in, measurable fine-tuning task that the quickstart
// (examples/quickstart.cc) and `peft bench` (examples/cli/bench_command.cc)
// share, so that both need nothing from outside the repository:
//
//   - a byte-level tokenizer (tokenizer.json with 256 byte ids and
//     <|endoftext|> = 256) and a small base LLaMA pretrained on generated
//     "copy: <word> -> <word>" records by full fine-tuning through
//     trainers::train, cached in a directory with a fingerprint of every
//     setting that changes it;
//   - the task "reverse: <word> -> <reversed word>" on random lowercase words
//     (instruction data; held-out test words appear in no training data),
//     with "copy" replayed as a control;
//   - greedy exact-match scoring of a model on the held-out words.
//
//   PEFT_ASSIGN_OR_RETURN(TaskOptions task, task_options_from(flags));
//   const TaskData data = make_data(task);
//   PEFT_ASSIGN_OR_RETURN(Base base, build_base(work_dir, data, task.seed, base_options, log));
//   ... trainers::train(recipe with model = base.dir) ...
//   PEFT_ASSIGN_OR_RETURN(Prompting p, make_prompting(recipe, *tok, lm->config()));
//   PEFT_ASSIGN_OR_RETURN(TaskScores s, score_tasks(*lm, p, data.test_words));
#ifndef PEFT_EXAMPLES_BENCH_TASK_H_
#define PEFT_EXAMPLES_BENCH_TASK_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"
#include "examples/cli/flags.h"
#include "models/causal_lm.h"
#include "trainers/proto/recipe.pb.h"
#include "trainers/trainer.h"

namespace peft::bench_task {

/// The new task and the control (the base's pretraining task).
inline constexpr const char* kTask = "reverse";
inline constexpr const char* kControl = "copy";

/// Words shown at the end of the quickstart; held out of all training data.
const std::vector<std::string>& demo_words();

/// One instruction record: the trainer renders `prompt_template` with
/// {instruction} and {input} and trains on `output` only.
struct Record {
  std::string instruction, input, output;
};

std::string reversed(const std::string& s);

/// What to generate. Defaults are the quickstart's and the benchmark's.
struct TaskOptions {
  uint64_t seed = 0;
  int64_t test_examples = 100;    // held-out words
  int64_t train_examples = 4000;  // fine-tuning records (task + replay)
  int64_t pretrain_examples = 20000;
  int64_t min_len = 3;  // word lengths, letters
  int64_t max_len = 6;
  double replay = 0.5;  // share of fine-tuning records that are copy
  /// InvalidArgument naming the flag of the first bad value.
  absl::Status validate() const;
};

struct TaskData {
  std::vector<std::string> test_words;  // no palindromes, in no training data
  std::vector<Record> train;            // the task with `replay` copy records spread evenly
  std::vector<Record> pretrain;         // copy only
};

/// Deterministic in options.seed (splitmix64, the same on every platform).
TaskData make_data(const TaskOptions& options);

/// The test words as "reverse" records (for data/test.jsonl).
std::vector<Record> test_records(const TaskData& data);

/// JSON lines {"instruction","input","output"}.
std::string to_jsonl(const std::vector<Record>& records);

/// Writes `text` to `path` atomically, creating the parent directories.
absl::Status write_text(const std::string& path, const std::string& text);

/// tokenizer.json + tokenizer_config.json of the byte-level tokenizer (loads
/// in peft-cpp and in Hugging Face `tokenizers`).
absl::Status write_byte_tokenizer(const std::string& dir);

// ---- Recipes ---------------------------------------------------------------

/// examples/recipes/quickstart_base.textproto and quickstart_lora.textproto,
/// compiled in so that the programs run from any directory.
const char* builtin_base_recipe();
const char* builtin_lora_recipe();

/// `file` parsed, or `builtin` when `file` is empty.
absl::StatusOr<proto::Recipe> recipe_from(const std::string& file, const char* builtin);

/// training.steps = steps, with schedule.warmup_steps shortened to fit.
void set_steps(proto::Recipe* recipe, int64_t steps);

/// Trainer options whose log appends every line to `log_file` and passes
/// one-line messages to `echo` (may be null).
trainers::TrainOptions train_options(const std::string& log_file, std::function<void(const std::string&)> echo);

// ---- The built-in base -------------------------------------------------------

/// A byte-level LLaMA: vocabulary 257, FFN 8/3 x hidden rounded up to 32,
/// 64 positions, untied head.
struct BaseOptions {
  int64_t hidden_size = 128;
  int64_t num_layers = 4;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  int64_t pretrain_steps = 0;  // 0: the base recipe's training.steps
  int64_t threads = 0;         // 0: the base recipe's training.threads
  std::string recipe_file;     // empty: builtin_base_recipe()
  bool rebuild = false;        // pretrain even when cached
  absl::Status validate() const;
};

struct PretrainStats {
  int64_t steps = 0;
  double seconds = 0;
  double first_train_loss = 0;
  double final_train_loss = 0;
  double final_eval_loss = 0;
};

struct Base {
  std::string dir;      // a Hugging Face model directory with the tokenizer
  bool cached = false;  // reused from an earlier run
  PretrainStats pretrain;
};

/// The built-in base in `<work_dir>/base`: reused when its fingerprint
/// (version, config, recipe, pretraining data) matches, else pretrained from
/// a random init seeded with `seed` (writes <work_dir>/{tokenizer, data,
/// pretrain}; the base directory and its marker file appear only once done).
absl::StatusOr<Base> build_base(const std::string& work_dir, const TaskData& data, uint64_t seed,
                                const BaseOptions& options, const std::function<void(const std::string&)>& log);

// ---- Scoring -----------------------------------------------------------------

/// How a question is put to a model: the recipe's prompt template, the
/// tokenizer and the ids that end an answer (EOS, newline).
struct Prompting {
  std::string tmpl;
  const data::Tokenizer* tok = nullptr;
  std::vector<int64_t> stop_ids;
  std::string prompt(const std::string& instruction, const std::string& input) const;
};

/// Prompting for `recipe`'s data.prompt_template (data/dataset.h's default
/// when unset; it must contain {input}).
absl::StatusOr<Prompting> make_prompting(const proto::Recipe& recipe, const data::Tokenizer& tok,
                                         const models::ModelConfig& config);

/// The greedy answer to `instruction: input`, cut at the first newline and
/// trimmed; generation stops at a stop id or two tokens past the length of
/// `expected` (a longer answer is wrong anyway).
absl::StatusOr<std::string> answer(models::CausalLm& lm, const Prompting& p, const std::string& instruction,
                                   const std::string& input, const std::string& expected);

struct Score {
  double accuracy = 0;  // correct / words
  int64_t correct = 0;
  std::vector<std::string> answers;  // one per word, in order
};

struct TaskScores {
  Score task;     // reverse
  Score control;  // copy
};

/// Greedy exact match on both tasks over `words` (eval mode, no grad).
absl::StatusOr<TaskScores> score_tasks(models::CausalLm& lm, const Prompting& p, const std::vector<std::string>& words);

/// Answers identical on both tasks, word by word.
int64_t identical_answers(const TaskScores& a, const TaskScores& b);

/// Number of parameters in the model's Hugging Face state.
int64_t count_parameters(models::CausalLm& lm);

// ---- Flags -------------------------------------------------------------------

/// The task and built-in base flags (--seed, --test_examples, ...,
/// --hidden_size, --rebuild_base), shared by the quickstart and `peft bench`.
std::vector<cli::FlagSpec> task_flags();
absl::StatusOr<TaskOptions> task_options_from(const cli::ParsedFlags& flags);
absl::StatusOr<BaseOptions> base_options_from(const cli::ParsedFlags& flags);

}  // namespace peft::bench_task

#endif  // PEFT_EXAMPLES_BENCH_TASK_H_
