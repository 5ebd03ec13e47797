// Corpus building on a tiny synthetic input (not the Debian packages): HTML text extraction,
// diatheke output parsing, and the whole pipeline to .bin/.idx and corpus.json.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/bible.h"
#include "data/corpus.h"
#include "data/html_text.h"
#include "data/indexed_dataset.h"
#include "data/sentencepiece_tokenizer.h"

namespace moex::data {
namespace {

namespace fs = std::filesystem;

void write_all(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(HtmlText, ParagraphsEntitiesAndNavigation) {
  const std::string html =
      R"(<?xml version="1.0"?><html><head><title>T</title><style>p {}</style></head><body>)"
      R"(<ul class="docnav top"><li>Prev</li><li><a>Next</a></li></ul>)"
      R"(<div id="banner"><span>Download</span></div>)"
      R"(<h2 class="title">6.2. <code>apt-get</code> &amp; co</h2>)"
      R"(<div class="para">  APT est   un <em>projet</em>
         vaste &#233;crit&#x2014;fin&nbsp;ici. </div><!-- a <p>comment</p> -->)"
      R"(<p>a&lt;b<br/>second line</p><p>&unknown; x</p></body></html>)";
  const auto p = html_paragraphs(html);
  ASSERT_EQ(p.size(), 5u) << ::testing::PrintToString(p);
  EXPECT_EQ(p[0], "6.2. apt-get & co");
  EXPECT_EQ(p[1],
            "APT est un projet vaste \xC3\xA9"
            "crit\xE2\x80\x94"
            "fin ici.");
  EXPECT_EQ(p[2], "a<b");
  EXPECT_EQ(p[3], "second line");
  EXPECT_EQ(p[4], "&unknown; x");
}

TEST(Bible, ParsesDiathekePlainOutput) {
  const std::string text =
      "Genesis 1:1: In the beginning <H7225>, God created.\n"
      "Genesis 1:2: The earth was formless\n"
      "and empty. \n"
      "\n"
      "\n"
      "A Psalm by David.\n"
      "  Psalms 3:1: Yahweh, how many!\n"
      "I Kings 2:3: Keep the charge: walk in his ways.\n"
      "Esther (Greek) 1:1: In the second year.\n"
      "Genesis 1:3: \n"
      "\n"
      "\n"
      "   Glossary text after the last verse.\n"
      "(engWEB2015eb)\n";
  const auto v = parse_diatheke_plain(text);
  ASSERT_EQ(v.size(), 5u);
  EXPECT_EQ(v[0].key(), "Genesis 1:1");
  EXPECT_EQ(v[0].text, "In the beginning, God created.");
  EXPECT_EQ(v[1].text, "The earth was formless and empty.");
  EXPECT_EQ(v[2].key(), "Psalms 3:1");
  EXPECT_EQ(v[2].text, "A Psalm by David. Yahweh, how many!");
  EXPECT_EQ(v[3].book, "I Kings");
  EXPECT_EQ(v[3].text, "Keep the charge: walk in his ways.");
  EXPECT_EQ(v[4].key(), "Esther (Greek) 1:1");
}

// Pseudo-words from syllables, so the tokenizer trainer has text with enough variety.
std::string words(uint32_t seed, int n) {
  static const char* kSyl[] = {"ka", "lo", "mi", "ter", "sa", "du", "ren", "po", "vi", "chi",
                               "an", "el", "os", "ur",  "ba", "ne", "qui", "to", "ra", "fe"};
  std::string out;
  uint32_t x = seed * 2654435761u + 1;
  for (int w = 0; w < n; ++w) {
    if (w) out += ' ';
    const int syl = 1 + static_cast<int>((x >> 7) % 3);
    for (int k = 0; k < syl; ++k) {
      x = x * 1664525u + 1013904223u;
      out += kSyl[(x >> 16) % 20];
    }
  }
  return out;
}

std::string page(const std::vector<std::string>& paragraphs) {
  std::string html =
      "<html><head><title>x</title></head><body><ul class=\"docnav\"><li>Next</li></ul>";
  for (const auto& p : paragraphs) html += "<div class=\"para\">" + p + "</div>";
  return html + "</body></html>";
}

TEST(Corpus, BuildsFromSyntheticInput) {
  const fs::path root = fs::temp_directory_path() / ("moex_corpus_" + std::to_string(::getpid()));
  fs::remove_all(root);
  const fs::path hb = root / "handbook";
  const std::string untranslated = "This paragraph was never translated " + words(99, 20);
  for (int f = 0; f < 6; ++f) {
    const std::string name = "sect.page" + std::to_string(f) + ".html";
    std::vector<std::string> en, es;
    for (int p = 0; p < 6; ++p) {
      en.push_back(words(f * 100 + p, 40));
      es.push_back("es " + words(5000 + f * 100 + p, 40));
    }
    en.push_back(untranslated);
    es.push_back(untranslated);
    write_all(hb / "en-US" / name, page(en));
    write_all(hb / "es-ES" / name, page(es));
  }
  write_all(hb / "en-US" / "index.html", page({"table of contents"}));
  std::string bible_en, bible_es;
  for (int c = 1; c <= 30; ++c) {
    for (int v = 1; v <= 5; ++v) {
      const std::string key = "Genesis " + std::to_string(c) + ":" + std::to_string(v) + ": ";
      bible_en += key + words(c * 10 + v, 12) + " <H0430>.\n";
      if (!(c == 2 && v == 5)) bible_es += key + "es " + words(9000 + c * 10 + v, 12) + ".\n";
    }
  }
  write_all(root / "bible" / "engWEB2015eb.txt", bible_en + "(engWEB2015eb)\n");
  write_all(root / "bible" / "spaRV1909eb.txt", bible_es + "(spaRV1909eb)\n");

  CorpusOptions o;
  o.out_dir = (root / "out").string();
  o.languages = {"en", "es", "fr"};  // fr has no handbook or Bible here: skipped
  o.vocab_size = 400;
  o.handbook_dir = hb.string();
  o.bible_text_dir = (root / "bible").string();
  o.valid_fraction = 0.1;
  std::vector<std::string> log;
  o.log = [&](const std::string& line) { log.push_back(line); };
  const CorpusManifest m = prepare_corpus(o);
  EXPECT_FALSE(log.empty());
  EXPECT_FALSE(fs::exists(root / "out.tmp"));
  ASSERT_TRUE(fs::exists(root / "out" / "corpus.json"));

  const CorpusManifest loaded = load_corpus_manifest(o.out_dir);
  ASSERT_EQ(loaded.sources.size(),
            5u);  // handbook.en, handbook.es, bible.en, bible.es, bible.en-es
  std::map<std::string, CorpusSource> by_name;
  for (const auto& s : loaded.sources) by_name[s.name] = s;
  for (const char* name : {"handbook.en", "handbook.es", "bible.en", "bible.es", "bible.en-es"}) {
    ASSERT_TRUE(by_name.count(name)) << name;
  }
  EXPECT_EQ(by_name["bible.en-es"].task, "translate");
  EXPECT_EQ(by_name["bible.en-es"].language, "en-es");
  EXPECT_EQ(by_name["handbook.en"].train.documents, 6 - by_name["handbook.en"].valid.documents);
  // 30 chapters at 10%: 3 held-out chapters, the same in every Bible source.
  EXPECT_EQ(by_name["bible.en"].valid.documents, 3);
  EXPECT_EQ(by_name["bible.es"].valid.documents, 3);
  EXPECT_EQ(by_name["bible.en-es"].train.documents + by_name["bible.en-es"].valid.documents, 149);
  EXPECT_EQ(by_name["bible.en-es"].valid.documents % 5, 0);  // whole chapters (ch. 2 not held out)

  // The English paragraph left untranslated in es-ES is not Spanish text.
  const std::string es_text = read_all(root / "out" / by_name["handbook.es"].text_path);
  EXPECT_EQ(es_text.find("never translated"), std::string::npos);
  EXPECT_NE(read_all(root / "out" / by_name["handbook.en"].text_path).find("never translated"),
            std::string::npos);
  EXPECT_EQ(es_text.find("Next"), std::string::npos);  // navigation stripped

  const auto tok = SentencePieceTokenizer::open(loaded.tokenizer);
  const int32_t en_tag = tok->token_to_id("<lang:en>");
  const int32_t es_tag = tok->token_to_id("<lang:es>");
  const int32_t tr_tag = tok->token_to_id(kTranslateTag);
  ASSERT_GE(en_tag, 0);
  ASSERT_GE(es_tag, 0);
  ASSERT_GE(tr_tag, 0);
  int64_t tokens = 0;
  for (const auto& s : loaded.sources) {
    for (const auto* split : {&s.train, &s.valid}) {
      const IndexedDataset ds = IndexedDataset::open((root / "out" / split->prefix).string());
      EXPECT_EQ(ds.num_documents(), split->documents) << split->prefix;
      EXPECT_EQ(ds.num_tokens(), split->tokens) << split->prefix;
      tokens += ds.num_tokens();
      if (ds.num_documents() == 0) continue;
      const auto doc = ds.get(0);
      EXPECT_EQ(doc.back(), loaded.eos_id);
      if (s.task == "translate") {
        EXPECT_EQ(doc[0], tr_tag);
        EXPECT_TRUE(doc[1] == en_tag || doc[1] == es_tag);
        int tags = 0;
        for (int32_t id : doc) tags += id == en_tag || id == es_tag;
        EXPECT_EQ(tags, 2);
      } else {
        EXPECT_EQ(doc[0], s.language == "en" ? en_tag : es_tag) << s.name;
      }
    }
  }
  EXPECT_GT(tokens, 10000);
  const auto j = nlohmann::json::parse(read_all(root / "out" / "corpus.json"));
  EXPECT_EQ(j["tags"]["translate"], kTranslateTag);
  EXPECT_GT(j["languages"]["en"]["train_tokens"].get<int64_t>(), 0);

  // Bad input: a missing handbook directory names it; the old corpus stays.
  o.handbook_dir = (root / "nope").string();
  try {
    prepare_corpus(o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("debian-handbook"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(root / "out" / "corpus.json"));
  write_all(root / "bad" / "corpus.json",
            R"({"tokenizer": "t.model", "vocab_size": 5, "sources": [{"name": "x"}]})");
  try {
    load_corpus_manifest((root / "bad").string());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sources[0].language"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moex::data
