// The OpenAI HTTP API as moex serves it: request bodies of /v1/completions and
// /v1/chat/completions read and checked into plain structs, errors in OpenAI's shape
// ({"error": {"message", "type", "param", "code"}} with a 4xx status), and the response objects
// (whole and streamed chunks). No networking here: server.cpp moves the bytes.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "serve/chat_template.h"

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

struct GenerationRequest {
  bool chat = false;
  std::string model;
  // Completions: the prompt as text, or as token ids. Chat: the messages.
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_ids;
  std::vector<ChatMessage> messages;
  std::optional<int64_t> max_tokens;  // absent: as much as the context allows (chat) or 16
  double temperature = 1.0;
  double top_p = 1.0;
  std::optional<int64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage_in_stream = false;  // stream_options.include_usage
};

// Reads a request body. Throws ApiError naming the field for malformed JSON, wrong types, values
// out of range, n != 1 and missing required fields. Unknown fields are ignored, as OpenAI's
// clients send many (user, logprobs, presence_penalty, ...).
GenerationRequest parse_generation_request(const std::string& body, bool chat);

// The finished (non-streamed) response objects and one streamed chunk.
struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};
nlohmann::json completion_response(const std::string& id, const std::string& model,
                                   int64_t created, const std::string& text,
                                   const std::string& finish_reason, const Usage& usage,
                                   bool chat);
// A chunk with `text` as its delta; finish_reason "" while the generation goes on. The first
// chat chunk carries the assistant role.
nlohmann::json completion_chunk(const std::string& id, const std::string& model, int64_t created,
                                const std::string& text, const std::string& finish_reason,
                                bool chat, bool first);
// The final usage-only chunk (stream_options.include_usage).
nlohmann::json usage_chunk(const std::string& id, const std::string& model, int64_t created,
                           const Usage& usage, bool chat);

}  // namespace moex::serve
