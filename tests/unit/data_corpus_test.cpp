// Corpus building on a tiny synthetic input (not the Debian packages): HTML text extraction,
// diatheke output parsing, and the whole pipeline to .bin/.idx and corpus.json.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
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

// Six handbook pages in en and es (one paragraph left untranslated) and 30 Bible chapters of five
// verses (one verse missing in es) under `root`; returns options that read them.
CorpusOptions write_synthetic_input(const fs::path& root) {
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
  return o;
}

TEST(Corpus, BuildsFromSyntheticInput) {
  const fs::path root = fs::temp_directory_path() / ("moex_corpus_" + std::to_string(::getpid()));
  CorpusOptions o = write_synthetic_input(root);
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

// --denoise: a "<source>.denoise" source beside each monolingual one. Every example reads as
// docs/data.md says; with its spans put back it is a run of one document's text in the same split
// (valid examples come from held-out documents only); about 15% of the tokens are masked; and the
// same seed writes the same examples.
TEST(Corpus, DenoiseSourcesBesideEachMonolingualOne) {
  const fs::path root =
      fs::temp_directory_path() / ("moex_corpus_denoise_" + std::to_string(::getpid()));
  CorpusOptions o = write_synthetic_input(root);
  o.denoise = true;
  o.denoise_options.chunk_tokens = 48;
  const CorpusManifest m = prepare_corpus(o);
  const auto tok = SentencePieceTokenizer::open(m.tokenizer);
  const int32_t task = tok->token_to_id(kDenoiseTag), sep = tok->token_to_id(kDenoiseTargetsTag);
  ASSERT_GE(task, 0);
  ASSERT_GE(sep, 0);
  std::map<int32_t, int> sentinel;  // id -> span index
  for (int i = 0; i < o.denoise_options.max_spans; ++i) {
    const int32_t id = tok->token_to_id(span_sentinel(i));
    ASSERT_GE(id, 0) << span_sentinel(i);
    sentinel[id] = i;
  }
  std::map<std::string, CorpusSource> by_name;
  for (const auto& s : m.sources) by_name[s.name] = s;
  ASSERT_EQ(m.sources.size(), 9u);  // the five of BuildsFromSyntheticInput + 4 denoise
  EXPECT_FALSE(by_name.count("bible.en-es.denoise"));
  int64_t masked = 0, text_tokens = 0;
  for (const char* lm : {"handbook.en", "handbook.es", "bible.en", "bible.es"}) {
    const CorpusSource& d = by_name[std::string(lm) + ".denoise"];
    const CorpusSource& src = by_name[lm];
    EXPECT_EQ(d.task, "denoise");
    EXPECT_EQ(d.language, src.language);
    const int32_t lang = tok->token_to_id(language_tag(src.language));
    for (const auto& [dsplit, ssplit] :
         {std::make_pair(&d.train, &src.train), std::make_pair(&d.valid, &src.valid)}) {
      const IndexedDataset ds = IndexedDataset::open((root / "out" / dsplit->prefix).string());
      const IndexedDataset docs = IndexedDataset::open((root / "out" / ssplit->prefix).string());
      EXPECT_EQ(ds.num_tokens(), dsplit->tokens);
      EXPECT_EQ(docs.num_documents() > 0, ds.num_documents() > 0) << dsplit->prefix;
      for (int64_t e = 0; e < ds.num_sequences(); ++e) {
        const std::vector<int32_t> ex = ds.get(e);
        ASSERT_GE(ex.size(), 5u);
        EXPECT_EQ(ex[0], task);
        EXPECT_EQ(ex[1], lang);
        EXPECT_EQ(ex.back(), m.eos_id);
        const auto at = std::find(ex.begin(), ex.end(), sep);
        ASSERT_NE(at, ex.end());
        std::vector<std::vector<int32_t>> spans;
        for (auto it = at + 1; it != ex.end() - 1; ++it) {
          if (sentinel.count(*it))
            spans.emplace_back();
          else if (!spans.empty())
            spans.back().push_back(*it);
        }
        std::vector<int32_t> restored;
        for (auto it = ex.begin() + 2; it != at; ++it) {
          if (!sentinel.count(*it)) {
            restored.push_back(*it);
            continue;
          }
          const auto& span = spans.at(static_cast<size_t>(sentinel[*it]));
          restored.insert(restored.end(), span.begin(), span.end());
          masked += static_cast<int64_t>(span.size());
        }
        text_tokens += static_cast<int64_t>(restored.size());
        // A contiguous run of one document of the same split.
        bool found = false;
        for (int64_t k = 0; k < docs.num_sequences() && !found; ++k) {
          const std::vector<int32_t> doc = docs.get(k);
          found =
              std::search(doc.begin(), doc.end(), restored.begin(), restored.end()) != doc.end();
        }
        EXPECT_TRUE(found) << dsplit->prefix << " example " << e;
      }
    }
  }
  EXPECT_NEAR(double(masked) / double(text_tokens), 0.15, 0.02);
  const auto j = nlohmann::json::parse(read_all(root / "out" / "corpus.json"));
  EXPECT_EQ(j["tags"]["denoise"], kDenoiseTag);
  EXPECT_EQ(j["denoise"]["chunk_tokens"], 48);

  // The same seed gives the same examples.
  const std::string first = read_all(root / "out" / "bible.en.denoise.train.bin");
  prepare_corpus(o);
  EXPECT_EQ(read_all(root / "out" / "bible.en.denoise.train.bin"), first);
  fs::remove_all(root);
}

}  // namespace
}  // namespace moex::data
