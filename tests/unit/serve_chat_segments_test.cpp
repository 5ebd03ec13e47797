// Conversations as training text (serve/chat_segments.h): on real model templates, the segments
// put together are @huggingface/jinja's rendering of the whole conversation (the fixtures of
// serve_chat_template_test.cpp), and each trained segment is an assistant turn: its content and
// the markup that ends it, never a user's words.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/tokenizer.h"
#include "serve/chat_segments.h"

namespace moex::serve {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

const fs::path kTestFixtures = fs::path(MOEX_SOURCE_DIR) / "tests" / "fixtures";

std::string read_fixture_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A model directory holding `template_file` as its chat template (any tokenizer: its BOS/EOS are
// replaced by each case's below).
ChatRenderer renderer_for(const std::string& template_file, const fs::path& dir) {
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer_config.json") << nlohmann::json{
      {"chat_template",
       read_fixture_text(kTestFixtures / "chat_templates" /
                         template_file)}}.dump();
  const auto tok =
      data::open_tokenizer((kTestFixtures / "tokenizers/llama2/tokenizer.json").string());
  return ChatRenderer(dir.string(), *tok);
}

TEST(ChatSegments, PutTogetherTheyAreTheReferenceRenderingAndTrainOnlyAnswers) {
  const fs::path tmp =
      fs::temp_directory_path() / ("moex_chat_segments_" + std::to_string(getpid()));
  const Json fixtures =
      Json::parse(read_fixture_text(kTestFixtures / "chat_templates/expected.json"));
  int checked = 0;
  int64_t untrained_seen = 0;
  for (const Json& t : fixtures.at("templates")) {
    ChatRenderer renderer = renderer_for(t.at("file"), tmp / t.at("name").get<std::string>());
    for (const Json& c : t.at("cases")) {
      const Json& v = c.at("variables");
      // Whole conversations as the reference rendered them, with no variables but the tokens.
      if (!c.contains("output") || v.at("add_generation_prompt").get<bool>()) continue;
      bool plain = true;
      for (auto it = v.begin(); it != v.end(); ++it)
        plain &= it.key() == "messages" || it.key() == "add_generation_prompt" ||
                 it.key() == "bos_token" || it.key() == "eos_token";
      if (!plain) continue;
      renderer.special_tokens.clear();
      for (const char* token : {"bos_token", "eos_token"})
        if (v.contains(token)) renderer.special_tokens[token] = v.at(token).get<std::string>();
      const std::string what =
          t.at("name").get<std::string>() + " / " + c.at("conversation").get<std::string>();
      int64_t untrained = 0;
      std::vector<data::TextSegment> parts;
      try {
        parts = renderer.segments(nlohmann::json::parse(v.at("messages").dump()), &untrained);
      } catch (const Error& e) {
        ADD_FAILURE() << what << ": " << e.what();
        continue;
      }
      std::string whole;
      std::vector<std::string> trained;
      for (const data::TextSegment& p : parts) {
        whole += p.text;
        if (p.trained) trained.push_back(p.text);
      }
      EXPECT_EQ(whole, c.at("output").get<std::string>()) << what;
      // Each trained part is an answer, in order: it holds its assistant message's text (when
      // the message has text) and no other message's; the answers not trained are counted.
      std::vector<std::string> answers, others;  // assistant contents ("" without text); others
      for (const Json& m : v.at("messages")) {
        const std::string content = m.at("content").is_string() ? m.at("content") : "";
        if (m.at("role") == "assistant") {
          answers.push_back(content);
        } else if (!content.empty()) {  // "" is in every text
          others.push_back(content);
        }
      }
      EXPECT_EQ(static_cast<int64_t>(trained.size()) + untrained,
                static_cast<int64_t>(answers.size()))
          << what;
      size_t next = 0;
      for (const std::string& part : trained) {
        while (next < answers.size() && part.find(answers[next]) == std::string::npos) ++next;
        EXPECT_LT(next, answers.size()) << what << ": no answer in the trained part " << part;
        ++next;
        for (const std::string& o : others)
          EXPECT_EQ(part.find(o), std::string::npos) << what << ": " << o << " in " << part;
      }
      untrained_seen += untrained;
      ++checked;
    }
  }
  EXPECT_GE(checked, 12);
  std::printf("[ info ] %d conversations, %lld answers read but not trained on\n", checked,
              static_cast<long long>(untrained_seen));
  fs::remove_all(tmp);
}

TEST(ChatSegments, MixtralAnswersEndWithEosAndBadMessagesNameTheField) {
  const fs::path tmp =
      fs::temp_directory_path() / ("moex_chat_mixtral_" + std::to_string(getpid()));
  ChatRenderer r = renderer_for("mixtral_8x7b_instruct_v0_1.jinja", tmp);
  r.special_tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  int64_t untrained = 1;
  const auto parts = r.segments(nlohmann::json::parse(R"([
      {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}])"),
                                &untrained);
  EXPECT_EQ(untrained, 0);
  std::vector<std::pair<std::string, bool>> got;
  for (const auto& p : parts) got.emplace_back(p.text, p.trained);
  EXPECT_EQ(got, (std::vector<std::pair<std::string, bool>>{{"<s>[INST] 2+2? [/INST]", false},
                                                            {"4</s>", true},
                                                            {"[INST] 3+3? [/INST]", false},
                                                            {"6</s>", true},
                                                            {"", false}}));
  // No answer: all read, nothing trained.
  const auto question =
      r.segments(nlohmann::json::parse(R"([{"role": "user", "content": "hi"}])"), &untrained);
  ASSERT_EQ(question.size(), 1u);
  EXPECT_FALSE(question[0].trained);
  try {
    r.segments(nlohmann::json::parse(R"([{"role": "user", "content": 5}])"), &untrained);
    ADD_FAILURE() << "a message of the wrong shape was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("messages[0].content"), std::string::npos) << e.what();
  }
  fs::remove_all(tmp);
}

// A line's tools are offered in every rendering (Qwen2.5 writes them into its system turn): the
// read part holds them, the trained answer does not.
TEST(ChatSegments, ToolsAreRenderedIntoThePromptNotTheAnswer) {
  const fs::path tmp = fs::temp_directory_path() / ("moex_chat_tools_" + std::to_string(getpid()));
  ChatRenderer r = renderer_for("qwen2_5_instruct.jinja", tmp);
  r.special_tokens = {{"eos_token", "<|im_end|>"}};
  const nlohmann::json messages = nlohmann::json::parse(
      R"([{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": "Cold."}])");
  const nlohmann::json tools = nlohmann::json::parse(
      R"([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])");
  int64_t untrained = 1;
  const auto parts = r.segments(messages, &untrained, tools);
  EXPECT_EQ(untrained, 0);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_NE(parts[0].text.find("get_weather"), std::string::npos) << parts[0].text;
  EXPECT_TRUE(parts[1].trained);
  EXPECT_EQ(parts[1].text, "Cold.<|im_end|>\n");
  const auto without = r.segments(messages, &untrained);
  EXPECT_EQ(without[0].text.find("get_weather"), std::string::npos);
  EXPECT_EQ(without[1].text, parts[1].text);
  fs::remove_all(tmp);
}

}  // namespace
}  // namespace moex::serve
