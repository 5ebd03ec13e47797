// A corpus of the user's own text (data/text_corpus.h): every document's ids are the reference
// tokenizer's (transformers.js on the llama2 fixture) plus EOS, plain text splits on blank lines,
// the held-out split is seeded and disjoint, and bad input is one error naming the file and line
// with nothing left on disk.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "data/corpus.h"
#include "data/indexed_dataset.h"
#include "data/text_corpus.h"
#include "data/tokenizer.h"
#include "temp_path.h"

namespace moex::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFixtures = fs::path(__FILE__).parent_path().parent_path() / "fixtures";
const std::string kLlama2 = (kFixtures / "tokenizers" / "llama2" / "tokenizer.json").string();

using testing::TempDir;

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Every document of a split, in order.
std::vector<std::vector<int32_t>> documents(const std::string& prefix) {
  const IndexedDataset d = IndexedDataset::open(prefix);
  std::vector<std::vector<int32_t>> out;
  const std::vector<int64_t>& starts = d.document_indices();
  for (size_t k = 0; k + 1 < starts.size(); ++k) {
    std::vector<int32_t> doc;
    for (int64_t s = starts[k]; s < starts[k + 1]; ++s) {
      const std::vector<int32_t> seq = d.get(s);
      doc.insert(doc.end(), seq.begin(), seq.end());
    }
    out.push_back(doc);
  }
  return out;
}

TextCorpusOptions options(const TempDir& tmp, std::vector<std::string> inputs) {
  TextCorpusOptions o;
  o.out_dir = tmp.sub("corpus");
  o.inputs = std::move(inputs);
  o.tokenizer = kLlama2;
  o.valid_fraction = 0;
  return o;
}

std::string error_of(const TextCorpusOptions& o) {
  try {
    prepare_text_corpus(o);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TextCorpus, JsonLinesDocumentsAreTheReferenceTokenizersIdsThenEos) {
  TempDir tmp("text_corpus_jsonl");
  std::ifstream cases_file(kFixtures / "tokenizers" / "llama2_cases.json");
  const json cases = json::parse(cases_file).at("cases");
  std::string lines;
  std::vector<std::vector<int32_t>> want;
  for (const json& c : cases) {
    const std::string text = c.at("text");
    lines += json{{"id", want.size()}, {"text", text}}.dump() + "\n";
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) continue;  // blank: left out
    want.push_back(c.at("ids").get<std::vector<int32_t>>());
    want.back().push_back(2);  // llama2's EOS </s>
  }
  ASSERT_GT(want.size(), 30u);
  write(tmp.sub("cases.jsonl"), lines);
  const CorpusManifest m = prepare_text_corpus(options(tmp, {tmp.sub("cases.jsonl")}));
  ASSERT_EQ(m.sources.size(), 1u);
  EXPECT_EQ(m.sources[0].name, "cases");
  EXPECT_EQ(m.sources[0].train.documents, static_cast<int64_t>(want.size()));
  EXPECT_EQ(m.vocab_size, 32000);
  EXPECT_EQ(m.eos_id, 2);
  EXPECT_EQ(documents(tmp.sub("corpus/cases.train")), want);
  EXPECT_TRUE(documents(tmp.sub("corpus/cases.valid")).empty());
  // The manifest the trainer reads, and its own copy of the tokenizer.
  const CorpusManifest back = load_corpus_manifest(tmp.sub("corpus"));
  EXPECT_EQ(back.tokenizer, tmp.sub("corpus/tokenizer.json"));
  EXPECT_EQ(back.sources[0].train.tokens, m.sources[0].train.tokens);
  EXPECT_EQ(open_tokenizer(back.tokenizer)->vocab_size(), 32000);
  // With the tokenizer_config.json beside it (its BOS/EOS and chat template).
  EXPECT_TRUE(fs::is_regular_file(tmp.sub("corpus/tokenizer_config.json")));
}

TEST(TextCorpus, PlainTextDocumentsEndAtBlankLines) {
  TempDir tmp("text_corpus_plain");
  write(tmp.sub("notes.txt"), "\n\nFirst line.\r\nSecond line.\n\n\n  \nOnly one.\nLast\n");
  write(tmp.sub("more.md"), "x y z");  // another source, with no newline at its end
  const CorpusManifest m =
      prepare_text_corpus(options(tmp, {tmp.sub("notes.txt"), tmp.sub("more.md")}));
  const std::unique_ptr<Tokenizer> tok = open_tokenizer(kLlama2);
  auto doc = [&](const std::string& text) {
    std::vector<int32_t> ids = tok->encode(text, true);
    ids.push_back(2);
    return ids;
  };
  EXPECT_EQ(documents(tmp.sub("corpus/notes.train")),
            (std::vector<std::vector<int32_t>>{doc("First line.\nSecond line."),
                                               doc("Only one.\nLast")}));
  EXPECT_EQ(documents(tmp.sub("corpus/more.train")),
            (std::vector<std::vector<int32_t>>{doc("x y z")}));
  EXPECT_EQ(m.sources[1].name, "more");
}

TEST(TextCorpus, HeldOutDocumentsAreSeededAndDisjoint) {
  TempDir tmp("text_corpus_split");
  std::string lines;
  for (int i = 0; i < 100; ++i)
    lines += json{{"text", "document " + std::to_string(i)}}.dump() + "\n";
  write(tmp.sub("d.jsonl"), lines);
  auto split = [&](uint64_t seed, const std::string& out) {
    TextCorpusOptions o = options(tmp, {tmp.sub("d.jsonl")});
    o.out_dir = tmp.sub(out);
    o.valid_fraction = 0.1;
    o.seed = seed;
    prepare_text_corpus(o);
    return std::make_pair(documents(tmp.sub(out + "/d.train")),
                          documents(tmp.sub(out + "/d.valid")));
  };
  const auto [train, valid] = split(7, "a");
  EXPECT_EQ(valid.size(), 10u);
  EXPECT_EQ(train.size(), 90u);
  std::set<std::vector<int32_t>> all(train.begin(), train.end());
  all.insert(valid.begin(), valid.end());
  EXPECT_EQ(all.size(), 100u);  // every document once, in one split
  EXPECT_EQ(split(7, "b").second, valid);
  EXPECT_NE(split(8, "c").second, valid);
}

// Chat data: each segment's ids as they are (no BOS or EOS added), a loss mask of 1 on the trained
// segments' ids beside them, named in corpus.json. The renderer here is a stand-in (the model's
// template is serve::ChatRenderer's, tested in serve_chat_segments_test.cpp).
TEST(TextCorpus, ConversationsKeepALossMaskOnTheAnswers) {
  TempDir tmp("text_corpus_chat");
  std::string lines;
  for (int i = 0; i < 10; ++i)
    lines += json{{"messages",
                   {{{"role", "user"}, {"content", "question " + std::to_string(i)}},
                    {{"role", "assistant"}, {"content", "answer " + std::to_string(i)}}}}}
                 .dump() +
             "\n";
  write(tmp.sub("chat.jsonl"), lines);
  TextCorpusOptions o = options(tmp, {tmp.sub("chat.jsonl")});
  o.json_key = "messages";
  // Mixtral's layout: the answer follows "[/INST]" with no space, where encoding it on its own
  // would start it with Llama's "▁".
  o.render_chat = [](const nlohmann::json& messages, const nlohmann::json&, int64_t* untrained) {
    *untrained = 0;
    std::vector<TextSegment> parts;
    for (const auto& m : messages) {
      const std::string content = m.at("content");
      if (m.at("role") == "user") parts.push_back({"<s>[INST] " + content + " [/INST]", false});
      if (m.at("role") == "assistant") parts.push_back({content + "</s>", true});
    }
    return parts;
  };
  const CorpusManifest m = prepare_text_corpus(o);
  const std::unique_ptr<Tokenizer> tok = open_tokenizer(kLlama2);
  const std::vector<std::vector<int32_t>> ids = documents(tmp.sub("corpus/chat.train")),
                                          masks = documents(tmp.sub("corpus/chat.train.mask"));
  ASSERT_EQ(ids.size(), 10u);
  ASSERT_EQ(masks.size(), 10u);
  int64_t ones = 0;
  for (size_t d = 0; d < ids.size(); ++d) {
    // The training split keeps the documents' order: document d is conversation d.
    const std::string question = "<s>[INST] question " + std::to_string(d) + " [/INST]";
    const std::string answer = "answer " + std::to_string(d) + "</s>";
    // The ids are the whole conversation's, as the server encodes a prompt...
    EXPECT_EQ(ids[d], tok->encode(question + answer, false)) << d;
    // ...and the mask marks exactly the answer's tokens: the last ones, spelling it.
    ASSERT_EQ(masks[d].size(), ids[d].size());
    std::vector<int32_t> trained;
    for (size_t t = 0; t < ids[d].size(); ++t) {
      if (masks[d][t] == 1) trained.push_back(ids[d][t]);
      EXPECT_TRUE(masks[d][t] == 0 || masks[d][t] == 1);
      ones += masks[d][t];
    }
    EXPECT_EQ(tok->decode_bytes(trained), answer) << d;
    EXPECT_TRUE(std::equal(trained.rbegin(), trained.rend(), ids[d].rbegin())) << d;
    EXPECT_NE(trained, tok->encode(answer, false)) << "the answer alone encodes otherwise";
  }
  const CorpusManifest back = load_corpus_manifest(tmp.sub("corpus"));
  EXPECT_EQ(back.sources[0].train.mask_prefix, "chat.train.mask");
  EXPECT_EQ(back.sources[0].valid.mask_prefix, "chat.valid.mask");
  EXPECT_EQ(back.sources[0].train.trained_tokens, ones);
  EXPECT_EQ(m.sources[0].train.trained_tokens, ones);
  // Plain text cannot hold conversations; one without an answer trains nothing: refused.
  write(tmp.sub("notes.txt"), "a\n");
  TextCorpusOptions plain = o;
  plain.inputs = {tmp.sub("notes.txt")};
  EXPECT_NE(error_of(plain).find("conversations (--chat) are read from .jsonl files"),
            std::string::npos);
  write(tmp.sub("questions.jsonl"), "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n");
  o.render_chat = [](const nlohmann::json&, const nlohmann::json&, int64_t* untrained) {
    *untrained = 0;
    return std::vector<TextSegment>{{"<s> q", false}};
  };
  o.inputs = {tmp.sub("questions.jsonl")};
  EXPECT_NE(error_of(o).find("nothing to train on"), std::string::npos);
}

// ShareGPT's layout ("conversations" of {"from", "value"}), Alpaca's ({"instruction", "input",
// "output", "system"}, as .jsonl lines and as one .json array) and TRL's conversational
// prompt-completion give the corpus of the same conversations written in OpenAI's layout; an
// unknown "from" names the line.
TEST(TextCorpus, ShareGptAndAlpacaLinesReadAsOpenAiMessages) {
  TempDir tmp("text_corpus_sharegpt");
  std::string openai, sharegpt, alpaca, trl;
  json alpaca_array = json::array();  // alpaca_data.json's own layout: one JSON array
  for (int i = 0; i < 4; ++i) {
    const std::string instruction = "question " + std::to_string(i);
    const std::string input = i % 2 ? "context " + std::to_string(i) : "";
    const std::string q = input.empty() ? instruction : instruction + "\n" + input;
    const std::string a = "answer " + std::to_string(i);
    openai += json{{"messages",
                    {{{"role", "system"}, {"content", "be brief"}},
                     {{"role", "user"}, {"content", q}},
                     {{"role", "assistant"}, {"content", a}}}}}
                  .dump() +
              "\n";
    sharegpt += json{{"id", i},
                     {"conversations",
                      {{{"from", "system"}, {"value", "be brief"}},
                       {{"from", "human"}, {"value", q}},
                       {{"from", "gpt"}, {"value", a}}}}}
                    .dump() +
                "\n";
    const json item = {
        {"system", "be brief"}, {"instruction", instruction}, {"input", input}, {"output", a}};
    alpaca += item.dump() + "\n";
    trl +=
        json{{"prompt",
              {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", q}}}},
             {"completion", {{{"role", "assistant"}, {"content", a}}}}}
            .dump() +
        "\n";
    alpaca_array.push_back(item);
  }
  write(tmp.sub("array.json"), "\n " + alpaca_array.dump(2));
  write(tmp.sub("openai.jsonl"), openai);
  write(tmp.sub("sharegpt.jsonl"), sharegpt);
  write(tmp.sub("alpaca.jsonl"), alpaca);
  write(tmp.sub("trl.jsonl"), trl);
  auto render = [](const nlohmann::json& messages, const nlohmann::json&, int64_t* untrained) {
    *untrained = 0;
    std::vector<TextSegment> parts;
    for (const auto& m : messages) {
      const std::string role = m.at("role"), content = m.at("content");
      EXPECT_EQ(m.size(), 2u) << m.dump();  // role and content only
      parts.push_back({role == "assistant" ? content + "</s>" : "<" + role + "> " + content,
                       role == "assistant"});
    }
    return parts;
  };
  std::vector<std::vector<int32_t>> ids[5], masks[5];
  const char* names[5] = {"openai", "sharegpt", "alpaca", "array", "trl"};
  for (int k = 0; k < 5; ++k) {
    TextCorpusOptions o =
        options(tmp, {tmp.sub(std::string(names[k]) + (k == 3 ? ".json" : ".jsonl"))});
    o.out_dir = tmp.sub(std::string("corpus_") + names[k]);
    o.json_key = "messages";
    o.render_chat = render;
    prepare_text_corpus(o);
    ids[k] = documents(o.out_dir + "/" + names[k] + ".train");
    masks[k] = documents(o.out_dir + "/" + names[k] + ".train.mask");
  }
  ASSERT_EQ(ids[0].size(), 4u);
  for (int k = 1; k < 5; ++k) {
    EXPECT_EQ(ids[k], ids[0]) << names[k];
    EXPECT_EQ(masks[k], masks[0]) << names[k];
  }
  write(tmp.sub("tool.jsonl"),
        json{{"conversations",
              {{{"from", "human"}, {"value", "q"}}, {{"from", "observation"}, {"value", "r"}}}}}
                .dump() +
            "\n");
  TextCorpusOptions bad = options(tmp, {tmp.sub("tool.jsonl")});
  bad.json_key = "messages";
  bad.render_chat = render;
  const std::string error = error_of(bad);
  EXPECT_NE(error.find("tool.jsonl:1: message 1: from observation is not one of"),
            std::string::npos)
      << error;
  write(tmp.sub("tool.jsonl"), "{\"instruction\": \"q\"}\n");
  const std::string no_output = error_of(bad);
  EXPECT_NE(no_output.find("tool.jsonl:1: an Alpaca line needs 'output'"), std::string::npos)
      << no_output;
  // TRL's conversational prompt-completion trains only the completion: a prompt with an answer
  // in it is refused.
  write(tmp.sub("tool.jsonl"), R"({"prompt": [{"role": "user", "content": "q"}, {"role": )"
                               R"("assistant", "content": "a"}], "completion": []})"
                               "\n");
  const std::string answer_in_prompt = error_of(bad);
  EXPECT_NE(answer_in_prompt.find("tool.jsonl:1: prompt message 1 is an assistant turn"),
            std::string::npos)
      << answer_in_prompt;
  // In an array, an item is named by its index.
  write(tmp.sub("items.json"), R"([{"instruction": "q", "output": "a"}, {"instruction": "q"}])");
  bad.inputs = {tmp.sub("items.json")};
  const std::string item = error_of(bad);
  EXPECT_NE(item.find("items.json[1]: an Alpaca line needs 'output'"), std::string::npos) << item;
}

// Prompt-completion pairs (TRL's layout): the pair's text with the tokenizer's BOS and an EOS,
// as a plain document, and a mask of 1 on the completion and the EOS only.
TEST(TextCorpus, PromptCompletionPairsTrainOnTheCompletion) {
  TempDir tmp("text_corpus_pairs");
  std::string lines;
  for (int i = 0; i < 6; ++i)
    lines += json{{"prompt", "The capital of country " + std::to_string(i) + " is"},
                  {"completion", " City" + std::to_string(i) + "."},
                  {"id", i}}
                 .dump() +
             "\n";
  write(tmp.sub("pairs.jsonl"), lines);
  TextCorpusOptions o = options(tmp, {tmp.sub("pairs.jsonl")});
  o.prompt_completion = true;
  prepare_text_corpus(o);
  const std::unique_ptr<Tokenizer> tok = open_tokenizer(kLlama2);
  const std::vector<std::vector<int32_t>> ids = documents(tmp.sub("corpus/pairs.train")),
                                          masks = documents(tmp.sub("corpus/pairs.train.mask"));
  ASSERT_EQ(ids.size(), 6u);
  for (size_t d = 0; d < ids.size(); ++d) {
    const std::string prompt = "The capital of country " + std::to_string(d) + " is";
    const std::string completion = " City" + std::to_string(d) + ".";
    std::vector<int32_t> want = tok->encode(prompt + completion, true);
    want.push_back(2);
    EXPECT_EQ(ids[d], want) << d;
    // The read tokens are the prompt's own (BOS, then its words); the rest, to the EOS, trains.
    std::vector<int32_t> read, trained;
    for (size_t t = 0; t < ids[d].size(); ++t)
      (masks[d][t] == 1 ? trained : read).push_back(ids[d][t]);
    EXPECT_EQ(read, tok->encode(prompt, true)) << d;
    EXPECT_TRUE(std::equal(trained.rbegin(), trained.rend(), ids[d].rbegin())) << d;
    EXPECT_EQ(trained.back(), 2) << d;
    EXPECT_GE(trained.size(), 3u) << d;  // "▁City", the digit, ".", EOS
  }
  write(tmp.sub("bad.jsonl"), "{\"prompt\": \"a\", \"completion\": 3}\n");
  o.inputs = {tmp.sub("bad.jsonl")};
  EXPECT_NE(error_of(o).find("bad.jsonl:1: 'completion' must be a string"), std::string::npos);
}

TEST(TextCorpus, BadInputNamesTheFileAndLineAndLeavesNothing) {
  TempDir tmp("text_corpus_errors");
  write(tmp.sub("a.jsonl"), "{\"text\": \"ok\"}\n\n{\"text\": \"ok\"\n");
  write(tmp.sub("b.jsonl"), "{\"text\": \"ok\"}\n{\"content\": \"x\"}\n");
  write(tmp.sub("c.jsonl"), "{\"text\": 5}\n");
  write(tmp.sub("d.jsonl"), "[\"text\"]\n");
  write(tmp.sub("e.txt"), "fine\n\xff\xfe\n");
  write(tmp.sub("f.txt"), "\n   \n\n");
  const std::string a = error_of(options(tmp, {tmp.sub("a.jsonl")}));
  EXPECT_NE(a.find("a.jsonl:3: not valid JSON"), std::string::npos) << a;
  const std::string b = error_of(options(tmp, {tmp.sub("b.jsonl")}));
  EXPECT_NE(b.find("b.jsonl:2: no 'text' field (--json-key names it)"), std::string::npos) << b;
  TextCorpusOptions keyed = options(tmp, {tmp.sub("b.jsonl")});
  keyed.json_key = "content";
  EXPECT_NE(error_of(keyed).find("b.jsonl:1: no 'content' field"), std::string::npos);
  EXPECT_NE(error_of(options(tmp, {tmp.sub("c.jsonl")})).find("c.jsonl:1: 'text' must be a string"),
            std::string::npos);
  EXPECT_NE(error_of(options(tmp, {tmp.sub("d.jsonl")})).find("d.jsonl:1: not a JSON object"),
            std::string::npos);
  EXPECT_NE(error_of(options(tmp, {tmp.sub("e.txt")})).find("e.txt:2: not valid UTF-8"),
            std::string::npos);
  EXPECT_NE(error_of(options(tmp, {tmp.sub("f.txt")})).find("f.txt: no documents"),
            std::string::npos);
  // A missing input is found before the first file is read.
  EXPECT_NE(error_of(options(tmp, {tmp.sub("b.jsonl"), tmp.sub("nope.jsonl")}))
                .find("--input " + tmp.sub("nope.jsonl") + ": not a file"),
            std::string::npos);
  TextCorpusOptions no_tokenizer = options(tmp, {tmp.sub("b.jsonl")});
  no_tokenizer.tokenizer = tmp.path.string();  // a directory without one
  EXPECT_NE(error_of(no_tokenizer).find("no tokenizer.json or SentencePiece .model"),
            std::string::npos);
  for (const auto& entry : fs::directory_iterator(tmp.path))
    EXPECT_EQ(entry.path().filename().string().rfind("corpus", 0), std::string::npos)
        << entry.path() << " was left behind";
}

}  // namespace
}  // namespace moex::data
