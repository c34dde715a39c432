#include "trainers/recipe.h"

#include <fstream>
#include <sstream>
#include <tuple>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/message_differencer.h>
#include <torch/cuda.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "data/chat_template.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"
#include "peft/registry.h"

namespace peft::trainers {
namespace {

namespace pb = google::protobuf;

class Collector : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (first.empty()) first = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  std::string first;
};

absl::Status positive(const char* field, double v) {
  if (!(v > 0)) return absl::InvalidArgumentError(absl::StrCat("recipe: ", field, " must be positive, got ", v));
  return absl::OkStatus();
}

absl::Status non_negative(const char* field, double v) {
  if (!(v >= 0)) return absl::InvalidArgumentError(absl::StrCat("recipe: ", field, " must be >= 0, got ", v));
  return absl::OkStatus();
}

// Built against a CUDA LibTorch (@libtorch//:torch defines PEFT_WITH_CUDA).
#if defined(PEFT_WITH_CUDA)
constexpr bool kCudaBuild = true;
#else
constexpr bool kCudaBuild = false;
#endif

absl::Status check_device(const proto::Recipe& r) {
  if (r.training().device() == proto::TrainingConfig::CUDA && !torch::cuda::is_available()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "recipe: training.device: CUDA requested but no CUDA device is available (this LibTorch has CUDA: ",
        kCudaBuild ? "yes" : "no", ")"));
  }
  if (r.distributed().backend() == proto::DistributedConfig::NCCL) {
    if (!kCudaBuild) {
      return absl::UnimplementedError(
          "distributed.backend NCCL needs a CUDA build; this trainer runs on the CPU (gloo)");
    }
    if (resolved_device(r) != proto::TrainingConfig::CUDA) {
      return absl::InvalidArgumentError(absl::StrCat(
          "recipe: distributed.backend: NCCL needs training.device CUDA (it reduces CUDA tensors), but "
          "training.device ",
          proto::TrainingConfig::Device_Name(r.training().device()), " runs on the CPU; use GLOO or AUTO"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// Parses text format into `m`; an error names `context` and the parser's
// first complaint.
absl::Status parse_text(const std::string& text, pb::Message* m, const std::string& context) {
  pb::TextFormat::Parser parser;
  Collector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, m)) return absl::InvalidArgumentError(absl::StrCat(context, ": ", errors.first));
  return absl::OkStatus();
}

bool is_index(const std::string& part) {
  return !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
}

// Entry `part` of the list `f` of `msg` (its path so far is `walked`).
absl::StatusOr<int> list_index(const pb::Message& msg, const pb::FieldDescriptor* f, const std::string& part,
                               const std::string& walked) {
  const int size = msg.GetReflection()->FieldSize(msg, f);
  int idx = 0;
  if (!absl::SimpleAtoi(part, &idx) || idx >= size) {
    return absl::InvalidArgumentError(absl::StrCat("--set: ", walked, " has ", size, " entries, no index ", part));
  }
  return idx;
}

absl::Status not_message_text(const std::string& path) {
  return absl::InvalidArgumentError(
      absl::StrCat("--set: '", path, "' is a message; give it in text format, e.g. ", path, "={ ... }"));
}

}  // namespace

absl::StatusOr<proto::Recipe> parse_recipe(const std::string& text, const std::string& source) {
  proto::Recipe r;
  PEFT_RETURN_IF_ERROR(parse_text(text, &r, source));
  return r;
}

absl::Status apply_override(proto::Recipe* recipe, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(absl::StrCat("--set '", assignment, "': expected path.to.field=value"));
  }
  const std::string path = assignment.substr(0, eq);
  std::string value = assignment.substr(eq + 1);
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  pb::Message* msg = recipe;
  std::string walked;
  // "list.N" last: the whole entry N is replaced (handled after the walk).
  const bool whole_entry = parts.size() >= 2 && is_index(parts.back());
  for (size_t i = 0; i + (whole_entry ? 2 : 1) < parts.size(); ++i) {
    const pb::FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(parts[i]);
    walked += (walked.empty() ? "" : ".") + parts[i];
    if (f == nullptr || f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      return absl::InvalidArgumentError(absl::StrCat("--set: '", walked, "' is not a message field of the recipe"));
    }
    const pb::Reflection* refl = msg->GetReflection();
    if (f->is_repeated()) {
      if (i + 2 >= parts.size() || !is_index(parts[i + 1])) {
        return absl::InvalidArgumentError(
            absl::StrCat("--set: repeated field '", walked, "' needs an index (", walked, ".0.…)"));
      }
      PEFT_ASSIGN_OR_RETURN(const int idx, list_index(*msg, f, parts[++i], walked));
      walked += "." + parts[i];
      msg = refl->MutableRepeatedMessage(msg, f, idx);
    } else {
      msg = refl->MutableMessage(msg, f);
    }
  }
  // path.to.list.N={ ... }: replaces entry N of a list of messages.
  if (whole_entry) {
    const std::string list_path = path.substr(0, path.rfind('.'));
    const pb::FieldDescriptor* list = msg->GetDescriptor()->FindFieldByName(parts[parts.size() - 2]);
    if (list == nullptr || !list->is_repeated() || list->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      return absl::InvalidArgumentError(
          absl::StrCat("--set: '", list_path, "' is not a list of messages of the recipe"));
    }
    PEFT_ASSIGN_OR_RETURN(const int idx, list_index(*msg, list, parts.back(), list_path));
    const size_t close = value.rfind('}');
    if (value.empty() || value.front() != '{' || close == std::string::npos) return not_message_text(path);
    pb::Message* entry = msg->GetReflection()->MutableRepeatedMessage(msg, list, idx);
    std::unique_ptr<pb::Message> parsed(entry->New());
    PEFT_RETURN_IF_ERROR(parse_text(value.substr(1, close - 1), parsed.get(), "--set " + path));
    entry->CopyFrom(*parsed);
    return absl::OkStatus();
  }
  const pb::FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(parts.back());
  if (f == nullptr) return absl::InvalidArgumentError(absl::StrCat("--set: unknown field '", path, "'"));
  const bool is_message = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE;
  if (f->is_repeated() && is_message) {
    return absl::InvalidArgumentError(
        absl::StrCat("--set: '", path, "' is a list of messages; set one entry (", path, ".0.…) or edit the recipe"));
  }
  auto quote = [](const std::string& v) {
    std::string quoted = "\"";
    for (char c : v) quoted += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
    return quoted + "\"";
  };
  const bool is_string = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING;
  if (is_message) {
    // A whole message in text format replaces the field: reweighting={ strategy: QUADRATIC }.
    if (value.empty() || value.front() != '{') return not_message_text(path);
  } else if (f->is_repeated()) {
    // A list replaces the field: modules=q_proj,v_proj or modules=["q_proj", "v_proj"].
    if (value.empty() || value.front() != '[') {
      std::vector<std::string> items = absl::StrSplit(value, ',', absl::SkipEmpty());
      for (std::string& item : items) {
        if (is_string && (item.empty() || item.front() != '"')) item = quote(item);
      }
      value = absl::StrCat("[", absl::StrJoin(items, ", "), "]");
    }
  } else if (is_string && (value.empty() || value.front() != '"')) {
    value = quote(value);
  }
  std::unique_ptr<pb::Message> tmp(msg->New());
  PEFT_RETURN_IF_ERROR(parse_text(absl::StrCat(f->name(), is_message ? " " : ": ", value), tmp.get(), "--set " + path));
  // The value must set this field only: "{ steps: 2 } data { ... }" or
  // "\"x\" output_dir: \"y\"" would reach other fields through the parser.
  std::vector<const pb::FieldDescriptor*> set;
  tmp->GetReflection()->ListFields(*tmp, &set);
  for (const pb::FieldDescriptor* other : set) {
    if (other != f) {
      return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": the value also sets '", other->name(),
                                                     "'; a --set changes only the field it names"));
    }
  }
  if (f->is_repeated() || is_message) msg->GetReflection()->ClearField(msg, f);
  msg->MergeFrom(*tmp);
  return absl::OkStatus();
}

absl::Status validate_recipe(const proto::Recipe& r) {
  if (r.model().empty())
    return absl::InvalidArgumentError("recipe: model is required (a Hugging Face model directory)");
  if (r.output_dir().empty()) return absl::InvalidArgumentError("recipe: output_dir is required");
  if (r.data().train_file().empty()) return absl::InvalidArgumentError("recipe: data.train_file is required");
  PEFT_RETURN_IF_ERROR(positive("data.seq_len", r.data().seq_len()));
  if (!(r.data().validation_fraction() >= 0 && r.data().validation_fraction() < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("recipe: data.validation_fraction must be in [0, 1), got ", r.data().validation_fraction()));
  }
  for (const auto& [name, has, text] :
       {std::tuple<const char*, bool, std::string>{"data.prompt_template", r.data().has_prompt_template(),
                                                   r.data().prompt_template()},
        {"data.prompt_template_no_input", r.data().has_prompt_template_no_input(),
         r.data().prompt_template_no_input()}}) {
    if (has && text.find("{instruction}") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("recipe: ", name, " has no \"{instruction}\": '", text, "'"));
    }
  }
  if (r.data().chat_template() != "auto") {
    if (absl::Status st = data::chat_template_by_name(r.data().chat_template()).status(); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("recipe: data.chat_template: ", st.message()));
    }
  }
  PEFT_RETURN_IF_ERROR(positive("optimizer.lr", r.optimizer().lr()));
  PEFT_RETURN_IF_ERROR(non_negative("optimizer.weight_decay", r.optimizer().weight_decay()));
  for (const auto& [name, v] : {std::pair<const char*, float>{"optimizer.beta1", r.optimizer().beta1()},
                                {"optimizer.beta2", r.optimizer().beta2()}}) {
    if (!(v >= 0 && v < 1))
      return absl::InvalidArgumentError(absl::StrCat("recipe: ", name, " must be in [0, 1), got ", v));
  }
  PEFT_RETURN_IF_ERROR(positive("optimizer.eps", r.optimizer().eps()));
  PEFT_RETURN_IF_ERROR(non_negative("optimizer.max_grad_norm", r.optimizer().max_grad_norm()));
  PEFT_RETURN_IF_ERROR(positive("training.steps", r.training().steps()));
  PEFT_RETURN_IF_ERROR(positive("training.micro_batch", r.training().micro_batch()));
  PEFT_RETURN_IF_ERROR(positive("training.grad_accum", r.training().grad_accum()));
  PEFT_RETURN_IF_ERROR(non_negative("training.threads", r.training().threads()));
  PEFT_RETURN_IF_ERROR(non_negative("schedule.warmup_steps", r.schedule().warmup_steps()));
  if (r.schedule().warmup_steps() > r.training().steps()) {
    return absl::InvalidArgumentError(absl::StrCat("recipe: schedule.warmup_steps (", r.schedule().warmup_steps(),
                                                   ") exceeds training.steps (", r.training().steps(), ")"));
  }
  if (!(r.schedule().min_lr_ratio() >= 0 && r.schedule().min_lr_ratio() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("recipe: schedule.min_lr_ratio must be in [0, 1], got ", r.schedule().min_lr_ratio()));
  }
  PEFT_RETURN_IF_ERROR(positive("reweighting.temperature", r.reweighting().temperature()));
  PEFT_RETURN_IF_ERROR(non_negative("reweighting.warmup_steps", r.reweighting().warmup_steps()));
  PEFT_RETURN_IF_ERROR(positive("distributed.timeout_s", r.distributed().timeout_s()));
  PEFT_RETURN_IF_ERROR(check_device(r));
  PEFT_RETURN_IF_ERROR(non_negative("checkpoint.every_steps", r.checkpoint().every_steps()));
  PEFT_RETURN_IF_ERROR(positive("checkpoint.keep_last", r.checkpoint().keep_last()));
  PEFT_RETURN_IF_ERROR(positive("logging.every_steps", r.logging().every_steps()));
  PEFT_RETURN_IF_ERROR(non_negative("eval.every_steps", r.eval().every_steps()));
  PEFT_RETURN_IF_ERROR(positive("eval.max_batches", r.eval().max_batches()));
  std::vector<std::string> names;
  for (int i = 0; i < r.adapters_size(); ++i) {
    const proto::AdapterConfig& a = r.adapters(i);
    absl::StatusOr<const AdapterMethod*> m = method_of(a);
    if (!m.ok()) return absl::InvalidArgumentError(absl::StrCat("recipe: adapters[", i, "]: ", m.status().message()));
    absl::Status st = (*m)->validate(a);
    if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat("recipe: adapters[", i, "]: ", st.message()));
    for (const std::string& n : names) {
      if (n == a.name()) {
        return absl::InvalidArgumentError(absl::StrCat("recipe: two adapters are named '", n, "'"));
      }
    }
    names.push_back(a.name());
  }
  return absl::OkStatus();
}

proto::TrainingConfig::Device resolved_device(const proto::Recipe& r) {
  switch (r.training().device()) {
    case proto::TrainingConfig::CUDA: return proto::TrainingConfig::CUDA;
    case proto::TrainingConfig::AUTO:
      return torch::cuda::is_available() ? proto::TrainingConfig::CUDA : proto::TrainingConfig::CPU;
    default: return proto::TrainingConfig::CPU;
  }
}

proto::DistributedConfig::Backend resolved_backend(const proto::Recipe& r) {
  if (r.distributed().backend() != proto::DistributedConfig::AUTO) return r.distributed().backend();
  return resolved_device(r) == proto::TrainingConfig::CUDA ? proto::DistributedConfig::NCCL
                                                           : proto::DistributedConfig::GLOO;
}

absl::StatusOr<proto::Recipe> read_recipe(const std::string& path) {
  PEFT_ASSIGN_OR_RETURN(const std::string text, with_context(io::read_file(path), "recipe"));
  return parse_recipe(text, path);
}

absl::StatusOr<proto::Recipe> load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  PEFT_ASSIGN_OR_RETURN(proto::Recipe r, read_recipe(path));
  for (const std::string& o : overrides) PEFT_RETURN_IF_ERROR(apply_override(&r, o));
  PEFT_RETURN_IF_ERROR(validate_recipe(r));
  return r;
}

data::DataOptions data_options(const proto::Recipe& r) {
  data::DataOptions o;
  switch (r.data().format()) {
    case proto::DataConfig::JSONL_TEXT: o.format = data::DataOptions::Format::kJsonlText; break;
    case proto::DataConfig::PLAIN_TEXT: o.format = data::DataOptions::Format::kPlainText; break;
    case proto::DataConfig::INSTRUCTION: o.format = data::DataOptions::Format::kInstruction; break;
    case proto::DataConfig::CHAT: o.format = data::DataOptions::Format::kChat; break;
    default: o.format = data::DataOptions::Format::kAuto;
  }
  // One custom template serves both kinds of record unless the recipe gives
  // a second one (never a mix of the recipe's and Alpaca's).
  if (r.data().has_prompt_template()) o.prompt_template = o.prompt_template_no_input = r.data().prompt_template();
  if (r.data().has_prompt_template_no_input()) o.prompt_template_no_input = r.data().prompt_template_no_input();
  o.chat_template = r.data().chat_template();
  o.split_special_tokens = r.data().split_special_tokens();
  o.seq_len = r.data().seq_len();
  o.pack = r.data().pack();
  o.validation_fraction = r.data().has_validation_file() ? 0.0 : r.data().validation_fraction();
  o.seed = r.training().seed();
  o.on_bad = r.data().on_bad_record() == proto::DataConfig::SKIP ? data::DataOptions::OnBadRecord::kSkip
                                                                 : data::DataOptions::OnBadRecord::kStop;
  return o;
}

std::string recipe_differences(const proto::Recipe& before, const proto::Recipe& after) {
  std::string out;
  pb::util::MessageDifferencer differ;
  differ.ReportDifferencesToString(&out);
  differ.Compare(before, after);
  return out;
}

std::string recipe_to_text(const proto::Recipe& recipe) {
  std::string out;
  pb::TextFormat::PrintToString(recipe, &out);
  return out;
}

}  // namespace peft::trainers
