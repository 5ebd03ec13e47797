// The chat-template renderer against @huggingface/jinja: real model templates over many
// conversations (fixtures made by tests/reference/chat_templates/make_fixtures.mjs), then each
// construct on small templates with outputs checked by hand, errors, and template loading.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "serve/chat_template.h"

namespace moex::serve {
namespace {

using Json = nlohmann::ordered_json;

const std::string kFixtures = std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/chat_templates/";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string render(const std::string& text, const Json& variables = Json::object()) {
  return ChatTemplate::parse(text, "inline").render_json(variables);
}

// The message of the moex::Error a render throws ("" when it does not throw).
std::string render_error(const std::string& text, const Json& variables = Json::object()) {
  try {
    render(text, variables);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

std::string parse_error(const std::string& text) {
  try {
    ChatTemplate::parse(text, "t.jinja");
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

// ---- real templates, byte-exact against the oracle ----

TEST(ChatTemplateFixtures, MatchHuggingFaceJinjaByteForByte) {
  const Json expected = Json::parse(read_file(kFixtures + "expected.json"));
  size_t renders = 0, errors = 0;
  for (const Json& tpl : expected["templates"]) {
    const std::string file = tpl["file"].get<std::string>();
    const ChatTemplate chat_template = ChatTemplate::parse(read_file(kFixtures + file), file);
    for (const Json& c : tpl["cases"]) {
      const Json& variables = c["variables"];
      const std::string label = file + " / " + c["conversation"].get<std::string>() +
                                (variables["add_generation_prompt"].get<bool>() ? " +generation prompt" : "");
      if (c.contains("output")) {
        std::string actual;
        ASSERT_NO_THROW(actual = chat_template.render_json(variables)) << label;
        EXPECT_EQ(actual, c["output"].get<std::string>()) << label;
        ++renders;
      } else if (c["raised"].get<bool>()) {
        try {
          chat_template.render_json(variables);
          ADD_FAILURE() << label << ": expected raise_exception";
        } catch (const ChatTemplateRaised& e) {
          EXPECT_EQ(e.reason(), c["error"].get<std::string>()) << label;
        }
        ++errors;
      } else {
        EXPECT_THROW(chat_template.render_json(variables), Error) << label;
        ++errors;
      }
    }
  }
  EXPECT_EQ(renders + errors, 192u);
}

// The ChatMessage API renders the same as the JSON variables it stands for.
TEST(ChatTemplateFixtures, ChatMessageApiMatchesOracle) {
  const Json expected = Json::parse(read_file(kFixtures + "expected.json"));
  size_t checked = 0;
  for (const Json& tpl : expected["templates"]) {
    const std::string file = tpl["file"].get<std::string>();
    const ChatTemplate chat_template = ChatTemplate::parse(read_file(kFixtures + file), file);
    for (const Json& c : tpl["cases"]) {
      const Json& variables = c["variables"];
      if (!c.contains("output") || variables.contains("tools") || variables.contains("enable_thinking")) continue;
      bool string_contents = true;
      for (const Json& m : variables["messages"]) string_contents = string_contents && m["content"].is_string();
      if (!string_contents) continue;
      std::vector<ChatMessage> messages;
      for (const Json& m : variables["messages"]) {
        ChatMessage message{m["role"].get<std::string>(), m["content"].get<std::string>(), Json::object()};
        for (auto it = m.begin(); it != m.end(); ++it) {
          if (it.key() != "role" && it.key() != "content") message.extra[it.key()] = it.value();
        }
        messages.push_back(std::move(message));
      }
      std::map<std::string, std::string> tokens;
      for (const char* name : {"bos_token", "eos_token"}) {
        if (variables.contains(name)) tokens[name] = variables[name].get<std::string>();
      }
      EXPECT_EQ(chat_template.render(messages, variables["add_generation_prompt"].get<bool>(), tokens),
                c["output"].get<std::string>())
          << file << " / " << c["conversation"].get<std::string>();
      ++checked;
    }
  }
  EXPECT_GT(checked, 100u);
}

TEST(ChatTemplateFixtures, DefaultTemplateFileIsTheConstant) {
  EXPECT_EQ(read_file(kFixtures + "moex_default.jinja"), std::string(kDefaultChatTemplate));
  const ChatTemplate t = ChatTemplate::parse(kDefaultChatTemplate, "default");
  EXPECT_EQ(t.render({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Bye"}}, true,
                     {{"bos_token", "<s>"}, {"eos_token", "</s>"}}),
            "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.</s>\n<|user|>\nBye\n<|assistant|>\n");
}

// ---- constructs ----

TEST(ChatTemplateConstructs, TextExpressionsAndLiterals) {
  EXPECT_EQ(render("plain text"), "plain text");
  EXPECT_EQ(render("{{ 'a' }}{{ \"b\" }}{{ 1 }}{{ 2.5 }}{{ 3.0 }}{{ -4 }}"), "ab12.53.0-4");
  EXPECT_EQ(render("{{ 'tab\\there\\nnew \\'q\\' \\\"d\\\" \\\\ \\x41\\u00e9' }}"), "tab\there\nnew 'q' \"d\" \\ A\xc3\xa9");
  EXPECT_EQ(render("{{ true }}{{ True }}{{ false }}|{{ none }}{{ None }}|{{ missing }}"), "truetruefalse||");
  EXPECT_EQ(render("{{ [1, 'a', [true, none]] }}"), "[1, \"a\", [true, null]]");
  EXPECT_EQ(render("{{ {'k': 1, 'j': {'x': 'y'}} }}"), "{\"k\": 1, \"j\": {\"x\": \"y\"}}");
  EXPECT_EQ(render("{{ 'con' 'cat' }}"), "concat");
}

TEST(ChatTemplateConstructs, Arithmetic) {
  EXPECT_EQ(render("{{ 1 + 2 }} {{ 7 - 10 }} {{ 3 * 4 }} {{ 7 / 2 }} {{ 8 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }}"),
            "3 -3 12 3.5 4.0 3 -4 1");
  EXPECT_EQ(render("{{ 1.5 + 1 }} {{ 2 ** 3 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }}"), "2.5 8 7 9");
  EXPECT_EQ(render("{{ 'a' + 'b' }} {{ 'n' ~ 1 ~ none is none }} {{ 'x' + 1 }}"), "ab n1true x1");
  EXPECT_EQ(render("{{ [1] + [2, 3] }}"), "[1, 2, 3]");
}

TEST(ChatTemplateConstructs, ComparisonsLogicAndMembership) {
  EXPECT_EQ(render("{{ 1 < 2 }}{{ 2 <= 2 }}{{ 3 > 4 }}{{ 1 == 1.0 }}{{ 'a' != 'b' }}"), "truetruefalsetruetrue");
  EXPECT_EQ(render("{{ 1 and 'x' }} {{ 0 or 'y' }} {{ not [] }} {{ not 'a' }}"), "x y true false");
  EXPECT_EQ(render("{{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }}"),
            "true true true true");
  EXPECT_EQ(render("{{ 'x' in undefined_thing }}"), "false");
  // Undefined is falsy and equal to none, as in @huggingface/jinja.
  EXPECT_EQ(render("{% if missing %}yes{% else %}no{% endif %}{{ missing == none }}"), "notrue");
}

TEST(ChatTemplateConstructs, IfElifElse) {
  const std::string t = "{% if x == 1 %}one{% elif x == 2 %}two{% elif x == 3 %}three{% else %}many{% endif %}";
  EXPECT_EQ(render(t, {{"x", 1}}), "one");
  EXPECT_EQ(render(t, {{"x", 2}}), "two");
  EXPECT_EQ(render(t, {{"x", 3}}), "three");
  EXPECT_EQ(render(t, {{"x", 9}}), "many");
  EXPECT_EQ(render("{{ 'a' if x else 'b' }}{{ 'c' if not x }}", {{"x", false}}), "bc");
}

TEST(ChatTemplateConstructs, ForLoopVariables) {
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ x }}{% if loop.first %}F{% endif %}"
                   "{% if loop.last %}L{% endif %}{{ loop.length }}{{ loop.revindex }}{{ loop.previtem }}|{% endfor %}",
                   {{"xs", {"a", "b", "c"}}}),
            "10aF33|21b32a|32cL31b|");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(render("{% for k in {'a': 1, 'b': 2} %}{{ k }}{% endfor %}"), "ab");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.length }}{% endfor %}"), "2242");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}"
                   "{% endif %}{{ x }}{% endfor %}"),
            "13");
  // A set inside the loop stays in the loop; a namespace carries values out.
  EXPECT_EQ(render("{% set n = 0 %}{% set ns = namespace(total=0) %}{% for x in [1, 2, 3] %}{% set n = n + x %}"
                   "{% set ns.total = ns.total + x %}{% endfor %}{{ n }} {{ ns.total }}"),
            "0 6");
}

TEST(ChatTemplateConstructs, SetStatements) {
  EXPECT_EQ(render("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(render("{% set block %}inner {{ 1 + 1 }}{% endset %}[{{ block }}]"), "[inner 2]");
  EXPECT_EQ(render("{% set ns = namespace(a=1) %}{% set ns.b = 'x' %}{{ ns.a }}{{ ns.b }}"), "1x");
}

TEST(ChatTemplateConstructs, WhitespaceControlAndComments) {
  EXPECT_EQ(render("a  {{- 'b' -}}  c"), "abc");
  EXPECT_EQ(render("a\n  {%- if true -%}\n  b\n  {%- endif -%}\n  c"), "abc");
  EXPECT_EQ(render("x {# a comment #} y"), "x  y");
  EXPECT_EQ(render("x {#- trimmed -#} y"), "xy");
  // trim_blocks and lstrip_blocks, as transformers renders templates; one final newline dropped.
  EXPECT_EQ(render("{% if true %}\n    yes\n    {% endif %}\nend\n"), "    yes\nend");
  EXPECT_EQ(render("{{ 'keep' }}\nnewline"), "keep\nnewline");
}

TEST(ChatTemplateConstructs, MemberAccessAndSlicing) {
  const Json vars = {{"m", {{"role", "user"}, {"content", "hi"}}}, {"xs", {1, 2, 3, 4}}};
  EXPECT_EQ(render("{{ m.role }}{{ m['content'] }}{{ m.missing }}{{ m.missing.deeper }}", vars), "userhi");
  EXPECT_EQ(render("{{ xs[0] }}{{ xs[-1] }}{{ xs[1:] }}{{ xs[:2] }}{{ xs[::-1] }}{{ xs[::2] }}", vars),
            "14[2, 3, 4][1, 2][4, 3, 2, 1][1, 3]");
  EXPECT_EQ(render("{{ 'héllo'[1] }}{{ 'héllo'[1:3] }}{{ 'abc'[::-1] }}"), "\xc3\xa9\xc3\xa9l" "cba");
  EXPECT_EQ(render("{{ m.get('role') }}{{ m.get('x', 'dflt') }}{{ m.get('y') is none }}", vars), "userdflttrue");
  EXPECT_EQ(render("{{ m.keys() }}{{ m.values() | length }}", vars), "[\"role\", \"content\"]2");
}

TEST(ChatTemplateConstructs, Tests) {
  const Json vars = {{"s", "x"}, {"n", 3}, {"d", {{"a", 1}}}, {"l", {1}}, {"z", nullptr}, {"b", false}};
  EXPECT_EQ(render("{{ s is string }}{{ n is number }}{{ n is integer }}{{ d is mapping }}{{ l is iterable }}"
                   "{{ l is sequence }}{{ z is none }}{{ z is not none }}{{ q is defined }}{{ q is undefined }}"
                   "{{ b is false }}{{ b is boolean }}{{ n is odd }}{{ 4 is even }}{{ 'ab' is lower }}",
                   vars),
            "truetruetruetruetruetruetruefalsefalsetruetruetruetruetruetrue");
}

TEST(ChatTemplateConstructs, Filters) {
  EXPECT_EQ(render("[{{ '  pad \n' | trim }}]{{ 'abc' | length }}{{ [1, 2] | length }}{{ 'aBc' | upper }}"
                   "{{ 'aBc' | lower }}"),
            "[pad]32ABCabc");
  EXPECT_EQ(render("{{ missing | default('d') }}{{ '' | default('e') }}{{ '' | default('f', true) }}"), "df");
  EXPECT_EQ(render("{{ ['a', 'b'] | join(', ') }}{{ [1, 2] | join }}{{ 'a-b' | replace('-', '+') }}"), "a, b12a+b");
  EXPECT_EQ(render("{{ [3, 1, 2] | list }}{{ [3, 1] | first }}{{ [3, 1] | last }}{{ 5 | string }}{{ '42' | int + 1 }}"
                   "{{ 'x' | int }}{{ 3.7 | int }}"),
            "[3, 1, 2]31543" "03");
  EXPECT_EQ(render("{{ {'a': [1, 'é', none], 'b': true} | tojson }}"), "{\"a\": [1, \"é\", null], \"b\": true}");
  EXPECT_EQ(render("{{ {'a': 1, 'b': [2]} | tojson(indent=2) }}"), "{\n  \"a\": 1,\n  \"b\": [\n    2\n  ]\n}");
  EXPECT_EQ(render("{{ 'q\"\\\\\n' | tojson }}"), "\"q\\\"\\\\\\n\"");
  EXPECT_EQ(render("{{ [3, 1, 2] | sort }}{{ [1, 1, 2] | unique }}{{ 'hello world' | title }}{{ 'ab' | capitalize }}"),
            "[1, 2, 3][1, 2]Hello WorldAb");
  EXPECT_EQ(render("{{ [{'n': 'a', 'k': 1}, {'n': 'b'}] | map(attribute='n') | join(',') }}"
                   "{{ [{'n': 'a', 'k': 1}, {'n': 'b'}] | selectattr('k') | length }}"),
            "a,b1");
}

TEST(ChatTemplateConstructs, StringMethods) {
  EXPECT_EQ(render("{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'bc')) }}{{ '  s  '.strip() }}|"
                   "{{ '  s  '.lstrip() }}|{{ '  s  '.rstrip() }}|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}"),
            "truetrues|s  |  s|ABab");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }}{{ ' a  b '.split() }}{{ 'a,b,c'.split(',', 1) }}"),
            "[\"a\", \"b\", \"\", \"c\"][\"a\", \"b\"][\"a\", \"b,c\"]");
  EXPECT_EQ(render("{{ 'aaa'.replace('a', 'b') }}{{ 'aaa'.replace('a', 'b', 2) }}"), "bbbbba");
  EXPECT_EQ(render("{{ 'x</think>\n\nanswer'.split('</think>')[-1].lstrip('\\n') }}"), "answer");
}

TEST(ChatTemplateConstructs, MacrosAndRange) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('Ann') }} {{ greet('Bob', punct='?') }}"),
            "Hi Ann! Hi Bob?");
  EXPECT_EQ(render("{% for i in range(3) %}{{ i }}{% endfor %}{{ range(1, 7, 2) }}"), "012[1, 3, 5]");
}

TEST(ChatTemplateConstructs, NonAsciiText) {
  EXPECT_EQ(render("héllo {{ '中文' }} 😀 {{ 'ÉCOLE' | lower }} {{ 'straße' | upper }}"),
            "héllo 中文 😀 école STRASSE");
  EXPECT_EQ(render("{{ '😀a' | length }}"), "3");  // JavaScript counts UTF-16 code units
}

// ---- errors ----

TEST(ChatTemplateErrors, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(parse_error("ok\n{% if x %}\nno end"), "t.jinja:2:1: syntax error: {% if %} is never closed with {% endif %}");
  EXPECT_EQ(parse_error("{{ 1 + }}"), "t.jinja:1:8: syntax error: expected an expression, found '}}'");
  EXPECT_EQ(parse_error("line one\n  {{ a b }}"), "t.jinja:2:8: syntax error: expected '}}', found 'b'");
  EXPECT_EQ(parse_error("{% frobnicate %}"), "t.jinja:1:1: syntax error: unknown or unsupported statement 'frobnicate'");
  EXPECT_EQ(parse_error("{{ 'open }}"), "t.jinja:1:4: syntax error: unterminated string literal");
  EXPECT_EQ(parse_error("{# never closed"), "t.jinja:1:1: syntax error: comment opened here is never closed with #}");
  EXPECT_EQ(parse_error("{{ x $ y }}"), "t.jinja:1:6: syntax error: unexpected character '$'");
  EXPECT_EQ(parse_error("{% for x in xs %}{{ x }}{% endif %}"), "t.jinja:1:25: syntax error: {% endif %} without an open block it could close");
}

TEST(ChatTemplateErrors, RuntimeErrorsNamePosition) {
  EXPECT_EQ(render_error("a\n{{ 'x' | frobnicate }}"), "inline:2:10: unknown filter 'frobnicate' for a string value");
  EXPECT_EQ(render_error("{{ [1] | trim }}"), "inline:1:10: unknown filter 'trim' for a list value");
  EXPECT_EQ(render_error("{{ missing | length }}"), "inline:1:14: cannot apply filter 'length' to an undefined value");
  EXPECT_EQ(render_error("{{ 'a' + none }}"), "inline:1:8: cannot apply '+' to none");
  EXPECT_EQ(render_error("{{ nothing() }}"), "inline:1:4: 'nothing' is undefined, not a function");
  EXPECT_EQ(render_error("{{ 1 is frob }}"), "inline:1:6: unknown test 'frob'");
  try {
    render("{% if true %}\n{{ raise_exception('Roles must alternate') }}{% endif %}");
    ADD_FAILURE() << "no exception";
  } catch (const ChatTemplateRaised& e) {
    EXPECT_EQ(e.reason(), "Roles must alternate");
    EXPECT_EQ(e.message(), "inline:2:4: raise_exception: Roles must alternate");
  }
}

// ---- loading ----

class ChatTemplateLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("moex_chat_template_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name, std::ios::binary) << text; }
  std::filesystem::path dir_;
};

TEST_F(ChatTemplateLoad, StringForm) {
  write("tokenizer_config.json",
        R"({"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}, "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"})");
  const ChatTemplate t = load_chat_template(dir_.string());
  const auto tokens = load_special_tokens(dir_.string());
  EXPECT_EQ(tokens.at("bos_token"), "<s>");
  EXPECT_EQ(tokens.at("eos_token"), "</s>");
  EXPECT_EQ(t.render({{"user", "hi"}}, false, tokens), "<s>[user]hi");
  EXPECT_NE(t.source().find("tokenizer_config.json"), std::string::npos);
}

TEST_F(ChatTemplateLoad, ListFormUsesDefault) {
  write("tokenizer_config.json",
        R"({"chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "default {{ messages | length }}"}]})");
  EXPECT_EQ(load_chat_template(dir_.string()).render({{"user", "a"}, {"assistant", "b"}}, false, {}), "default 2");
}

TEST_F(ChatTemplateLoad, ListFormWithoutDefaultIsAnError) {
  write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "x"}]})");
  try {
    load_chat_template(dir_.string());
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("no template named \"default\" (it has: tool_use)"), std::string::npos) << e.message();
  }
}

// Hostile templates are errors, not stack overflows or endless renders: nesting 20000 deep when
// parsed, a macro that calls itself forever, a huge range and nested loops of 10^10 iterations (stopped at 10^6)
// when rendered; moderate nesting and recursion still work.
TEST(ChatTemplateLimits, DeepNestingAndEndlessRecursionAreErrors) {
  std::string parens, ifs;
  for (int i = 0; i < 20000; ++i) parens += "(";
  parens += "1";
  for (int i = 0; i < 20000; ++i) parens += ")";
  for (int i = 0; i < 20000; ++i) ifs += "{% if true %}";
  for (int i = 0; i < 20000; ++i) ifs += "{% endif %}";
  EXPECT_NE(parse_error("{{ " + parens + " }}").find("nested more than 200 deep"), std::string::npos);
  EXPECT_NE(parse_error(ifs).find("nested more than 200 deep"), std::string::npos);
  EXPECT_NE(parse_error("{{ " + std::string(20000, '-') + "1 }}").find("nested more than"),
            std::string::npos);
  EXPECT_NE(render_error("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}")
                .find("recurses more than 500 levels deep"),
            std::string::npos);
  EXPECT_NE(render_error("{% for i in range(1000000000) %}{% endfor %}")
                .find("range() of more than 1000000 items"),
            std::string::npos);
  EXPECT_NE(render_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                         "{% endfor %}")
                .find("loops ran more than 1000000 iterations"),
            std::string::npos);
  EXPECT_EQ(render("{{ ((((((((1)))))))) }}{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}"
                   "{% endif %}{{ n }}{% endmacro %}{{ f(20) }}"),
            "1" + [] {
              std::string s;
              for (int n = 0; n <= 20; ++n) s += std::to_string(n);
              return s;
            }());
}

TEST_F(ChatTemplateLoad, WithoutTemplateUsesMoexDefault) {
  write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  EXPECT_EQ(load_chat_template(dir_.string()).text(), kDefaultChatTemplate);
  std::filesystem::remove(dir_ / "tokenizer_config.json");
  EXPECT_EQ(load_chat_template(dir_.string()).text(), kDefaultChatTemplate);
}

TEST_F(ChatTemplateLoad, ChatTemplateJinjaFileWins) {
  write("tokenizer_config.json", R"({"chat_template": "from config"})");
  write("chat_template.jinja", "from file\n");
  EXPECT_EQ(load_chat_template(dir_.string()).render({}, false, {}), "from file");
}

TEST_F(ChatTemplateLoad, SyntaxErrorNamesTheFile) {
  write("tokenizer_config.json", R"({"chat_template": "{% if x %}"})");
  try {
    load_chat_template(dir_.string());
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("tokenizer_config.json: chat_template:1:1: syntax error"), std::string::npos)
        << e.message();
  }
}

// A request's chat_template_kwargs reach the template as variables, and cannot replace the
// conversation's own.
TEST(ChatTemplate, ExtraVariablesReachTheTemplate) {
  const ChatTemplate t = ChatTemplate::parse(
      "{% if enable_thinking is defined and not enable_thinking %}no-think {% endif %}"
      "{{ messages | length }}",
      "inline");
  const std::vector<ChatMessage> one = {{"user", "hi", Json::object()}};
  EXPECT_EQ(t.render(one, true, {}), "1");
  EXPECT_EQ(t.render(one, true, {}, Json(), Json{{"enable_thinking", false}}), "no-think 1");
  EXPECT_EQ(t.render(one, true, {}, Json(), Json{{"messages", Json::array()}}), "1");
}

}  // namespace
}  // namespace moex::serve
