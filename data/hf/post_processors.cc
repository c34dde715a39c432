#include "data/hf/post_processors.h"

#include <utility>

#include "peft/core/status.h"

namespace peft::data::hf {
namespace {

// The ids of special token `name` from the template's table, else the
// tokenizer's id of that spelling.
absl::StatusOr<std::vector<int32_t>> special_ids(const Fields& f, const std::string& name,
                                                 const std::function<int32_t(const std::string&)>& token_id) {
  if (const json* table = f.get("special_tokens"); table != nullptr && table->is_object()) {
    if (const json* entry = member(*table, name.c_str()); entry != nullptr) {
      const json* ids = member(*entry, "ids");
      if (ids == nullptr || !ids->is_array()) return f.error("special token \"" + name + "\" has no \"ids\" list");
      std::vector<int32_t> out;
      for (const json& id : *ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (int64_t{1} << 30)) {
          return f.error("special token \"" + name + "\" has a bad id " + id.dump());
        }
        out.push_back(static_cast<int32_t>(id.get<int64_t>()));
      }
      return out;
    }
  }
  const int32_t id = token_id(name);
  if (id < 0) return f.error("special token \"" + name + "\" is neither in special_tokens nor a token");
  return std::vector<int32_t>{id};
}

absl::Status parse_into(const json& j, const std::string& where,
                        const std::function<int32_t(const std::string&)>& token_id, PostProcessor* pp) {
  const std::string type = component_type(j);
  Fields f(j, where, "post_processor " + type);
  if (type == "Sequence") {
    PEFT_ASSIGN_OR_RETURN(const json* list, f.array("processors"));
    for (const json& item : *list) PEFT_RETURN_IF_ERROR(parse_into(item, where, token_id, pp));
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "TemplateProcessing") {
    PEFT_ASSIGN_OR_RETURN(const json* single, f.array("single"));
    // Later processors wrap the result of earlier ones.
    std::vector<int32_t> prefix, suffix;
    bool seen_sequence = false;
    for (const json& piece : *single) {
      if (const json* special = member(piece, "SpecialToken"); special != nullptr) {
        const json* id = member(*special, "id");
        if (id == nullptr || !id->is_string()) return f.error("SpecialToken without a string \"id\"");
        PEFT_ASSIGN_OR_RETURN(std::vector<int32_t> ids, special_ids(f, id->get<std::string>(), token_id));
        std::vector<int32_t>& side = seen_sequence ? suffix : prefix;
        side.insert(side.end(), ids.begin(), ids.end());
      } else if (const json* seq = member(piece, "Sequence"); seq != nullptr) {
        const json* id = member(*seq, "id");
        if (id == nullptr || !id->is_string() || id->get<std::string>() != "A") {
          return f.error("the single template may only hold Sequence \"A\"");
        }
        if (seen_sequence) return f.error("the single template holds Sequence \"A\" twice");
        seen_sequence = true;
      } else {
        return f.error("template piece " + piece.dump().substr(0, 80) + " is neither SpecialToken nor Sequence");
      }
    }
    if (!seen_sequence) return f.error("the single template has no Sequence \"A\"");
    pp->prefix.insert(pp->prefix.begin(), prefix.begin(), prefix.end());
    pp->suffix.insert(pp->suffix.end(), suffix.begin(), suffix.end());
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(where, ": unsupported post_processor \"", type,
                                                 "\" (supported: TemplateProcessing, ByteLevel, Sequence)"));
}

}  // namespace

std::vector<int32_t> PostProcessor::apply(const std::vector<int32_t>& ids) const {
  std::vector<int32_t> out;
  out.reserve(prefix.size() + ids.size() + suffix.size());
  out.insert(out.end(), prefix.begin(), prefix.end());
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), suffix.begin(), suffix.end());
  return out;
}

absl::StatusOr<PostProcessor> parse_post_processor(const json& j, const std::string& where,
                                                   const std::function<int32_t(const std::string&)>& token_id) {
  PostProcessor pp;
  if (j.is_null()) return pp;
  PEFT_RETURN_IF_ERROR(parse_into(j, where, token_id, &pp));
  return pp;
}

}  // namespace peft::data::hf
