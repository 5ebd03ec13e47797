#include "serve/chat_segments.h"

#include "serve/openai_api.h"

namespace moex::serve {
namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

ChatRenderer::ChatRenderer(const std::string& model_dir, const data::Tokenizer& tokenizer)
    : chat_template(load_chat_template(model_dir)), special_tokens(load_special_tokens(model_dir)) {
  // A moex model directory has no tokenizer_config.json: the tokenizer's own BOS/EOS serve.
  if (special_tokens["bos_token"].empty() && tokenizer.bos_id() >= 0)
    special_tokens["bos_token"] = tokenizer.id_to_token(tokenizer.bos_id());
  if (special_tokens["eos_token"].empty() && tokenizer.eos_id() >= 0)
    special_tokens["eos_token"] = tokenizer.id_to_token(tokenizer.eos_id());
}

std::vector<data::TextSegment> ChatRenderer::segments(const nlohmann::json& messages,
                                                      int64_t* untrained,
                                                      const nlohmann::json& tools) const {
  // The server's checks and conversion of messages and tools, on a request of only them.
  nlohmann::json request = {{"model", "-"}, {"messages", messages}};
  if (!tools.is_null()) request["tools"] = tools;
  GenerationRequest r;
  try {
    r = parse_generation_request(request.dump(), true);
  } catch (const ApiError& e) {
    MOEX_THROW(e.message);
  }
  const std::vector<ChatMessage>& turns = r.messages;
  auto render = [&](size_t count, bool generation_prompt) {
    const std::vector<ChatMessage> head(turns.begin(), turns.begin() + count);
    return chat_template.render(head, generation_prompt, special_tokens, r.tools);
  };
  const std::string whole = render(turns.size(), false);
  // Assistant turn i is the text between the conversation rendered up to it with the generation
  // prompt and rendered through it, where both are starts of the whole.
  std::vector<data::TextSegment> parts;
  size_t done = 0;  // the whole's bytes already cut into parts
  *untrained = 0;
  for (size_t i = 0; i < turns.size(); ++i) {
    if (turns[i].role != "assistant") continue;
    const std::string prompt = render(i, true), through = render(i + 1, false);
    if (prompt.size() < done || !starts_with(through, prompt) || !starts_with(whole, through)) {
      ++*untrained;
      continue;
    }
    parts.push_back({whole.substr(done, prompt.size() - done), false});
    parts.push_back({through.substr(prompt.size()), true});
    done = through.size();
  }
  parts.push_back({whole.substr(done), false});
  return parts;
}

}  // namespace moex::serve
