//
// The `peft` command-line tool's subcommands. Each is a name, a one-line
// summary, its flags and a function from parsed flags to a Status; main.cc
// turns a non-OK Status into a one-line error on stderr and a non-zero exit.
// Commands print results to stdout (JSON output is one object per line) and
// progress or speed to stderr.
#ifndef PEFT_EXAMPLES_CLI_COMMAND_H_
#define PEFT_EXAMPLES_CLI_COMMAND_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "data/tokenizer.h"
#include "examples/cli/flags.h"

namespace peft {
class PeftModel;
namespace models {
class CausalLm;
}  // namespace models
}  // namespace peft

namespace peft::cli {

struct Command {
  std::string name;
  std::string summary;
  std::vector<FlagSpec> flags;
  std::function<absl::Status(const ParsedFlags&)> run;
};

/// The subcommands, in help order.
std::vector<Command> model_commands();   // convert, init, merge, to-lora, generate, eval
std::vector<Command> data_commands();    // tokenize
std::vector<Command> train_commands();   // train
std::vector<Command> bench_commands();   // bench
std::vector<Command> export_commands();  // export

/// `peft launch --nproc=N [--master_port=P] -- COMMAND...`: starts N local
/// processes with the torchrun environment (RANK, WORLD_SIZE, ...); returns
/// the exit code.
int run_launch(const std::vector<std::string>& args);

/// --tokenizer if given, else the tokenizer inside the model directory.
absl::StatusOr<std::unique_ptr<data::Tokenizer>> tokenizer_for(const ParsedFlags& flags, const std::string& model_dir);

/// Sets LibTorch's intra-op threads from --threads (0 = all cores).
absl::Status apply_threads(const ParsedFlags& flags);

/// The --threads flag every model command takes.
FlagSpec threads_flag();

/// The model of --model; warns on stderr about tensors in the files that the
/// model does not use.
absl::StatusOr<std::shared_ptr<models::CausalLm>> load_base(const std::string& dir);

/// --adapter=DIR[,DIR...]: loads every adapter into `pm` ("default",
/// "adapter1", ...) and makes them all active; HSM adapters use their hard
/// 0/1 gate.
absl::Status load_adapters(PeftModel& pm, const std::string& list);

/// --prune: the HSM structural prune of the HSM adapter among `pm`'s (hard
/// gates), other active adapters folded in; a new, smaller model.
absl::StatusOr<std::shared_ptr<models::CausalLm>> prune_adapters(PeftModel& pm);

}  // namespace peft::cli

#endif  // PEFT_EXAMPLES_CLI_COMMAND_H_
