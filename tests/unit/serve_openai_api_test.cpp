// Request parsing (serve/openai_api.h): each bad field is a 400 that names it; options moex does
// not build are refused unless they hold their neutral value; batches of prompts and n choices.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "serve/openai_api.h"

namespace moex::serve {
namespace {

// A request of one user message (chat) or prompt "x", with `fields` added.
std::string body_of(const std::string& fields, bool chat) {
  return std::string(R"({"model": "m", )") +
         (chat ? R"("messages": [{"role": "user", "content": "hi"}])" : R"("prompt": "x")") +
         (fields.empty() ? "" : ", " + fields) + "}";
}

// The field a 400 names for that request, or "(accepted)".
std::string param_of(const std::string& fields, bool chat) {
  try {
    parse_generation_request(body_of(fields, chat), chat);
  } catch (const ApiError& e) {
    return e.param;
  }
  return std::string("(accepted)");
}

TEST(OpenAiApi, ParsingNamesTheField) {
  auto param_of = [](const std::string& body, bool chat) {
    try {
      parse_generation_request(body, chat);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      return e.param;
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(param_of("{", false), "");
  EXPECT_EQ(param_of(R"({"prompt": "x"})", false), "model");
  EXPECT_EQ(param_of(R"({"model": "m"})", false), "prompt");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": {"a": 1}})", false), "prompt");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "x", "max_tokens": 0})", false), "max_tokens");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "x", "max_tokens": 1.5})", false), "max_tokens");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "x", "temperature": 3})", false), "temperature");
  std::string many_stops = R"({"model": "m", "prompt": "x", "stop": [)";
  for (size_t i = 0; i <= kMaxStopStrings; ++i)
    many_stops += (i ? ", " : "") + std::string("\"s\"");
  EXPECT_EQ(param_of(many_stops + "]}", false), "stop");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "x", "stream": "yes"})", false), "stream");
  EXPECT_EQ(param_of(R"({"model": "m", "messages": []})", true), "messages");
  EXPECT_EQ(param_of(R"({"model": "m", "messages": [{"role": "user", "content": 3}]})", true),
            "messages[0].content");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": [1, 2, 3], "seed": 7, "user": "u"})", false),
            "(accepted)");
  const GenerationRequest r = parse_generation_request(
      R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
          {"type": "text", "text": "b"}]}], "max_completion_tokens": 5, "stop": "x"})",
      true);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].content, "ab");
  EXPECT_EQ(r.max_tokens.value_or(-1), 5);
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
}

// A body nested tens of thousands of levels deep is a 400, not a stack overflow (the chat
// messages are converted recursively); invalid UTF-8 quoted back in an error still serializes.
TEST(OpenAiApi, DeeplyNestedAndInvalidUtf8BodiesAreClearErrors) {
  std::string deep = R"({"model": "m", "messages": [{"role": "user", "content": "hi", "x": )";
  for (int i = 0; i < 30000; ++i) deep += R"({"a": )";
  deep += "1";
  for (int i = 0; i < 30000; ++i) deep += "}";
  deep += "}]}";
  try {
    parse_generation_request(deep, true);
    ADD_FAILURE() << "a 30000-level body was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(e.message.find("levels deep"), std::string::npos) << e.message;
  }
  const std::string bad_utf8 = std::string(R"({"model": "m", "prompt": ")") + "\xff\xfe" + "\"";
  try {
    parse_generation_request(bad_utf8, false);
    ADD_FAILURE() << "invalid UTF-8 was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    const std::string body =
        e.to_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    EXPECT_NE(body.find("not valid JSON"), std::string::npos) << body;
  }
}

// A field that is neither OpenAI's nor a vLLM extension moex reads is a 400 naming it, with the
// field it misspells: a typo must not run the request on a default. Fields that cannot change the
// answer are accepted; those that steer what moex does not build are refused.
TEST(OpenAiApi, UnknownFieldsAreRefusedWithTheirLikelyIntent) {
  auto error_of = [](const std::string& fields, bool chat) {
    try {
      parse_generation_request(body_of(fields, chat), chat);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      return e.param + ": " + e.message;
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(error_of(R"("max_token": 5)", false),
            "max_token: unrecognized request argument 'max_token' for /v1/completions "
            "(did you mean 'max_tokens'?)");
  EXPECT_EQ(error_of(R"("temprature": 0)", true),
            "temprature: unrecognized request argument 'temprature' for /v1/chat/completions "
            "(did you mean 'temperature'?)");
  // Chat's fields are not the completions endpoint's, and an unknown null is still unknown.
  EXPECT_EQ(error_of(R"("tools": [])", false).substr(0, 7), "tools: ");
  EXPECT_EQ(error_of(R"("colour": null)", true),
            "colour: unrecognized request argument 'colour' for /v1/chat/completions");
  for (bool chat : {false, true})
    EXPECT_EQ(error_of(R"("user": "u", "top_k": 3, "min_p": 0, "ignore_eos": false)", chat),
              "(accepted)");
  EXPECT_EQ(error_of(R"("metadata": {"a": "b"}, "store": false, "service_tier": "auto",
                        "prompt_cache_key": "k", "safety_identifier": "s",
                        "function_call": "auto")",
                     true),
            "(accepted)");
  for (const char* unbuilt : {R"("reasoning_effort": "low")", R"("verbosity": "low")",
                              R"("web_search_options": {})", R"("function_call": {"name": "f"})"})
    EXPECT_NE(error_of(unbuilt, true).find("is not supported by moex serve"), std::string::npos)
        << unbuilt;
}

// vLLM's chat_template_kwargs become template variables (never the request's own); its output
// options are accepted at the values moex serves with and refused otherwise.
TEST(OpenAiApi, VllmTemplateVariablesAndOutputOptions) {
  const GenerationRequest r = parse_generation_request(
      body_of(R"("chat_template_kwargs": {"enable_thinking": false, "n": [1]})", true), true);
  EXPECT_EQ(r.template_kwargs.dump(), R"({"enable_thinking":false,"n":[1]})");
  for (const char* bad :
       {R"("chat_template_kwargs": "x")", R"("chat_template_kwargs": {"messages": []})",
        R"("chat_template_kwargs": {"bos_token": "<x>"})"})
    EXPECT_EQ(param_of(bad, true), "chat_template_kwargs") << bad;
  EXPECT_EQ(param_of(R"("chat_template_kwargs": {})", false), "chat_template_kwargs");  // chat only
  for (bool chat : {false, true}) {
    EXPECT_EQ(param_of(R"("skip_special_tokens": true, "spaces_between_special_tokens": true,
                          "include_stop_str_in_output": false)",
                       chat),
              "(accepted)");
    EXPECT_EQ(param_of(R"("skip_special_tokens": false)", chat), "skip_special_tokens");
    EXPECT_EQ(param_of(R"("include_stop_str_in_output": true)", chat),
              "include_stop_str_in_output");
  }
  EXPECT_EQ(param_of(R"("add_generation_prompt": true, "continue_final_message": false,
                        "echo": false)",
                     true),
            "(accepted)");
  EXPECT_EQ(param_of(R"("add_generation_prompt": false)", true), "add_generation_prompt");
  EXPECT_EQ(param_of(R"("echo": true)", true), "echo");
}

// Client defaults of options moex does not build are accepted; any other value is a 400 naming
// the field, never an answer that silently ignored it. Log-probabilities, penalties and
// logit_bias are read, and their bad values are 400s naming them.
TEST(OpenAiApi, UnbuiltOptionsAreRefusedUnlessNeutral) {
  auto read = [&](const std::string& fields, bool chat) {
    return parse_generation_request(body_of(fields, chat), chat);
  };
  for (bool chat : {false, true}) {
    EXPECT_EQ(param_of(std::string(R"("frequency_penalty": 0, "presence_penalty": 0.0,
                          "logit_bias": {}, "logprobs": null, "user": "u", "n": 1)") +
                           (chat ? R"(, "top_logprobs": 0)" : ""),
                       chat),
              "(accepted)");
    const GenerationRequest neutral = read("", chat);
    EXPECT_EQ(neutral.logprobs, -1);
    EXPECT_TRUE(neutral.logit_bias.empty());
    EXPECT_EQ(neutral.presence_penalty, 0.0);
    const GenerationRequest r = read(
        R"("frequency_penalty": 0.5, "presence_penalty": -1, "logit_bias": {"5": 100, "0": -2.5})",
        chat);
    EXPECT_EQ(r.frequency_penalty, 0.5);
    EXPECT_EQ(r.presence_penalty, -1.0);
    ASSERT_EQ(r.logit_bias.size(), 2u);
    std::map<int32_t, float> bias(r.logit_bias.begin(), r.logit_bias.end());
    EXPECT_EQ(bias[5], 100.0f);
    EXPECT_EQ(bias[0], -2.5f);
    EXPECT_EQ(param_of(R"("frequency_penalty": 2.5)", chat), "frequency_penalty");
    EXPECT_EQ(param_of(R"("presence_penalty": "1")", chat), "presence_penalty");
    EXPECT_EQ(param_of(R"("logit_bias": {"5": 101})", chat), "logit_bias");
    EXPECT_EQ(param_of(R"("logit_bias": {"-5": 1})", chat), "logit_bias");
    EXPECT_EQ(param_of(R"("logit_bias": {"five": 1})", chat), "logit_bias");
    EXPECT_EQ(param_of(R"("logit_bias": {"5": "1"})", chat), "logit_bias");
    EXPECT_EQ(param_of(R"("logit_bias": [5])", chat), "logit_bias");
    EXPECT_EQ(param_of(R"("logit_bias": {"99999999999": 1})", chat), "logit_bias");
  }
  // Completions: logprobs counts the alternatives (0: the chosen tokens' only).
  EXPECT_EQ(read(R"("logprobs": 0)", false).logprobs, 0);
  EXPECT_EQ(read(R"("logprobs": 5)", false).logprobs, 5);
  EXPECT_EQ(read(R"("logprobs": false)", false).logprobs, -1);
  EXPECT_EQ(param_of(R"("logprobs": 21)", false), "logprobs");
  EXPECT_EQ(param_of(R"("logprobs": -1)", false), "logprobs");
  EXPECT_EQ(param_of(R"("logprobs": true)", false), "logprobs");
  // Chat: logprobs is a flag and top_logprobs the count, which needs it.
  EXPECT_EQ(read(R"("logprobs": false)", true).logprobs, -1);
  EXPECT_EQ(read(R"("logprobs": true)", true).logprobs, 0);
  EXPECT_EQ(read(R"("logprobs": true, "top_logprobs": 3)", true).logprobs, 3);
  EXPECT_EQ(param_of(R"("top_logprobs": 3)", true), "top_logprobs");
  EXPECT_EQ(param_of(R"("logprobs": true, "top_logprobs": 21)", true), "top_logprobs");
  EXPECT_EQ(param_of(R"("logprobs": 2)", true), "logprobs");
  // vLLM's extensions: top_k, ignore_eos and stop_token_ids are read; the sampling ones moex does
  // not build are refused unless neutral.
  const GenerationRequest ext =
      read(R"("top_k": 5, "ignore_eos": true, "stop_token_ids": [3, 9])", false);
  EXPECT_EQ(ext.top_k, 5);
  EXPECT_TRUE(ext.ignore_eos);
  EXPECT_EQ(ext.stop_token_ids, (std::vector<int32_t>{3, 9}));
  EXPECT_EQ(read(R"("top_k": -1)", false).top_k, 0);
  EXPECT_EQ(param_of(R"("top_k": -2)", false), "top_k");
  EXPECT_EQ(param_of(R"("stop_token_ids": [-1])", false), "stop_token_ids");
  EXPECT_EQ(param_of(R"("min_p": 0, "repetition_penalty": 1.0, "min_tokens": 0)", false),
            "(accepted)");
  EXPECT_EQ(param_of(R"("min_p": 0.1)", false), "min_p");
  EXPECT_EQ(read(R"("repetition_penalty": 1.2)", true).repetition_penalty, 1.2);
  EXPECT_EQ(param_of(R"("repetition_penalty": 0)", true), "repetition_penalty");
  EXPECT_EQ(param_of(R"("min_tokens": 4)", true), "min_tokens");
  EXPECT_EQ(param_of(R"("modalities": ["text"])", true), "(accepted)");
  EXPECT_EQ(param_of(R"("modalities": ["text", "audio"])", true), "modalities");
  EXPECT_EQ(param_of(R"("prediction": {"type": "content", "content": "x"})", true), "prediction");
  // A user turn without content is malformed; an assistant turn that calls tools may have none.
  try {
    parse_generation_request(R"({"model": "m", "messages": [{"role": "user"}]})", true);
    ADD_FAILURE() << "a user message without content was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "messages[0].content");
  }
  EXPECT_EQ(param_of(R"("best_of": 1, "suffix": "", "echo": false)", false), "(accepted)");
  EXPECT_EQ(param_of(R"("best_of": 2, "n": 2)", false), "(accepted)");
  EXPECT_EQ(param_of(R"("best_of": 3)", false), "best_of");
  EXPECT_EQ(param_of(R"("suffix": "end")", false), "suffix");
  EXPECT_EQ(param_of(R"("echo": "yes")", false), "echo");
  const std::string tool = R"([{"type": "function", "function": {"name": "f"}}])";
  EXPECT_EQ(
      param_of(R"("tools": [], "tool_choice": "auto", "response_format": {"type": "text"})", true),
      "(accepted)");
  // Tools are offered to the model or forced (serve_tool_calls_test.cpp).
  EXPECT_EQ(param_of(R"("tools": )" + tool, true), "(accepted)");
  EXPECT_EQ(param_of(R"("tools": )" + tool + R"(, "tool_choice": "auto")", true), "(accepted)");
  EXPECT_EQ(param_of(R"("tools": )" + tool + R"(, "tool_choice": "none")", true), "(accepted)");
  EXPECT_EQ(param_of(R"("tool_choice": "required")", true), "tool_choice");  // no tools
  EXPECT_EQ(param_of(R"("functions": [{"name": "f"}])", true), "functions");
  EXPECT_TRUE(read(R"("response_format": {"type": "json_object"})", true).schema);
  EXPECT_FALSE(read(R"("response_format": {"type": "text"})", true).schema);
  EXPECT_TRUE(read(R"("response_format": {"type": "json_schema", "json_schema": {"name": "x",
                   "schema": {"type": "object"}}})",
                   true)
                  .schema);
  EXPECT_EQ(param_of(R"("response_format": {"type": "json_schema", "json_schema": {}})", true),
            "response_format");
  EXPECT_EQ(param_of(R"("response_format": {"type": "json_schema", "json_schema": {"schema":
                     {"type": "integer", "minimum": 0}}})",
                     true),
            "response_format");
  EXPECT_EQ(param_of(R"("response_format": {"type": "yaml"})", true), "response_format");
  // Completions take response_format too (as vLLM does).
  EXPECT_TRUE(read(R"("response_format": {"type": "json_object"})", false).schema);
  EXPECT_EQ(param_of(R"("response_format": "json")", false), "response_format");
  EXPECT_EQ(param_of(R"("response_format": {})", false), "response_format");
  EXPECT_EQ(param_of(R"("response_format": {"type": "json_schema"})", false), "response_format");
}

TEST(OpenAiApi, BatchesOfPromptsAndChoices) {
  GenerationRequest r =
      parse_generation_request(R"({"model": "m", "prompt": ["a", "b c"], "n": 3})", false);
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[0].text.value_or(""), "a");
  EXPECT_EQ(r.prompts[1].text.value_or(""), "b c");
  EXPECT_EQ(r.n, 3);
  r = parse_generation_request(R"({"model": "m", "prompt": [[1, 2], [3]], "echo": true})", false);
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_FALSE(r.prompts[0].text.has_value());
  EXPECT_EQ(r.prompts[0].ids, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(r.prompts[1].ids, (std::vector<int32_t>{3}));
  EXPECT_TRUE(r.echo);
  r = parse_generation_request(R"({"model": "m", "prompt": [5, 6]})", false);
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].ids, (std::vector<int32_t>{5, 6}));
  auto param_of = [](const std::string& body) {
    try {
      parse_generation_request(body, false);
    } catch (const ApiError& e) {
      return e.param;
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": []})"), "prompt");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": ["a", 3]})"), "prompt[1]");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": [[1], []]})"), "prompt[1]");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": [[1], [-2]]})"), "prompt[1]");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "a", "n": 0})"), "n");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": "a", "n": 129})"), "n");
  EXPECT_EQ(param_of(R"({"model": "m", "prompt": ["a", "b"], "n": 65})"), "prompt");
  // Chat: a null max_completion_tokens leaves max_tokens in force; errors name the key used.
  r = parse_generation_request(R"({"model": "m", "messages": [{"role": "user", "content": "a"}],
                                   "max_completion_tokens": null, "max_tokens": 7})",
                               true);
  EXPECT_EQ(r.max_tokens.value_or(-1), 7);
  EXPECT_EQ(r.max_tokens_field, "max_tokens");
  try {
    parse_generation_request(R"({"model": "m", "messages": [{"role": "user", "content": "a"}],
                                 "max_completion_tokens": 0})",
                             true);
    ADD_FAILURE() << "max_completion_tokens 0 was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "max_completion_tokens");
  }
  // OpenAI's older role names reach the template as the ones templates know.
  r = parse_generation_request(R"({"model": "m", "messages": [{"role": "developer", "content": "a"},
                                   {"role": "function", "name": "f", "content": "1"}]})",
                               true);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].role, "tool");
}

}  // namespace
}  // namespace moex::serve
