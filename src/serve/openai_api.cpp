#include "serve/openai_api.h"

#include <cmath>

#include "core/json_reader.h"

namespace moex::serve {
namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  ApiError e;
  e.param = param;
  e.message = message;
  throw e;
}

const char* type_name(const json& v) {
  return v.type_name();  // "null", "string", "number", "array", ...
}

double number_in(const json& body, const char* field, double fallback, double lo, double hi,
                 bool lo_open) {
  if (!body.contains(field) || body[field].is_null()) return fallback;
  const json& v = body[field];
  if (!v.is_number())
    bad(field, std::string("'") + field + "' must be a number, got " + type_name(v));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    bad(field, std::string("'") + field + "' must be in " + (lo_open ? "(" : "[") +
                   std::to_string(lo).substr(0, 4) + ", " + std::to_string(hi).substr(0, 4) +
                   "], got " + v.dump());
  return x;
}

std::optional<int64_t> integer(const json& body, const char* field) {
  if (!body.contains(field) || body[field].is_null()) return std::nullopt;
  const json& v = body[field];
  if (!v.is_number_integer())
    bad(field, std::string("'") + field + "' must be an integer, got " + v.dump());
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    bad(field, std::string("'") + field + "' is too large: " + v.dump());
  return v.get<int64_t>();
}

// Chat content: a string, or OpenAI's list of parts of which only text parts are read.
std::string content_text(const json& content, size_t index) {
  const std::string param = "messages[" + std::to_string(index) + "].content";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_null()) return "";
  if (!content.is_array()) bad(param, "'" + param + "' must be a string or a list of parts");
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string())
      bad(param, "'" + param + "' parts must be {\"type\": \"text\", \"text\": \"...\"}");
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

json ApiError::to_json() const {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

GenerationRequest parse_generation_request(const std::string& body_text, bool chat) {
  json body;
  // Deeper nesting than any request needs is refused before parsing: converting or freeing a
  // value tens of thousands of levels deep recurses past the thread's stack.
  constexpr int kMaxDepth = 64;
  try {
    body = parse_json(body_text, "the request body", "not valid JSON", kMaxDepth);
  } catch (const Error& e) {
    bad("", e.message());
  }
  if (!body.is_object()) bad("", "the request body must be a JSON object");
  GenerationRequest r;
  r.chat = chat;
  if (!body.contains("model") || !body["model"].is_string())
    bad("model", "'model' is required and must be a string");
  r.model = body["model"].get<std::string>();

  if (chat) {
    if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
      bad("messages", "'messages' is required and must be a non-empty list");
    const json& messages = body["messages"];
    for (size_t i = 0; i < messages.size(); ++i) {
      const json& m = messages[i];
      const std::string param = "messages[" + std::to_string(i) + "]";
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        bad(param, "'" + param + "' must be an object with a string 'role'");
      ChatMessage msg;
      msg.role = m["role"].get<std::string>();
      if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" &&
          msg.role != "developer" && msg.role != "tool")
        bad(param + ".role", "unknown role '" + msg.role + "'");
      if (msg.role == "developer") msg.role = "system";
      msg.content = content_text(m.contains("content") ? m["content"] : json(nullptr), i);
      for (auto it = m.begin(); it != m.end(); ++it)
        if (it.key() != "role" && it.key() != "content") msg.extra[it.key()] = it.value();
      r.messages.push_back(std::move(msg));
    }
  } else {
    if (!body.contains("prompt")) bad("prompt", "'prompt' is required");
    const json& p = body["prompt"];
    if (p.is_string()) {
      r.prompt_text = p.get<std::string>();
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      r.prompt_text = p[0].get<std::string>();
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
      for (const json& t : p) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
          bad("prompt", "'prompt' token ids must be integers in [0, 2^31)");
        r.prompt_ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
      }
    } else {
      bad("prompt", "'prompt' must be a string, a list of one string, or a list of token ids");
    }
  }

  if (const auto n = integer(body, "n"); n && *n != 1) bad("n", "only n = 1 is supported");
  auto max_tokens = integer(body, chat && body.contains("max_completion_tokens")
                                      ? "max_completion_tokens"
                                      : "max_tokens");
  if (max_tokens && *max_tokens < 1)
    bad("max_tokens", "'max_tokens' must be >= 1, got " + std::to_string(*max_tokens));
  r.max_tokens = max_tokens;
  r.temperature = number_in(body, "temperature", 1.0, 0.0, 2.0, false);
  r.top_p = number_in(body, "top_p", 1.0, 0.0, 1.0, true);
  r.seed = integer(body, "seed");
  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& s = body["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4) {
      for (const json& x : s) {
        if (!x.is_string()) bad("stop", "'stop' entries must be strings");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or a list of at most 4 strings");
    }
    for (const std::string& x : r.stop)
      if (x.empty()) bad("stop", "'stop' strings must not be empty");
  }
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean()) bad("stream", "'stream' must be a boolean");
    r.stream = body["stream"].get<bool>();
  }
  if (body.contains("stream_options") && body["stream_options"].is_object()) {
    const json& so = body["stream_options"];
    if (so.contains("include_usage") && so["include_usage"].is_boolean())
      r.include_usage_in_stream = so["include_usage"].get<bool>();
  }
  return r;
}

namespace {

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json finish_json(const std::string& reason) {
  return reason.empty() ? json(nullptr) : json(reason);
}

}  // namespace

json completion_response(const std::string& id, const std::string& model, int64_t created,
                         const std::string& text, const std::string& finish_reason,
                         const Usage& usage, bool chat) {
  json choice = {{"index", 0}, {"finish_reason", finish_json(finish_reason)}};
  if (chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
    choice["logprobs"] = nullptr;
  } else {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  }
  return {{"id", id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})},
          {"usage", usage_json(usage)}};
}

json completion_chunk(const std::string& id, const std::string& model, int64_t created,
                      const std::string& text, const std::string& finish_reason, bool chat,
                      bool first) {
  json choice = {{"index", 0}, {"finish_reason", finish_json(finish_reason)}};
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || finish_reason.empty()) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  return {{"id", id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})}};
}

json usage_chunk(const std::string& id, const std::string& model, int64_t created,
                 const Usage& usage, bool chat) {
  return {{"id", id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array()},
          {"usage", usage_json(usage)}};
}

}  // namespace moex::serve
