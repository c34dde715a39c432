//
// Chat templates: a conversation -> token ids, with the assistant's tokens
// marked as targets. The layouts are those of the model families' own Jinja
// templates; they are recognised in the tokenizer's files, not interpreted
// (no Jinja engine):
//
//   llama3   <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>...
//            (Meta-Llama-3-Instruct; content trimmed, as the template does)
//   chatml   <|im_start|>user\n{content}<|im_end|>\n...   (Qwen2.5, SmolLM2; their
//            default system prompt is used when the conversation has none)
//   mistral  <s>[INST] {system}\n\n{user} [/INST] {assistant}</s>[INST] ...
//            (mistral-common's v1 layout; roles must alternate user/assistant
//            after an optional first system message)
//   plain    [<bos>]### System:\n{content}\n\n### User:\n{content}\n\n### Assistant:\n{content}<eos>\n\n
//            (any tokenizer; BOS where the tokenizer adds one by default)
//
// Template tokens go in as ids: the markers above that are added tokens of
// the tokenizer (<|eot_id|>, <|im_start|>, ...) and BOS/EOS are never spelled
// out and tokenized, so split_special_tokens (which applies to the content)
// cannot break them, and text in a message cannot forge them when it is set.
// The text between two such ids is tokenized as one string, exactly as
// tokenizing the whole rendered conversation would; where a target starts
// inside such a stretch, the boundary token is found by tokenizing the
// stretch up to that point.
//
// Targets: the assistant's content and its closing token (<|eot_id|>,
// <|im_end|>, </s>, or EOS for plain); everything else is context.
//
//   PEFT_ASSIGN_OR_RETURN(ChatTemplate t, resolve_chat_template("auto", *tok));
//   PEFT_ASSIGN_OR_RETURN(RenderedChat r, render_chat(t, {{"user", "Hi"}, {"assistant", "Hello!"}}, *tok, {}));
//   // r.ids, r.targets (1 on "Hello!" and <|eot_id|>), r.text
#ifndef PEFT_DATA_CHAT_TEMPLATE_H_
#define PEFT_DATA_CHAT_TEMPLATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"

namespace peft::data {

enum class ChatTemplateKind { kLlama3, kChatMl, kMistral, kPlain };

/// A resolved template.
struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::kPlain;
  /// chatml: the system prompt the template inserts when the conversation
  /// starts without one ("" for none).
  std::string default_system;

  /// "llama3", "chatml", "mistral" or "plain".
  std::string name() const;
};

/// One turn of a conversation; role is "system", "user" or "assistant".
struct ChatMessage {
  std::string role;
  std::string content;
};

/// The template named `name` ("llama3", "chatml", "mistral", "plain").
/// InvalidArgumentError listing the names otherwise.
absl::StatusOr<ChatTemplate> chat_template_by_name(const std::string& name);

/// Recognises the Jinja text of a chat template as one of the layouts.
/// InvalidArgumentError naming `where` when it is none of them (including
/// Llama 3.1-style templates, whose system preamble carries dates and tools).
absl::StatusOr<ChatTemplate> recognize_chat_template(const std::string& jinja, const std::string& where);

/// `name` as chat_template_by_name(), or "auto" (and ""): the tokenizer's own
/// template (Tokenizer::chat_template()) recognised, plain when it has none.
absl::StatusOr<ChatTemplate> resolve_chat_template(const std::string& name, const Tokenizer& tokenizer);

struct ChatRenderOptions {
  /// End with the header of an assistant turn, for generation.
  bool add_generation_prompt = false;
  /// Tokenize special-token text inside messages as ordinary text.
  bool split_special_tokens = false;
};

/// A rendered conversation.
struct RenderedChat {
  std::string text;              // the rendered string, template tokens spelled out
  std::vector<int32_t> ids;      // its token ids
  std::vector<uint8_t> targets;  // per id: 1 for the assistant's content and closing token
};

/// The id that closes an assistant turn under `t` (<|eot_id|>, <|im_end|>,
/// or EOS for mistral and plain); -1 when the tokenizer has none. Generation
/// with a chat prompt stops there.
int32_t chat_turn_end_id(const ChatTemplate& t, const Tokenizer& tokenizer);

/// Renders `messages` with `t`. InvalidArgumentError for an empty
/// conversation, an unknown role, roles the template cannot lay out
/// (mistral), or a tokenizer that lacks a token the template needs (named).
absl::StatusOr<RenderedChat> render_chat(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                         const Tokenizer& tokenizer, const ChatRenderOptions& options);

}  // namespace peft::data

#endif  // PEFT_DATA_CHAT_TEMPLATE_H_
