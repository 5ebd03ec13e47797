// Tool calls read from generated text (serve/tool_calls.h): which templates teach the Hermes
// <tool_call> form (the fixture templates of real models), calls and content split as written
// out here, malformed calls kept as text, and what a stream may send before the text is done;
// and the request side: tools and tool_choice read or refused naming the field.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "infer/json_prefix.h"
#include "serve/openai_api.h"
#include "serve/tool_calls.h"

namespace moex::serve {
namespace {

std::string fixture_template(const std::string& name) {
  std::ifstream in(std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/chat_templates/" + name +
                   ".jinja");
  std::stringstream s;
  s << in.rdbuf();
  EXPECT_FALSE(s.str().empty()) << name;
  return s.str();
}

TEST(ToolCalls, FormatFromTheTemplate) {
  EXPECT_EQ(tool_call_format(fixture_template("qwen2_5_instruct")), ToolCallFormat::kHermes);
  EXPECT_EQ(tool_call_format(fixture_template("qwen3")), ToolCallFormat::kHermes);
  for (const char* name :
       {"mixtral_8x7b_instruct_v0_1", "olmoe_1b_7b_0924_instruct", "qwen1_5_chat", "moex_default"})
    EXPECT_EQ(tool_call_format(fixture_template(name)), ToolCallFormat::kNone) << name;
}

TEST(ToolCalls, CallsAndContentAreSplit) {
  const ToolCallFormat h = ToolCallFormat::kHermes;
  ParsedToolCalls p = parse_tool_calls(
      "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\"}\n</tool_call>",
      h);
  EXPECT_EQ(p.content, "Let me look.\n");  // as a stream sends it
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(nlohmann::json::parse(p.calls[0].arguments),
            nlohmann::json::parse(R"({"city": "Paris", "days": 2})"));
  EXPECT_EQ(p.calls[1].name, "now");
  EXPECT_EQ(p.calls[1].arguments, "{}");
  // Arguments given as JSON text stay that text; a last block cut off by the token limit is read
  // to the end.
  p = parse_tool_calls("<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}", h);
  EXPECT_EQ(p.content, "");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments, "{\"x\": 1}");
  // Plain text, and text without a format, is all content.
  p = parse_tool_calls("  just words \n", h);
  EXPECT_EQ(p.content, "just words");
  EXPECT_TRUE(p.calls.empty());
  p = parse_tool_calls("<tool_call>{\"name\": \"f\"}</tool_call>", ToolCallFormat::kNone);
  EXPECT_EQ(p.content, "<tool_call>{\"name\": \"f\"}</tool_call>");
  EXPECT_TRUE(p.calls.empty());
}

TEST(ToolCalls, MalformedCallsStayText) {
  for (const std::string text :
       {"a <tool_call>{\"name\": 3}</tool_call>", "a <tool_call>not json</tool_call>",
        "a <tool_call>{\"arguments\": {}}</tool_call>",
        "a <tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
        "a <tool_call>{\"name\": \"f\"}</tool_call><tool_call>{\"name\": </tool_call>"}) {
    const ParsedToolCalls p = parse_tool_calls(text, ToolCallFormat::kHermes);
    EXPECT_TRUE(p.calls.empty()) << text;
    EXPECT_EQ(p.content, text);
  }
}

TEST(ToolCalls, StreamsEverythingBeforeAPossibleCall) {
  const ToolCallFormat h = ToolCallFormat::kHermes;
  EXPECT_EQ(streamable_prefix("hello", h), 5u);
  EXPECT_EQ(streamable_prefix("hello <tool", h), 6u);  // "<tool" may begin a call
  EXPECT_EQ(streamable_prefix("hello <", h), 6u);
  EXPECT_EQ(streamable_prefix("hello <b>", h), 9u);
  EXPECT_EQ(streamable_prefix("hi <tool_call>{\"na", h), 3u);
  EXPECT_EQ(streamable_prefix("hi <tool", ToolCallFormat::kNone), 8u);
}

TEST(ToolCalls, RequestToolsAreReadOrRefused) {
  auto body = [](const std::string& fields) {
    return R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], )" + fields + "}";
  };
  auto param_of = [&](const std::string& fields) {
    try {
      parse_generation_request(body(fields), true);
    } catch (const ApiError& e) {
      return e.param;
    }
    return std::string("(accepted)");
  };
  const std::string tool =
      R"({"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}})";
  const GenerationRequest r = parse_generation_request(body(R"("tools": [)" + tool + "]"), true);
  ASSERT_EQ(r.tools.size(), 1u);
  // Key order as sent (the template writes the tools with tojson).
  EXPECT_EQ(r.tools[0]["function"].dump(),
            R"({"name":"f","description":"d","parameters":{"type":"object","properties":{}}})");
  EXPECT_EQ(
      parse_generation_request(body(R"("tools": [)" + tool + R"(], "tool_choice": "auto")"), true)
          .tools.size(),
      1u);
  EXPECT_TRUE(
      parse_generation_request(body(R"("tools": [)" + tool + R"(], "tool_choice": "none")"), true)
          .tools.empty());
  EXPECT_EQ(param_of(R"("tool_choice": {"type": "function", "function": {"name": "f"}})"),
            "tool_choice");  // no tools
  EXPECT_EQ(param_of(R"("tools": [)" + tool + R"(], "tool_choice": "sometimes")"), "tool_choice");
  // Fields of the wrong type are the client's error (a 400), never a 500.
  EXPECT_EQ(param_of(R"("tools": [)" + tool +
                     R"(], "tool_choice": {"type": 5, "function": {"name": "f"}})"),
            "tool_choice");
  EXPECT_EQ(param_of(R"("tools": [{"type": 5}])"), "tools[0]");
  EXPECT_EQ(param_of(R"("tools": [{"type": "function", "function": {"name": "f", "parameters":
                     {"type": "string"}}}], "tool_choice": "required")"),
            "tools");
  // A forced call: the answer must be the call object of the named tool, or of any tool
  // ("required"), in either key order.
  const std::string two = tool + R"(, {"type": "function", "function": {"name": "g",
      "parameters": {"type": "object", "properties": {"n": {"type": "integer"}},
      "required": ["n"]}}})";
  auto matches = [](const GenerationRequest& r, const std::string& text) {
    infer::JsonPrefix p(*r.schema);
    return p.feed(text) && p.complete();
  };
  const GenerationRequest named = parse_generation_request(
      body(R"("tools": [)" + two +
           R"(], "tool_choice": {"type": "function", "function": {"name": "g"}})"),
      true);
  ASSERT_TRUE(named.forced_tool_call && named.schema);
  EXPECT_TRUE(matches(named, R"({"name": "g", "arguments": {"n": 3}})"));
  EXPECT_TRUE(matches(named, R"({"arguments": {"n": 3}, "name": "g"})"));
  EXPECT_FALSE(matches(named, R"({"name": "f", "arguments": {}})"));
  EXPECT_FALSE(matches(named, R"({"name": "g", "arguments": {"n": 1.5}})"));
  EXPECT_FALSE(matches(named, R"({"name": "g", "arguments": {}})"));
  const GenerationRequest any = parse_generation_request(
      body(R"("tools": [)" + two + R"(], "tool_choice": "required")"), true);
  ASSERT_TRUE(any.forced_tool_call && any.schema);
  // Parallel calls unless the client says not; a named function is called once.
  EXPECT_EQ(any.max_tool_calls, kMaxForcedToolCalls);
  EXPECT_EQ(named.max_tool_calls, 1);
  EXPECT_EQ(parse_generation_request(body(R"("tools": [)" + two +
                                          R"(], "tool_choice": "required",
                                          "parallel_tool_calls": false)"),
                                     true)
                .max_tool_calls,
            1);
  EXPECT_EQ(param_of(R"("tools": [)" + two +
                     R"(], "tool_choice": "required", "parallel_tool_calls": "yes")"),
            "parallel_tool_calls");
  EXPECT_TRUE(matches(any, R"({"name": "f", "arguments": {}})"));
  EXPECT_TRUE(matches(any, R"({"arguments": {"n": -2}, "name": "g"})"));
  EXPECT_FALSE(matches(any, R"({"name": "f", "arguments": {"n": 1}})"));
  EXPECT_FALSE(matches(any, R"({"name": "h", "arguments": {}})"));
  EXPECT_EQ(param_of(R"("tools": [)" + two +
                     R"(], "tool_choice": {"type": "function", "function": {"name": "h"}})"),
            "tool_choice");
  EXPECT_EQ(param_of(R"("tools": [{"type": "function", "function": {"name": "f", "parameters":
                     {"type": "object", "properties": {"s": {"type": "string", "pattern": "x"}}}}}],
                     "tool_choice": "required")"),
            "tools");
  EXPECT_EQ(param_of(R"("tools": {"type": "function"})"), "tools");
  EXPECT_EQ(param_of(R"("tools": [{"type": "function", "function": {}}])"), "tools[0]");
  EXPECT_EQ(param_of(R"("tools": [{"type": "retrieval"}])"), "tools[0]");
  EXPECT_EQ(
      param_of(R"("tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}])"),
      "tools[0]");
  EXPECT_EQ(param_of(R"("tools": [)" + tool + R"(], "response_format": {"type": "json_object"})"),
            "response_format");
  // An assistant turn's call arguments (JSON text from the client) reach the template as an
  // object.
  const GenerationRequest history = parse_generation_request(
      R"({"model": "m", "messages": [{"role": "user", "content": "hi"},
          {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
           "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
          {"role": "tool", "tool_call_id": "c1", "content": "2"}]})",
      true);
  EXPECT_EQ(history.messages[1].extra["tool_calls"][0]["function"]["arguments"]["x"], 1);
  try {
    parse_generation_request(
        R"({"model": "m", "messages": [{"role": "assistant", "tool_calls": [3]}]})", true);
    ADD_FAILURE() << "a tool call that is not an object was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "messages[0].tool_calls");
  }
}

// Call arguments nested past the request's depth limit stay text: as an object they would
// overflow the stack when copied or rendered.
TEST(ToolCalls, DeeplyNestedArgumentsStayText) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const nlohmann::json body = {
      {"model", "m"},
      {"messages",
       {{{"role", "assistant"},
         {"tool_calls",
          {{{"type", "function"},
            {"function", {{"name", "f"}, {"arguments", "{\"a\": " + deep + "}"}}}}}}}}}};
  const GenerationRequest r = parse_generation_request(body.dump(), true);
  EXPECT_TRUE(r.messages[0].extra["tool_calls"][0]["function"]["arguments"].is_string());
}

TEST(ToolCalls, ResponsesCarryTheCalls) {
  const std::vector<ToolCall> calls = {{"f", "{\"x\": 1}"}, {"g", "{}"}};
  Choice c;
  c.finish_reason = "tool_calls";
  c.tool_calls = tool_calls_json(calls, "call_7_0", false);
  const nlohmann::json r = completion_response("chatcmpl-7", "m", 0, {c}, Usage{}, true);
  const nlohmann::json& message = r["choices"][0]["message"];
  EXPECT_TRUE(message["content"].is_null());
  EXPECT_EQ(r["choices"][0]["finish_reason"], "tool_calls");
  ASSERT_EQ(message["tool_calls"].size(), 2u);
  EXPECT_EQ(message["tool_calls"][1]["id"], "call_7_0_1");
  EXPECT_EQ(message["tool_calls"][1]["type"], "function");
  EXPECT_EQ(message["tool_calls"][0]["function"]["arguments"], "{\"x\": 1}");
  EXPECT_FALSE(message["tool_calls"][0].contains("index"));
  const nlohmann::json chunk =
      tool_calls_chunk("chatcmpl-7", "m", 0, 0, tool_calls_json(calls, "call_7_0", true), false);
  EXPECT_EQ(chunk["choices"][0]["delta"]["tool_calls"][1]["index"], 1);
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
}

}  // namespace
}  // namespace moex::serve
