// The OpenAI HTTP API as moex serves it: request bodies of /v1/completions and
// /v1/chat/completions read and checked into plain structs, errors in OpenAI's shape
// ({"error": {"message", "type", "param", "code"}} with a 4xx status), and the response objects
// (whole and streamed chunks). No networking here: server.cpp moves the bytes.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "infer/json_schema.h"
#include "serve/chat_template.h"
#include "serve/tool_calls.h"

namespace moex::serve {

// An error a client caused; `status` is the HTTP status (400, 404, 413, 503, ...).
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field, "" when none
  std::string code;   // e.g. "model_not_found", "context_length_exceeded"; "" when none
  nlohmann::json to_json() const;
};

// One completions prompt: text, or token ids.
struct Prompt {
  std::optional<std::string> text;
  std::vector<int32_t> ids;
};

// Most choices one request may ask for (prompts x n).
constexpr int64_t kMaxChoices = 128;
// Most stop strings one request may give.
constexpr size_t kMaxStopStrings = 64;

struct GenerationRequest {
  bool chat = false;
  std::string model;
  // Completions: one or more prompts (a batch). Chat: the messages.
  std::vector<Prompt> prompts;
  std::vector<ChatMessage> messages;
  int64_t n = 1;                      // choices per prompt; choice index = prompt index * n + j
  bool echo = false;                  // completions: each choice's text starts with its prompt
  std::optional<int64_t> max_tokens;  // absent: as much as the context allows (chat) or 16
  std::string max_tokens_field = "max_tokens";  // or "max_completion_tokens": what errors name
  double temperature = 1.0;
  double top_p = 1.0;
  std::optional<int64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage_in_stream = false;  // stream_options.include_usage
  // Log-probabilities: -1 none, else the alternatives reported per token (completions'
  // `logprobs`; chat's `top_logprobs` once `logprobs` is true). With echo, the prompt's too.
  int64_t logprobs = -1;
  std::vector<std::pair<int32_t, float>> logit_bias;   // (token, bias in [-100, 100])
  double presence_penalty = 0, frequency_penalty = 0;  // in [-2, 2]
  double repetition_penalty = 1;                       // vLLM's, in (0, 10]; 1: none
  // Chat: the function tools offered to the model (empty: none, or tool_choice "none"), as the
  // client sent them.
  nlohmann::ordered_json tools = nlohmann::ordered_json::array();
  // Chat: vLLM's chat_template_kwargs, further variables for the template (e.g. Qwen3's
  // {"enable_thinking": false}); an empty object when none.
  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();
  // Not null: the answer is one JSON text matching this schema (infer/json_constraint.h):
  // response_format json_object (any object) or json_schema, or a forced tool call
  // (tool_choice "required" or a named function), which the server writes in its template's
  // markup.
  std::shared_ptr<const infer::JsonSchema> schema;
  bool forced_tool_call = false;
  // A forced call: how many calls the answer may make (tool_choice "required" with
  // parallel_tool_calls, the default, allows kMaxForcedToolCalls; a named function one).
  int max_tool_calls = 1;
  // vLLM's extensions: top-k sampling (0: no limit), generation past the end-of-sequence token,
  // and more stop tokens (ids the server checks against the vocabulary).
  int64_t top_k = 0;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
};

// Most calls a forced answer may make (tool_choice "required", parallel_tool_calls).
constexpr int kMaxForcedToolCalls = 8;

// Most logit_bias entries one request may give.
constexpr size_t kMaxLogitBias = 1024;

// Reads a request body. Throws ApiError naming the field for malformed JSON, wrong types, values
// out of range and missing required fields. Fields that would change the answer in a way moex
// does not build (best_of, suffix, min_p, ...) are refused with a
// 400 when set to anything but their neutral value, never silently ignored; OpenAI's fields that
// cannot change the answer (user, metadata, ...) are accepted, and a field that is not OpenAI's
// (nor a vLLM extension moex reads) is a 400 naming it. logit_bias tokens are checked against the
// vocabulary by the server, which knows it.
GenerationRequest parse_generation_request(const std::string& body, bool chat);

// The finished (non-streamed) response objects and one streamed chunk.
struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
  int64_t cached_tokens = 0;  // prompt tokens whose keys and values the prefix cache held
};
// One token's log-probability as reported: its text, and the most likely alternatives' (most
// likely first). The first prompt token of an echo has none (logprob and top read null).
struct LogprobEntry {
  std::string token;
  std::string bytes;  // the token's own bytes (token may hold U+FFFD for part of a character)
  std::optional<float> logprob;
  struct Alternative {
    std::string token, bytes;
    float logprob = 0;
  };
  std::vector<Alternative> top;
  bool in_text = true;  // false for special tokens (BOS, EOS), which the choice's text leaves out
};
// The `logprobs` object of a choice: completions' {tokens, token_logprobs, top_logprobs,
// text_offset} (text_offset: byte offsets into the choice's text, from `offset` for the first
// entry; an entry not in_text takes no room), or chat's {content: [{token, logprob, bytes,
// top_logprobs}], refusal: null}.
nlohmann::json logprobs_json(const std::vector<LogprobEntry>& entries, bool chat,
                             int64_t offset = 0);

struct Choice {
  std::string text, finish_reason;
  nlohmann::json logprobs;    // null when not asked for
  nlohmann::json tool_calls;  // chat: tool_calls_json of the calls read from the text, or null
};
// OpenAI's tool_calls list: {id: "<id_prefix>_<i>", type: "function", function: {name,
// arguments}}, each with its "index" when `indexed` (stream deltas carry it).
nlohmann::json tool_calls_json(const std::vector<ToolCall>& calls, const std::string& id_prefix,
                               bool indexed);
// A chat chunk whose delta holds tool calls (tool_calls_json with indexed).
nlohmann::json tool_calls_chunk(const std::string& id, const std::string& model, int64_t created,
                                int64_t index, const nlohmann::json& calls, bool include_usage);
nlohmann::json completion_response(const std::string& id, const std::string& model, int64_t created,
                                   const std::vector<Choice>& choices, const Usage& usage,
                                   bool chat);
// A chunk of choice `index` with `text` as its delta (and `logprobs`, logprobs_json of its new
// tokens, or null); finish_reason "" while the generation goes on. A choice's first chat chunk
// carries the assistant role. With include_usage every chunk has "usage": null (the usage chunk
// comes last), as OpenAI sends them.
nlohmann::json completion_chunk(const std::string& id, const std::string& model, int64_t created,
                                int64_t index, const std::string& text,
                                const std::string& finish_reason, bool chat, bool first,
                                bool include_usage,
                                const nlohmann::json& logprobs = nlohmann::json());
// The final usage-only chunk (stream_options.include_usage).
nlohmann::json usage_chunk(const std::string& id, const std::string& model, int64_t created,
                           const Usage& usage, bool chat);

}  // namespace moex::serve
