#include "data/chat_template.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "data/hf/unicode.h"
#include "peft/core/status.h"

namespace peft::data {
namespace {

// One piece of a rendered conversation: text to tokenize, or a token id.
struct Segment {
  std::string text;
  int32_t id = -1;  // >= 0: a template token, never tokenized
  bool target = false;
};

// Python's str.strip(), which Jinja's `trim` filter applies: Unicode
// whitespace off both ends.
std::string trim(std::string_view s) {
  size_t begin = 0, end = s.size();
  while (begin < end) {
    const hf::Utf8Char c = hf::next_char(s, begin);
    if (!hf::is_whitespace(c.cp)) break;
    begin += c.len;
  }
  while (end > begin) {
    const hf::Utf8Char c = hf::prev_char(s, end);
    if (!hf::is_whitespace(c.cp)) break;
    end -= c.len;
  }
  return std::string(s.substr(begin, end - begin));
}

// The default system prompt a ChatML template writes as a literal
// '<|im_start|>system\n...<|im_end|>' (Qwen2.5, SmolLM2); "" when none.
std::string chatml_default_system(const std::string& jinja) {
  const std::string open = "<|im_start|>system\\n";
  for (size_t at = jinja.find(open); at != std::string::npos; at = jinja.find(open, at + 1)) {
    const size_t start = at + open.size();
    const size_t end = jinja.find("<|im_end|>", start);
    if (end == std::string::npos) break;
    const std::string_view text = std::string_view(jinja).substr(start, end - start);
    // A literal prompt, not an expression such as ' + messages[0]['content'] + '.
    if (text.empty() || text.find_first_of("'\"{}+") != std::string_view::npos) continue;
    return absl::StrReplaceAll(std::string(text), {{"\\n", "\n"}});
  }
  return "";
}

// Builds the segments of each layout.
class Builder {
 public:
  Builder(const Tokenizer& tok, const std::string& template_name) : tok_(tok), name_(template_name) {}

  void text(std::string s, bool target = false) {
    if (s.empty()) return;
    Segment seg;
    seg.text = std::move(s);
    seg.target = target;
    segments_.push_back(std::move(seg));
  }
  void id(int32_t id, bool target = false) {
    Segment seg;
    seg.id = id;
    seg.target = target;
    segments_.push_back(std::move(seg));
  }
  // A template marker that must be a token of the tokenizer.
  absl::Status token(const std::string& spelling, bool target = false) {
    const int32_t t = tok_.added_token_id(spelling);
    if (t < 0) {
      return absl::InvalidArgumentError(absl::StrCat("chat template ", name_, " needs the token ", spelling,
                                                     ", which this ", tok_.kind(), " tokenizer does not have"));
    }
    id(t, target);
    return absl::OkStatus();
  }
  // A marker that is a token where the tokenizer has it (Mistral's [INST] in
  // v3 vocabularies), else text.
  void marker(const std::string& spelling) {
    const int32_t t = tok_.added_token_id(spelling);
    if (t >= 0) {
      id(t);
    } else {
      text(spelling);
    }
  }

  std::vector<Segment>& segments() { return segments_; }

 private:
  const Tokenizer& tok_;
  std::string name_;
  std::vector<Segment> segments_;
};

absl::Status check_roles(const std::vector<ChatMessage>& messages) {
  if (messages.empty()) return absl::InvalidArgumentError("the conversation has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant") {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "]: unknown role \"", r, "\" (expected system, user or assistant)"));
    }
  }
  return absl::OkStatus();
}

absl::Status build_llama3(const std::vector<ChatMessage>& messages, const Tokenizer& tok, bool generation, Builder* b) {
  // Meta-Llama-3-Instruct: bos_token, then per message
  // <|start_header_id|>role<|end_header_id|>\n\n + content|trim + <|eot_id|>.
  if (tok.bos_id() < 0) return absl::InvalidArgumentError("chat template llama3 needs a BOS token");
  b->id(tok.bos_id());
  for (const ChatMessage& m : messages) {
    const bool assistant = m.role == "assistant";
    PEFT_RETURN_IF_ERROR(b->token("<|start_header_id|>"));
    b->text(m.role);
    PEFT_RETURN_IF_ERROR(b->token("<|end_header_id|>"));
    b->text("\n\n");
    b->text(trim(m.content), assistant);
    PEFT_RETURN_IF_ERROR(b->token("<|eot_id|>", assistant));
  }
  if (generation) {
    PEFT_RETURN_IF_ERROR(b->token("<|start_header_id|>"));
    b->text("assistant");
    PEFT_RETURN_IF_ERROR(b->token("<|end_header_id|>"));
    b->text("\n\n");
  }
  return absl::OkStatus();
}

absl::Status build_chatml(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool generation,
                          Builder* b) {
  auto turn = [&](const std::string& role, const std::string& content, bool assistant) -> absl::Status {
    PEFT_RETURN_IF_ERROR(b->token("<|im_start|>"));
    b->text(role + "\n");
    b->text(content, assistant);
    PEFT_RETURN_IF_ERROR(b->token("<|im_end|>", assistant));
    b->text("\n");
    return absl::OkStatus();
  };
  if (!t.default_system.empty() && messages.front().role != "system") {
    PEFT_RETURN_IF_ERROR(turn("system", t.default_system, false));
  }
  for (const ChatMessage& m : messages) PEFT_RETURN_IF_ERROR(turn(m.role, m.content, m.role == "assistant"));
  if (generation) {
    PEFT_RETURN_IF_ERROR(b->token("<|im_start|>"));
    b->text("assistant\n");
  }
  return absl::OkStatus();
}

absl::Status build_mistral(const std::vector<ChatMessage>& messages, const Tokenizer& tok, bool generation,
                           Builder* b) {
  if (tok.bos_id() < 0 || tok.eos_id() < 0) {
    return absl::InvalidArgumentError("chat template mistral needs BOS and EOS tokens");
  }
  size_t first = 0;
  std::string system;
  if (messages.front().role == "system") {
    system = messages.front().content;
    first = 1;
  }
  b->id(tok.bos_id());
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool want_user = (i - first) % 2 == 0;
    if ((m.role == "user") != want_user || m.role == "system") {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "]: role \"", m.role,
                       "\": the mistral template needs user/assistant turns alternating, starting with user, after "
                       "at most one leading system message"));
    }
    if (m.role == "user") {
      b->marker("[INST]");
      b->text(" ");
      b->text(i == first && !system.empty() ? system + "\n\n" + m.content : m.content);
      b->text(" ");
      b->marker("[/INST]");
    } else {
      b->text(" " + m.content, /*target=*/true);
      b->id(tok.eos_id(), /*target=*/true);
    }
  }
  if (first == messages.size()) return absl::InvalidArgumentError("the mistral template needs a user message");
  (void)generation;  // the prompt ends with [/INST] either way
  return absl::OkStatus();
}

absl::Status build_plain(const std::vector<ChatMessage>& messages, const Tokenizer& tok, bool generation, Builder* b) {
  if (tok.add_bos_by_default() && tok.bos_id() >= 0) b->id(tok.bos_id());
  for (const ChatMessage& m : messages) {
    if (m.role == "assistant") {
      b->text("### Assistant:\n");
      b->text(m.content, /*target=*/true);
      if (tok.eos_id() >= 0) b->id(tok.eos_id(), /*target=*/true);
      b->text("\n\n");
    } else {
      b->text(m.role == "system" ? "### System:\n" : "### User:\n");
      b->text(m.content);
      b->text("\n\n");
    }
  }
  if (generation) b->text("### Assistant:\n");
  return absl::OkStatus();
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

}  // namespace

std::string ChatTemplate::name() const {
  switch (kind) {
    case ChatTemplateKind::kLlama3: return "llama3";
    case ChatTemplateKind::kChatMl: return "chatml";
    case ChatTemplateKind::kMistral: return "mistral";
    case ChatTemplateKind::kPlain: return "plain";
  }
  return "?";
}

absl::StatusOr<ChatTemplate> chat_template_by_name(const std::string& name) {
  ChatTemplate t;
  if (name == "llama3") {
    t.kind = ChatTemplateKind::kLlama3;
  } else if (name == "chatml") {
    t.kind = ChatTemplateKind::kChatMl;
  } else if (name == "mistral") {
    t.kind = ChatTemplateKind::kMistral;
  } else if (name == "plain") {
    t.kind = ChatTemplateKind::kPlain;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown chat template \"", name, "\" (expected auto, llama3, chatml, mistral or plain)"));
  }
  return t;
}

absl::StatusOr<ChatTemplate> recognize_chat_template(const std::string& jinja, const std::string& where) {
  auto has = [&](const char* s) { return jinja.find(s) != std::string::npos; };
  ChatTemplate t;
  if (has("<|start_header_id|>") && has("<|end_header_id|>") && has("<|eot_id|>")) {
    if (has("Cutting Knowledge Date") || has("<|python_tag|>")) {
      return absl::InvalidArgumentError(absl::StrCat(
          where,
          ": a Llama 3.1-style chat template (a system preamble with dates and tools) is not one this project "
          "renders; set data.chat_template: llama3 for the Llama 3 layout without the preamble"));
    }
    t.kind = ChatTemplateKind::kLlama3;
    return t;
  }
  if (has("<|im_start|>") && has("<|im_end|>")) {
    t.kind = ChatTemplateKind::kChatMl;
    t.default_system = chatml_default_system(jinja);
    return t;
  }
  if (has("[INST]") && has("[/INST]")) {
    t.kind = ChatTemplateKind::kMistral;
    return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where,
                   ": the chat template is none of the recognised layouts (llama3, chatml, mistral); set "
                   "data.chat_template to llama3, chatml, mistral or plain"));
}

absl::StatusOr<ChatTemplate> resolve_chat_template(const std::string& name, const Tokenizer& tokenizer) {
  if (!name.empty() && name != "auto") return chat_template_by_name(name);
  const std::string jinja = tokenizer.chat_template();
  if (jinja.empty()) return chat_template_by_name("plain");
  return recognize_chat_template(jinja, "the tokenizer's chat template");
}

int32_t chat_turn_end_id(const ChatTemplate& t, const Tokenizer& tokenizer) {
  switch (t.kind) {
    case ChatTemplateKind::kLlama3: return tokenizer.added_token_id("<|eot_id|>");
    case ChatTemplateKind::kChatMl: return tokenizer.added_token_id("<|im_end|>");
    case ChatTemplateKind::kMistral:
    case ChatTemplateKind::kPlain: return tokenizer.eos_id();
  }
  return -1;
}

absl::StatusOr<RenderedChat> render_chat(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                         const Tokenizer& tok, const ChatRenderOptions& options) {
  PEFT_RETURN_IF_ERROR(check_roles(messages));
  Builder b(tok, t.name());
  switch (t.kind) {
    case ChatTemplateKind::kLlama3:
      PEFT_RETURN_IF_ERROR(build_llama3(messages, tok, options.add_generation_prompt, &b));
      break;
    case ChatTemplateKind::kChatMl:
      PEFT_RETURN_IF_ERROR(build_chatml(t, messages, options.add_generation_prompt, &b));
      break;
    case ChatTemplateKind::kMistral:
      PEFT_RETURN_IF_ERROR(build_mistral(messages, tok, options.add_generation_prompt, &b));
      break;
    case ChatTemplateKind::kPlain:
      PEFT_RETURN_IF_ERROR(build_plain(messages, tok, options.add_generation_prompt, &b));
      break;
  }

  RenderedChat out;
  EncodeOptions enc;
  enc.split_special_tokens = options.split_special_tokens;
  const std::vector<Segment>& segs = b.segments();
  // Each maximal run of text segments is tokenized as one string.
  for (size_t i = 0; i < segs.size();) {
    if (segs[i].id >= 0) {
      out.ids.push_back(segs[i].id);
      out.targets.push_back(segs[i].target ? 1 : 0);
      out.text += tok.id_to_piece(segs[i].id);
      ++i;
      continue;
    }
    size_t j = i;
    std::string run;
    std::vector<std::pair<size_t, bool>> starts;  // (byte offset in run, target) of each segment
    for (; j < segs.size() && segs[j].id < 0; ++j) {
      starts.emplace_back(run.size(), segs[j].target);
      run += segs[j].text;
    }
    const std::vector<int32_t> ids = tok.encode(run, enc);
    std::vector<uint8_t> targets(ids.size(), starts.front().second ? 1 : 0);
    for (size_t k = 1; k < starts.size(); ++k) {
      if (starts[k].second == starts[k - 1].second) continue;
      // The first token that differs from the tokens of the run's text before
      // this segment starts the segment's labels.
      const size_t from = common_prefix(tok.encode(std::string_view(run).substr(0, starts[k].first), enc), ids);
      std::fill(targets.begin() + static_cast<std::ptrdiff_t>(std::min(from, ids.size())), targets.end(),
                starts[k].second ? 1 : 0);
    }
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.targets.insert(out.targets.end(), targets.begin(), targets.end());
    out.text += run;
    i = j;
  }
  return out;
}

}  // namespace peft::data
