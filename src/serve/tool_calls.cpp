#include "serve/tool_calls.h"

#include <nlohmann/json.hpp>

namespace moex::serve {
namespace {

constexpr const char* kOpen = "<tool_call>";
constexpr const char* kClose = "</tool_call>";

std::string trimmed(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  const size_t end = s.find_last_not_of(" \t\r\n");
  return s.substr(begin, end - begin + 1);
}

// One call's JSON, or false when it is not a call.
bool read_call(const std::string& body, ToolCall* call) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) return false;
  call->name = j["name"].get<std::string>();
  if (!j.contains("arguments") || j["arguments"].is_null()) {
    call->arguments = "{}";
  } else if (j["arguments"].is_object()) {
    call->arguments = j["arguments"].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else if (j["arguments"].is_string()) {
    call->arguments = j["arguments"].get<std::string>();
  } else {
    return false;
  }
  return true;
}

}  // namespace

ToolCallFormat tool_call_format(const std::string& template_text) {
  return template_text.find(kOpen) != std::string::npos ? ToolCallFormat::kHermes
                                                        : ToolCallFormat::kNone;
}

ToolCallMarkup tool_call_markup(ToolCallFormat format) {
  if (format == ToolCallFormat::kNone) return {};
  return {std::string(kOpen) + "\n", "\n" + std::string(kClose)};
}

ParsedToolCalls parse_tool_calls(const std::string& text, ToolCallFormat format) {
  ParsedToolCalls out;
  if (format == ToolCallFormat::kNone || text.find(kOpen) == std::string::npos) {
    out.content = trimmed(text);
    return out;
  }
  const std::string open = kOpen, close = kClose;
  size_t at = text.find(open);
  // The text before the first call as written (what a stream sends of it), or none if blank.
  out.content = trimmed(text.substr(0, at)).empty() ? "" : text.substr(0, at);
  while (at < text.size()) {
    const size_t start = text.find(open, at);
    if (start == std::string::npos) break;  // text after the calls is not read (as vLLM)
    const size_t body = start + open.size();
    const size_t end = text.find(close, body);
    ToolCall call;
    if (!read_call(
            trimmed(text.substr(body, end == std::string::npos ? std::string::npos : end - body)),
            &call)) {
      ParsedToolCalls as_text;
      as_text.content = trimmed(text);
      return as_text;
    }
    out.calls.push_back(std::move(call));
    at = end == std::string::npos ? text.size() : end + close.size();
  }
  return out;
}

size_t streamable_prefix(const std::string& text, ToolCallFormat format) {
  if (format == ToolCallFormat::kNone) return text.size();
  const std::string open = kOpen;
  const size_t start = text.find(open);
  if (start != std::string::npos) return start;
  // The longest tail that is a beginning of the opening tag waits for more text.
  for (size_t len = std::min(text.size(), open.size() - 1); len > 0; --len)
    if (text.compare(text.size() - len, len, open, 0, len) == 0) return text.size() - len;
  return text.size();
}

}  // namespace moex::serve
