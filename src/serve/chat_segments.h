// Conversations as training text: a chat template's rendering cut into the parts the model reads
// (system and user turns, the template's own markup) and the parts it learns to write (each
// assistant turn, with the markup that ends it, so the model learns to stop).
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/text_corpus.h"
#include "data/tokenizer.h"
#include "serve/chat_template.h"

namespace moex::serve {

// The chat template and special tokens of a model directory, as `moex serve` renders them: the
// template's tokenizer_config.json bos_token/eos_token, else the tokenizer's own.
struct ChatRenderer {
  ChatRenderer(const std::string& model_dir, const data::Tokenizer& tokenizer);

  // `messages`: an OpenAI-style list ({"role", "content"}, content parts, tool_calls), checked as
  // the server checks a request's (an Error names the field, e.g. "messages[1].content").
  // Parts of the whole conversation's rendering, in order: each assistant turn is a trained part,
  // the difference between the conversation rendered up to it with the generation prompt and
  // rendered through it, where both begin the whole. A template that renders a turn differently
  // once later ones follow (Qwen3 drops the reasoning of turns before the last question) has no
  // such prefix for that turn: it is read, not trained, and counted in *untrained.
  // `tools` (a list of function tools, as a request's; null: none) are offered in every rendering.
  std::vector<data::TextSegment> segments(const nlohmann::json& messages, int64_t* untrained,
                                          const nlohmann::json& tools = nlohmann::json()) const;

  ChatTemplate chat_template;
  std::map<std::string, std::string> special_tokens;
};

}  // namespace moex::serve
