// peft: the command-line tool (target //:peft). See README.md.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "examples/cli/command.h"

namespace {

std::vector<peft::cli::Command> all_commands() {
  std::vector<peft::cli::Command> all = peft::cli::train_commands();
  for (peft::cli::Command& c : peft::cli::model_commands()) all.push_back(std::move(c));
  for (peft::cli::Command& c : peft::cli::export_commands()) all.push_back(std::move(c));
  for (peft::cli::Command& c : peft::cli::data_commands()) all.push_back(std::move(c));
  for (peft::cli::Command& c : peft::cli::bench_commands()) all.push_back(std::move(c));
  return all;
}

void print_help(const std::vector<peft::cli::Command>& commands) {
  std::fprintf(
      stdout,
      "peft: parameter-efficient fine-tuning for LLaMA, Mistral, Qwen2 and GPT-2 in C++\n\nusage: peft <command> "
      "[flags]\n\ncommands:\n");
  for (const auto& c : commands) {
    std::fprintf(stdout, "  %-10s %s\n", c.name.c_str(), c.summary.c_str());
    // launch takes a command line, not flags, so it is not a Command; list it after train.
    if (c.name == "train") {
      std::fprintf(stdout, "  %-10s %s\n", "launch",
                   "Run a command in N local processes for data parallel (peft launch --nproc=N -- peft train ...).");
    }
  }
  std::fprintf(stdout, "\n`peft <command> --help` lists a command's flags.\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<peft::cli::Command> commands = all_commands();
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    print_help(commands);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  if (name == "launch") return peft::cli::run_launch(std::vector<std::string>(argv + 2, argv + argc));
  for (const auto& c : commands) {
    if (c.name != name) continue;
    std::vector<std::string> args(argv + 2, argv + argc);
    for (const std::string& a : args) {
      if (a == "--help" || a == "-h") {
        std::fputs(peft::cli::usage(c.name, c.summary, c.flags).c_str(), stdout);
        return 0;
      }
    }
    absl::StatusOr<peft::cli::ParsedFlags> flags = peft::cli::parse_flags(args, c.flags);
    if (!flags.ok()) {
      std::fprintf(stderr, "peft %s: %s (see peft %s --help)\n", name.c_str(),
                   std::string(flags.status().message()).c_str(), name.c_str());
      return 2;
    }
    absl::Status st;
    try {
      st = c.run(*flags);
    } catch (const std::exception& e) {  // a LibTorch check that escaped a library boundary
      st = absl::InternalError(e.what());
    }
    if (!st.ok()) {
      std::string msg(st.message());
      // One line: LibTorch messages can carry a backtrace after the first line.
      if (size_t nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
      std::fprintf(stderr, "peft %s: %s\n", name.c_str(), msg.c_str());
      return 1;
    }
    return 0;
  }
  std::fprintf(stderr, "peft: unknown command '%s' (see peft --help)\n", name.c_str());
  return 2;
}
