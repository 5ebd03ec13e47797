// Chat templates: the Jinja templates Hugging Face models ship in tokenizer_config.json, rendered
// in C++ the way @huggingface/jinja renders them (byte-exact on the templates tested in
// tests/unit/serve_chat_template_test.cpp).
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"

namespace moex::serve {

namespace jinja {
struct Program;
}

struct ChatMessage {
  std::string role, content;
  // Further fields of the message as the template sees them, e.g. "tool_calls" (a list of
  // {"type": "function", "function": {"name", "arguments"}}), "reasoning_content", "name".
  // Absent fields are undefined in the template; an "extra" field replaces role or content of the
  // same name (e.g. "content": null for an assistant turn that only calls tools).
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
};

// Thrown when the template itself refuses the conversation through raise_exception(...)
// (e.g. "Conversation roles must alternate user/assistant/user/assistant/..."): the request is at
// fault, not the template. reason() is the template's own text.
class ChatTemplateRaised : public Error {
 public:
  ChatTemplateRaised(const std::string& what, std::string reason) : Error(what), reason_(std::move(reason)) {}
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};

class ChatTemplate {
 public:
  // Parses once; a syntax error throws moex::Error "<source>:<line>:<column>: syntax error: ...".
  static ChatTemplate parse(const std::string& text, const std::string& source);

  // Renders with the variables transformers passes: messages, add_generation_prompt and the
  // special tokens (bos_token, eos_token, ... any string variables). Runtime errors (unknown
  // filter, a type error) throw moex::Error naming source:line:column; raise_exception(...)
  // throws ChatTemplateRaised.
  // `tools` (a list of function tools, as OpenAI's request has them) is passed when not empty.
  // `extra`: further variables (an object; a request's chat_template_kwargs, e.g.
  // {"enable_thinking": false}), set before the ones above, which they cannot replace.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const std::map<std::string, std::string>& special_tokens,
                     const nlohmann::ordered_json& tools = nlohmann::ordered_json(),
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json()) const;
  // The same with any variables as JSON (an object): "messages", "add_generation_prompt",
  // "tools", "enable_thinking", "bos_token", ...
  std::string render_json(const nlohmann::ordered_json& variables) const;

  const std::string& source() const { return source_; }
  const std::string& text() const { return text_; }

 private:
  std::shared_ptr<const jinja::Program> program_;
  std::string source_;
  std::string text_;
};

// The template of a model directory: chat_template.jinja if present (newer transformers save it
// there), else tokenizer_config.json's "chat_template" (a string, or the list form
// [{"name": "default", "template": ...}, ...] of which "default" is used), else
// kDefaultChatTemplate.
ChatTemplate load_chat_template(const std::string& model_dir);

// bos_token, eos_token, unk_token, pad_token of tokenizer_config.json (strings or
// {"content": ...} objects); empty when the file or field is absent.
std::map<std::string, std::string> load_special_tokens(const std::string& model_dir);

// moex's template for models trained by moex without a template of their own:
//   {bos}<|system|>\n{text}\n<|user|>\n{text}\n<|assistant|>\n{text}{eos}\n ... <|assistant|>\n
// One "<|role|>" line before each message, a newline after it, eos_token closing each assistant
// turn (so the model learns to stop there), and "<|assistant|>\n" as the generation prompt. It
// begins with bos_token, so the rendered text is tokenized without adding another one.
extern const char* const kDefaultChatTemplate;

}  // namespace moex::serve
