#include "serve/openai_api.h"

#include <algorithm>
#include <cmath>

#include "core/json_reader.h"
#include "core/spelling.h"
#include "infer/sampler.h"

namespace moex::serve {
namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  ApiError e;
  e.param = param;
  e.message = message;
  throw e;
}

// A field counts as given unless it is absent or null (clients send null for "unset").
bool given(const json& body, const char* field) {
  return body.contains(field) && !body[field].is_null();
}

// o[key] when it is a string, else "" (json::value would throw for another type: a 500).
template <typename Json>
std::string string_or_empty(const Json& o, const char* key) {
  if (!o.is_object()) return "";
  const auto it = o.find(key);
  return it != o.end() && it->is_string() ? it->template get<std::string>() : "";
}

const char* type_name(const json& v) {
  return v.type_name();  // "null", "string", "number", "array", ...
}

double number_in(const json& body, const char* field, double fallback, double lo, double hi,
                 bool lo_open) {
  if (!given(body, field)) return fallback;
  const json& v = body[field];
  if (!v.is_number())
    bad(field, std::string("'") + field + "' must be a number, got " + type_name(v));
  const double x = v.get<double>();
  auto str = [](double bound) { return json(bound).dump(); };  // 2.0 reads "2.0", not "2.00"
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    bad(field, std::string("'") + field + "' must be in " + (lo_open ? "(" : "[") + str(lo) + ", " +
                   str(hi) + "], got " + v.dump());
  return x;
}

std::optional<int64_t> integer(const json& body, const char* field) {
  if (!given(body, field)) return std::nullopt;
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
    if (!part.is_object() || string_or_empty(part, "type") != "text" || !part.contains("text") ||
        !part["text"].is_string())
      bad(param, "'" + param + "' parts must be {\"type\": \"text\", \"text\": \"...\"}");
    text += part["text"].get<std::string>();
  }
  return text;
}

bool flag(const json& body, const char* field) {
  if (!given(body, field)) return false;
  if (!body[field].is_boolean()) bad(field, std::string("'") + field + "' must be a boolean");
  return body[field].get<bool>();
}

// Token ids of one prompt given as a list of integers.
std::vector<int32_t> token_ids(const json& list, const std::string& param) {
  std::vector<int32_t> ids;
  for (const json& t : list) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
      bad(param, "'" + param + "' token ids must be integers in [0, 2^31)");
    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  return ids;
}

// Completions' prompt: a string, a list of token ids, or a batch: a list of strings or of token
// id lists (one choice group per prompt, as OpenAI answers them).
std::vector<Prompt> read_prompts(const json& body) {
  if (!body.contains("prompt")) bad("prompt", "'prompt' is required");
  const json& p = body["prompt"];
  const char* shape =
      "'prompt' must be a string, a list of token ids, or a list of strings or of token id lists";
  std::vector<Prompt> prompts;
  if (p.is_string()) {
    prompts.push_back({p.get<std::string>(), {}});
  } else if (!p.is_array() || p.empty()) {
    bad("prompt", shape);
  } else if (p[0].is_number()) {
    prompts.push_back({std::nullopt, token_ids(p, "prompt")});
  } else {
    if (static_cast<int64_t>(p.size()) > kMaxChoices)
      bad("prompt", "at most " + std::to_string(kMaxChoices) + " prompts in one request, got " +
                        std::to_string(p.size()));
    for (size_t i = 0; i < p.size(); ++i) {
      const std::string param = "prompt[" + std::to_string(i) + "]";
      if (p[i].is_string())
        prompts.push_back({p[i].get<std::string>(), {}});
      else if (p[i].is_array() && !p[i].empty())
        prompts.push_back({std::nullopt, token_ids(p[i], param)});
      else
        bad(param, shape);
    }
  }
  return prompts;
}

// Fields whose effect moex does not build: accepted at their neutral values (clients send those
// by default), a 400 naming the field otherwise, so that no client gets an answer that silently
// ignored what it asked for.
// The fields a request may carry: OpenAI's, and the vLLM extensions that moex reads or refuses by
// name. Those asking for what moex does not build are refused below (refuse_unbuilt_options);
// those that cannot change the answer (user, metadata, store, service_tier, prompt_cache_key,
// prompt_cache_retention, safety_identifier) are accepted and unused. Any other field is refused, as OpenAI refuses it:
// a typo such as 'max_token' would otherwise run the request on the default without a word.
const std::vector<std::string>& known_fields(bool chat) {
  static const std::vector<std::string> completions = {
      "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
      "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix",
      "temperature", "top_p", "user",
      // vLLM's extensions: sampling, and structured output as chat has it
      "top_k", "ignore_eos", "stop_token_ids", "repetition_penalty", "min_p", "min_tokens",
      "response_format", "skip_special_tokens", "spaces_between_special_tokens",
      "include_stop_str_in_output"};
  static const std::vector<std::string> chat_completions = {
      "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
      "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
      "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
      "prompt_cache_retention",
      "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop",
      "store", "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
      "top_p", "user", "verbosity", "web_search_options",
      // vLLM's extensions: sampling, template variables, and options held at their defaults
      "top_k", "ignore_eos", "stop_token_ids", "repetition_penalty", "min_p", "min_tokens",
      "chat_template_kwargs", "add_generation_prompt", "continue_final_message", "echo",
      "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output"};
  return chat ? chat_completions : completions;
}

void refuse_unknown_fields(const json& body, bool chat) {
  const std::vector<std::string>& known = known_fields(chat);
  for (auto it = body.begin(); it != body.end(); ++it)
    if (std::find(known.begin(), known.end(), it.key()) == known.end())
      bad(it.key(), "unrecognized request argument '" + it.key() + "' for " +
                        (chat ? "/v1/chat/completions" : "/v1/completions") +
                        did_you_mean(it.key(), known));
}

void refuse_unbuilt_options(const json& body, bool chat, int64_t n) {
  auto refuse = [](const char* field, const std::string& what) {
    bad(field, std::string("'") + field + "': " + what + " is not supported by moex serve");
  };
  if (!chat && given(body, "best_of") &&
      !(body["best_of"].is_number_integer() && body["best_of"].get<int64_t>() == n))
    refuse("best_of", "best_of other than n");
  if (!chat && given(body, "suffix") &&
      !(body["suffix"].is_string() && body["suffix"].get<std::string>().empty()))
    refuse("suffix", "a suffix (insertion)");
  // vLLM's options that moex holds at their defaults: what the server does (special tokens left
  // out of the text, stop strings too, the generation prompt added; a chat answer never echoes
  // or continues the last message).
  for (const auto& [field, neutral] :
       std::vector<std::pair<const char*, bool>>{{"skip_special_tokens", true},
                                                 {"spaces_between_special_tokens", true},
                                                 {"include_stop_str_in_output", false},
                                                 {"add_generation_prompt", true},
                                                 {"continue_final_message", false}}) {
    if (given(body, field) && !(body[field].is_boolean() && body[field].get<bool>() == neutral))
      refuse(field, std::string(field) + " " + (neutral ? "false" : "true"));
  }
  if (chat && given(body, "echo") && !(body["echo"].is_boolean() && !body["echo"].get<bool>()))
    refuse("echo", "echo in a chat answer");
  // vLLM's sampling extensions that moex does not build.
  if (given(body, "min_p") && !(body["min_p"].is_number() && body["min_p"].get<double>() == 0.0))
    refuse("min_p", "min_p sampling");
  if (given(body, "min_tokens") &&
      !(body["min_tokens"].is_number_integer() && body["min_tokens"].get<int64_t>() == 0))
    refuse("min_tokens", "a minimum number of tokens");
  if (!chat) return;
  if (given(body, "modalities") && body["modalities"] != json::array({"text"}))
    refuse("modalities", "output other than text");
  if (given(body, "prediction")) refuse("prediction", "a predicted output");
  if (given(body, "audio")) refuse("audio", "audio output");
  if (given(body, "functions") && !(body["functions"].is_array() && body["functions"].empty()))
    refuse("functions", "calling functions");
  if (given(body, "function_call") && body["function_call"] != "none" &&
      body["function_call"] != "auto")
    refuse("function_call", "calling functions (the deprecated form of tool_choice)");
  // Both shape the answer of reasoning models, which moex does not steer.
  if (given(body, "reasoning_effort")) refuse("reasoning_effort", "a reasoning effort");
  if (given(body, "verbosity")) refuse("verbosity", "a verbosity level");
  if (given(body, "web_search_options")) refuse("web_search_options", "web search");
}

// Completions: logprobs is the number of alternatives (0 still asks for the chosen tokens'; false
// reads as absent). Chat: logprobs is a boolean and top_logprobs the number, which needs it.
int64_t read_logprobs(const json& body, bool chat) {
  const std::string range = "[0, " + std::to_string(infer::kMaxTopLogprobs) + "]";
  auto count = [&](const char* field) -> int64_t {
    const auto n = integer(body, field);
    if (*n < 0 || *n > infer::kMaxTopLogprobs)
      bad(field,
          std::string("'") + field + "' must be in " + range + ", got " + std::to_string(*n));
    return *n;
  };
  if (!chat) {
    if (!given(body, "logprobs") ||
        (body["logprobs"].is_boolean() && !body["logprobs"].get<bool>()))
      return -1;
    return count("logprobs");
  }
  const bool on = flag(body, "logprobs");
  if (!given(body, "top_logprobs")) return on ? 0 : -1;
  const int64_t top = count("top_logprobs");
  if (!on && top > 0) bad("top_logprobs", "'top_logprobs' needs 'logprobs' to be true");
  return on ? top : -1;
}

// logit_bias: {"token id": bias}; the ids are checked against the vocabulary by the server.
std::vector<std::pair<int32_t, float>> read_logit_bias(const json& body) {
  std::vector<std::pair<int32_t, float>> out;
  if (!given(body, "logit_bias")) return out;
  const json& b = body["logit_bias"];
  if (!b.is_object())
    bad("logit_bias", "'logit_bias' must be an object mapping token ids to biases");
  if (b.size() > kMaxLogitBias)
    bad("logit_bias", "at most " + std::to_string(kMaxLogitBias) + " 'logit_bias' entries, got " +
                          std::to_string(b.size()));
  for (auto it = b.begin(); it != b.end(); ++it) {
    const std::string& key = it.key();
    const bool digits = !key.empty() && key.size() <= 10 &&
                        key.find_first_not_of("0123456789") == std::string::npos;
    const long long token = digits ? std::stoll(key) : -1;  // ten digits at most: no overflow
    if (token < 0 || token > INT32_MAX)
      bad("logit_bias",
          "'logit_bias' keys must be token ids (integers as strings), got \"" + key + "\"");
    const json& v = it.value();
    if (!v.is_number() || !std::isfinite(v.get<double>()) || std::fabs(v.get<double>()) > 100)
      bad("logit_bias", "'logit_bias' values must be numbers in [-100, 100], got " + v.dump() +
                            " for token " + key);
    out.emplace_back(static_cast<int32_t>(token), v.get<float>());
  }
  return out;
}

// Both endpoints (vLLM takes response_format on completions too): the schema the answer must
// match, or null for plain text.
std::shared_ptr<const infer::JsonSchema> read_response_format(const json& body) {
  if (!given(body, "response_format")) return nullptr;
  const json& f = body["response_format"];
  const std::string type = f.is_object() && f.contains("type") && f["type"].is_string()
                               ? f["type"].get<std::string>()
                               : "";
  if (type == "text") return nullptr;
  if (type == "json_object") return infer::JsonSchema::any_object();
  if (type != "json_schema")
    bad("response_format",
        "'response_format' must be {\"type\": \"text\"}, {\"type\": "
        "\"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": "
        "{\"name\": ..., \"schema\": {...}}}");
  if (!f.contains("json_schema") || !f["json_schema"].is_object() ||
      !f["json_schema"].contains("schema"))
    bad("response_format", "'response_format.json_schema.schema' is required");
  try {
    return infer::JsonSchema::compile(f["json_schema"]["schema"],
                                      "response_format.json_schema.schema");
  } catch (const Error& e) {
    bad("response_format", e.message());
  }
}

// tools: [{"type": "function", "function": {"name", "description"?, "parameters"?}}], offered to
// the model unless tool_choice is "none". tool_choice "required" or {"type": "function",
// "function": {"name": ...}} forces a call (of any tool, or of that one): `forced` gets the
// call's schema and `named` whether one function was named. The tools are read again from body_text
// in their own key order (json sorts keys): a template writes them with tojson, and models learned
// them in the order clients send (type, then function's name, description, parameters).
nlohmann::ordered_json read_tools(const json& body, const std::string& body_text,
                                  std::shared_ptr<const infer::JsonSchema>* forced,
                                  bool* one_named) {
  nlohmann::ordered_json tools = nlohmann::ordered_json::array();
  if (given(body, "tools")) {
    if (!body["tools"].is_array()) bad("tools", "'tools' must be a list of function tools");
    const nlohmann::ordered_json listed = nlohmann::ordered_json::parse(body_text)["tools"];
    for (size_t i = 0; i < listed.size(); ++i) {
      const auto& t = listed[i];
      const std::string param = "tools[" + std::to_string(i) + "]";
      if (!t.is_object() || string_or_empty(t, "type") != "function" || !t.contains("function") ||
          !t["function"].is_object() || !t["function"].contains("name") ||
          !t["function"]["name"].is_string() || t["function"]["name"].get<std::string>().empty())
        bad(param,
            "'" + param + "' must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
      const auto& f = t["function"];
      if (f.contains("parameters") && !f["parameters"].is_null() && !f["parameters"].is_object())
        bad(param, "'" + param + ".function.parameters' must be a JSON Schema object");
      tools.push_back(t);
    }
  }
  std::string choice = "auto", named;
  if (given(body, "tool_choice")) {
    const auto& c = body["tool_choice"];
    const char* shape =
        "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": "
        "\"function\", \"function\": {\"name\": ...}}";
    if (c.is_string()) {
      choice = c.get<std::string>();
      if (choice != "none" && choice != "auto" && choice != "required") bad("tool_choice", shape);
    } else if (string_or_empty(c, "type") == "function" && c.contains("function") &&
               c["function"].is_object() && c["function"].contains("name") &&
               c["function"]["name"].is_string()) {
      choice = "named";
      named = c["function"]["name"].get<std::string>();
    } else {
      bad("tool_choice", shape);
    }
  }
  if (choice == "none") tools.clear();
  if (choice != "required" && choice != "named") return tools;
  if (tools.empty()) bad("tool_choice", "'tool_choice' forces a call, but no tools are given");
  std::vector<infer::JsonSchema::Tool> callable;
  for (size_t i = 0; i < tools.size(); ++i) {
    const auto& f = tools[i]["function"];
    const std::string name = f["name"].get<std::string>();
    if (choice == "named" && name != named) continue;
    const json parameters = f.contains("parameters") ? json(f["parameters"]) : json();
    callable.push_back({name, parameters, "tools[" + std::to_string(i) + "].function.parameters"});
  }
  if (callable.empty())
    bad("tool_choice",
        "'tool_choice' names the function " + json(named).dump() + ", which is not in 'tools'");
  if (callable.size() > static_cast<size_t>(infer::JsonSchema::kMaxMembers))
    bad("tool_choice", "'tool_choice' \"required\" with more than " +
                           std::to_string(infer::JsonSchema::kMaxMembers) +
                           " tools is not supported; name one");
  *one_named = choice == "named";
  try {
    *forced = infer::JsonSchema::tool_call(callable);
  } catch (const Error& e) {
    bad("tools", e.message());
  }
  return tools;
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
  refuse_unknown_fields(body, chat);
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
          msg.role != "developer" && msg.role != "tool" && msg.role != "function")
        bad(param + ".role", "unknown role '" + msg.role + "'");
      // OpenAI's older names: templates know system and tool.
      if (msg.role == "developer") msg.role = "system";
      if (msg.role == "function") msg.role = "tool";
      // Only an assistant turn may leave out its content (one that calls tools).
      if (msg.role != "assistant" && (!m.contains("content") || m["content"].is_null()))
        bad(param + ".content",
            "'" + param + ".content' is required for a " + msg.role + " message");
      msg.content = content_text(m.contains("content") ? m["content"] : json(nullptr), i);
      for (auto it = m.begin(); it != m.end(); ++it)
        if (it.key() != "role" && it.key() != "content") msg.extra[it.key()] = it.value();
      // OpenAI sends a call's arguments as JSON text; templates write them with tojson, as
      // transformers expects them: an object.
      if (msg.extra.contains("tool_calls") && !msg.extra["tool_calls"].is_null() &&
          !msg.extra["tool_calls"].is_array())
        bad(param + ".tool_calls", "'" + param + ".tool_calls' must be a list");
      if (msg.extra.contains("tool_calls") && msg.extra["tool_calls"].is_array())
        for (auto& call : msg.extra["tool_calls"]) {
          if (!call.is_object() || !call.contains("function") || !call["function"].is_object())
            bad(param + ".tool_calls", "'" + param +
                                           ".tool_calls' entries must be {\"type\": \"function\", "
                                           "\"function\": {\"name\", \"arguments\"}}");
          auto& args = call["function"]["arguments"];
          // Text nested past the body's own limit stays text (a value that deep would overflow
          // the stack when copied).
          const std::string text = args.is_string() ? args.get<std::string>() : "";
          if (args.is_string() &&
              json_nesting_within(text.data(), text.data() + text.size(), kMaxDepth)) {
            auto parsed = nlohmann::ordered_json::parse(text, nullptr, false);
            if (parsed.is_object()) args = std::move(parsed);
          }
        }
      r.messages.push_back(std::move(msg));
    }
  } else {
    r.prompts = read_prompts(body);
    r.echo = flag(body, "echo");
  }

  if (const auto n = integer(body, "n")) {
    if (*n < 1 || *n > kMaxChoices)
      bad("n",
          "'n' must be in [1, " + std::to_string(kMaxChoices) + "], got " + std::to_string(*n));
    r.n = *n;
  }
  const int64_t prompts = chat ? 1 : static_cast<int64_t>(r.prompts.size());
  if (prompts * r.n > kMaxChoices)
    bad(chat ? "n" : "prompt", std::to_string(prompts) + " prompts x n = " + std::to_string(r.n) +
                                   " asks for " + std::to_string(prompts * r.n) +
                                   " choices; at most " + std::to_string(kMaxChoices) +
                                   " in one request");
  // Chat's newer name wins when it is set (a client may send both, the other as null).
  if (chat && given(body, "max_completion_tokens")) r.max_tokens_field = "max_completion_tokens";
  const std::string& max_field = r.max_tokens_field;
  const auto max_tokens = integer(body, max_field.c_str());
  if (max_tokens && *max_tokens < 1)
    bad(max_field, "'" + max_field + "' must be >= 1, got " + std::to_string(*max_tokens));
  r.max_tokens = max_tokens;
  r.temperature = number_in(body, "temperature", 1.0, 0.0, 2.0, false);
  r.top_p = number_in(body, "top_p", 1.0, 0.0, 1.0, true);
  r.seed = integer(body, "seed");
  if (given(body, "stop")) {
    const json& s = body["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= kMaxStopStrings) {
      for (const json& x : s) {
        if (!x.is_string()) bad("stop", "'stop' entries must be strings");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or a list of at most " +
                      std::to_string(kMaxStopStrings) + " strings");
    }
    for (const std::string& x : r.stop)
      if (x.empty()) bad("stop", "'stop' strings must not be empty");
  }
  r.stream = flag(body, "stream");
  if (given(body, "stream_options")) {
    const json& so = body["stream_options"];
    if (!so.is_object()) bad("stream_options", "'stream_options' must be an object");
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed with 'stream': true");
    // include_obfuscation asks for random padding fields in chunks: moex sends none.
    for (auto it = so.begin(); it != so.end(); ++it)
      if (it.key() != "include_usage" && it.key() != "include_obfuscation")
        bad("stream_options", "'stream_options." + it.key() + "' is not a field moex reads");
    if (given(so, "include_usage")) {
      if (!so["include_usage"].is_boolean())
        bad("stream_options", "'stream_options.include_usage' must be a boolean");
      r.include_usage_in_stream = so["include_usage"].get<bool>();
    }
  }
  std::shared_ptr<const infer::JsonSchema> forced;
  bool one_named = false;
  if (chat) r.tools = read_tools(body, body_text, &forced, &one_named);
  if (chat && given(body, "chat_template_kwargs")) {
    const json& kwargs = body["chat_template_kwargs"];
    if (!kwargs.is_object())
      bad("chat_template_kwargs", "'chat_template_kwargs' must be an object of template variables");
    for (auto it = kwargs.begin(); it != kwargs.end(); ++it) {
      const std::string& key = it.key();
      const bool special_token = key.size() > 6 && key.compare(key.size() - 6, 6, "_token") == 0;
      if (key == "messages" || key == "tools" || key == "add_generation_prompt" || special_token)
        bad("chat_template_kwargs", "'chat_template_kwargs." + key +
                                        "' is set by the request and the model, not by the client");
      r.template_kwargs[key] = nlohmann::ordered_json::parse(it.value().dump());
    }
  }
  // Parallel calls are allowed unless the client says false (OpenAI's default).
  const bool parallel = !given(body, "parallel_tool_calls") || flag(body, "parallel_tool_calls");
  // vLLM's extensions that moex builds: top_k (-1 or 0: no limit), ignore_eos, stop_token_ids.
  if (const auto k = integer(body, "top_k")) {
    if (*k < -1)
      bad("top_k", "'top_k' must be >= -1 (-1 or 0: no limit), got " + std::to_string(*k));
    r.top_k = std::max<int64_t>(*k, 0);
  }
  r.ignore_eos = flag(body, "ignore_eos");
  if (given(body, "stop_token_ids")) {
    if (!body["stop_token_ids"].is_array() || body["stop_token_ids"].size() > kMaxStopStrings)
      bad("stop_token_ids", "'stop_token_ids' must be a list of at most " +
                                std::to_string(kMaxStopStrings) + " token ids");
    r.stop_token_ids = token_ids(body["stop_token_ids"], "stop_token_ids");
  }
  r.logprobs = read_logprobs(body, chat);
  r.logit_bias = read_logit_bias(body);
  r.presence_penalty = number_in(body, "presence_penalty", 0.0, -2.0, 2.0, false);
  r.frequency_penalty = number_in(body, "frequency_penalty", 0.0, -2.0, 2.0, false);
  r.repetition_penalty = number_in(body, "repetition_penalty", 1.0, 0.0, 10.0, true);
  refuse_unbuilt_options(body, chat, r.n);
  r.schema = read_response_format(body);
  // A JSON answer forces '{' first, so a tool call could never be written.
  if (r.schema && !r.tools.empty())
    bad("response_format",
        "'response_format' json_object or json_schema cannot be combined "
        "with tools");
  if (forced) {
    r.schema = forced;
    r.forced_tool_call = true;
    r.max_tool_calls = parallel && !one_named ? kMaxForcedToolCalls : 1;
  }
  return r;
}

namespace {

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

json finish_json(const std::string& reason) {
  return reason.empty() ? json(nullptr) : json(reason);
}

}  // namespace

json logprobs_json(const std::vector<LogprobEntry>& entries, bool chat, int64_t offset) {
  auto value = [](const std::optional<float>& x) { return x ? json(*x) : json(nullptr); };
  if (chat) {
    auto bytes = [](const std::string& s) {
      json list = json::array();
      for (unsigned char ch : s) list.push_back(static_cast<int>(ch));
      return list;
    };
    json content = json::array();
    for (const LogprobEntry& e : entries) {
      json top = json::array();
      for (const LogprobEntry::Alternative& a : e.top)
        top.push_back({{"token", a.token}, {"logprob", a.logprob}, {"bytes", bytes(a.bytes)}});
      content.push_back({{"token", e.token},
                         {"logprob", value(e.logprob)},
                         {"bytes", bytes(e.bytes)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
       text_offset = json::array();
  for (const LogprobEntry& e : entries) {
    tokens.push_back(e.token);
    token_logprobs.push_back(value(e.logprob));
    if (e.logprob) {
      json top = json::object();
      for (const LogprobEntry::Alternative& a : e.top)
        if (!top.contains(a.token)) top[a.token] = a.logprob;  // two ids may read the same
      top_logprobs.push_back(std::move(top));
    } else {
      top_logprobs.push_back(nullptr);
    }
    text_offset.push_back(offset);
    if (e.in_text) offset += static_cast<int64_t>(e.token.size());
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top_logprobs)},
          {"text_offset", std::move(text_offset)}};
}

json completion_response(const std::string& id, const std::string& model, int64_t created,
                         const std::vector<Choice>& choices, const Usage& usage, bool chat) {
  json list = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    json choice = {{"index", i}, {"finish_reason", finish_json(choices[i].finish_reason)}};
    if (chat && !choices[i].tool_calls.is_null()) {
      // A turn that calls tools has no content unless the model wrote text beside the calls.
      choice["message"] = {
          {"role", "assistant"},
          {"content", choices[i].text.empty() ? json(nullptr) : json(choices[i].text)},
          {"tool_calls", choices[i].tool_calls}};
    } else if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", choices[i].text}};
    } else
      choice["text"] = choices[i].text;
    choice["logprobs"] = choices[i].logprobs;
    list.push_back(std::move(choice));
  }
  return {{"id", id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", std::move(list)},
          {"usage", usage_json(usage)}};
}

json completion_chunk(const std::string& id, const std::string& model, int64_t created,
                      int64_t index, const std::string& text, const std::string& finish_reason,
                      bool chat, bool first, bool include_usage, const json& logprobs) {
  json choice = {{"index", index}, {"finish_reason", finish_json(finish_reason)}};
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || finish_reason.empty()) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = logprobs;
  json chunk = {{"id", id},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array({choice})}};
  if (include_usage) chunk["usage"] = nullptr;
  return chunk;
}
json tool_calls_json(const std::vector<ToolCall>& calls, const std::string& id_prefix,
                     bool indexed) {
  json list = json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    json call = {{"id", id_prefix + "_" + std::to_string(i)},
                 {"type", "function"},
                 {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
    if (indexed) call["index"] = i;
    list.push_back(std::move(call));
  }
  return list;
}

json tool_calls_chunk(const std::string& id, const std::string& model, int64_t created,
                      int64_t index, const json& calls, bool include_usage) {
  json chunk = completion_chunk(id, model, created, index, "", "", true, false, include_usage);
  chunk["choices"][0]["delta"] = {{"tool_calls", calls}};
  return chunk;
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
