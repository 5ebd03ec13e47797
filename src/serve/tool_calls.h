// Tool calls in a chat model's output. Models trained for tools write each call in their own
// markup; moex reads the Hermes form that Qwen2.5, Qwen3 and many other templates teach:
//   <tool_call>
//   {"name": "get_weather", "arguments": {"city": "Paris"}}
//   </tool_call>
// A template that mentions "<tool_call>" is taken to teach it (docs/architecture.md §Departures,
// "Tool calls").
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace moex::serve {

// The markup a chat template teaches its model for tool calls.
enum class ToolCallFormat { kNone, kHermes };
ToolCallFormat tool_call_format(const std::string& template_text);

// What a forced call is written between: "<tool_call>\n" and "\n</tool_call>" (kHermes).
struct ToolCallMarkup {
  std::string open, close;
};
ToolCallMarkup tool_call_markup(ToolCallFormat format);

struct ToolCall {
  std::string name;
  std::string arguments;  // a JSON object's text, as OpenAI sends it
};

struct ParsedToolCalls {
  std::string content;  // the text before the first call as written ("" when blank)
  std::vector<ToolCall> calls;
};

// Splits generated text into content and calls (text after the calls is dropped, as vLLM's Hermes
// reader does). A call block that is not a JSON object with a
// string "name" (and an object or string "arguments", absent reads as {}) leaves the whole text as
// content with no calls, as a client would rather see the text than lose it. A last block without
// its closing tag (generation stopped) is read to the end of the text.
ParsedToolCalls parse_tool_calls(const std::string& text, ToolCallFormat format);

// Streaming: how much of `text` may be sent as content now. Everything from the first call's
// opening tag on is held until the end, and so is a tail that could still become one.
size_t streamable_prefix(const std::string& text, ToolCallFormat format);

}  // namespace moex::serve
