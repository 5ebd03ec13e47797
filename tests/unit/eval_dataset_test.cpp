// moex eval --data (eval/dataset_eval.h): perplexity over a corpus split against a naive
// window-by-window cross-entropy of the model's logits, and greedy translation against a naive
// argmax loop over full recomputed logits, with a tokenizer whose decoding is plain to see.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "data/indexed_dataset.h"
#include "eval/bleu.h"
#include "eval/chrf.h"
#include "eval/dataset_eval.h"
#include "train_fixture.h"

namespace moex::eval {
namespace {

namespace fs = std::filesystem;

ModelConfig dense_config() {
  return ModelConfig::from_json(JsonReader::from_string(
      R"({"vocab_size": 40, "hidden_size": 16, "num_layers": 2, "num_heads": 2,
          "max_seq_len": 32, "ffn_size": 24, "init_std": 0.3})",
      "test model"));
}

// Naive: log-softmax of one row in double.
double row_ce(const float* logits, int64_t vocab, int32_t target) {
  double mx = logits[0];
  for (int64_t c = 1; c < vocab; ++c) mx = std::max(mx, static_cast<double>(logits[c]));
  double sum = 0;
  for (int64_t c = 0; c < vocab; ++c) sum += std::exp(logits[c] - mx);
  return mx + std::log(sum) - logits[target];
}

// Naive windows over `tokens`: up to 16 predictions from every 16th token, each window run on its
// own through the model's logits; adds the cross-entropy of the targets `keep` accepts (all when
// null) to *sum and their number to *count.
void add_window_ce(model::Model& model, const std::vector<int32_t>& tokens, double* sum,
                   int64_t* count, bool (*keep)(int32_t) = nullptr) {
  for (size_t start = 0; start + 1 < tokens.size(); start += 16) {
    const int64_t len = std::min<int64_t>(16, static_cast<int64_t>(tokens.size() - 1 - start));
    std::vector<float> logits(static_cast<size_t>(len * 40));
    model.logits(tokens.data() + start, 1, len, logits.data());
    for (int64_t t = 0; t < len; ++t) {
      const int32_t target = tokens[start + t + 1];
      if (keep != nullptr && !keep(target)) continue;
      *sum += row_ce(&logits[t * 40], 40, target);
      ++*count;
    }
  }
}

bool even(int32_t id) {
  return id % 2 == 0;
}

TEST(DatasetEval, PerplexityIsTheCrossEntropyOfEveryTokenAfterTheFirst) {
  const fs::path dir = moex::testing::make_temp_corpus("moex_eval_ppl");
  const data::CorpusManifest corpus = data::load_corpus_manifest(dir.string());
  model::Model model(dense_config());
  model.init_weights(5);
  DatasetEvalOptions o;
  o.seq_len = 16;
  o.batch = 3;
  const DatasetEval got = evaluate_dataset(model, corpus, nullptr, o);
  ASSERT_EQ(got.sources.size(), 2u);
  double all = 0;
  int64_t all_count = 0;
  for (size_t i = 0; i < corpus.sources.size(); ++i) {
    const data::IndexedDataset ds =
        data::IndexedDataset::open(corpus.dir + "/" + corpus.sources[i].valid.prefix);
    std::vector<int32_t> stream;
    for (int64_t s = 0; s < ds.num_sequences(); ++s) {
      const auto part = ds.get(s);
      stream.insert(stream.end(), part.begin(), part.end());
    }
    double sum = 0;
    int64_t count = 0;
    add_window_ce(model, stream, &sum, &count);
    EXPECT_EQ(got.sources[i].name, corpus.sources[i].name);
    EXPECT_EQ(got.sources[i].tokens, static_cast<int64_t>(stream.size()) - 1);
    EXPECT_EQ(got.sources[i].tokens, count);
    EXPECT_NEAR(got.sources[i].loss, sum / count, 1e-5 * sum / count);
    EXPECT_NEAR(got.sources[i].perplexity, std::exp(sum / count), 1e-4 * std::exp(sum / count));
    EXPECT_EQ(got.sources[i].bleu, -1.0);
    all += sum;
    all_count += count;
  }
  EXPECT_EQ(got.tokens, all_count);
  EXPECT_NEAR(got.loss, all / all_count, 1e-5 * all / all_count);
  fs::remove_all(dir);
}

// --no-packing: each document alone, windows of up to 16 predictions from its first token, so the
// first token of a document is never predicted and no window reads the document before it.
TEST(DatasetEval, WithoutPackingEachDocumentIsReadAlone) {
  const fs::path dir = moex::testing::make_temp_corpus("moex_eval_docs");
  const data::CorpusManifest corpus = data::load_corpus_manifest(dir.string());
  model::Model model(dense_config());
  model.init_weights(5);
  DatasetEvalOptions o;
  o.seq_len = 16;
  o.batch = 3;
  o.packing = false;
  const DatasetEval got = evaluate_dataset(model, corpus, nullptr, o);
  o.packing = true;
  const DatasetEval packed = evaluate_dataset(model, corpus, nullptr, o);
  ASSERT_EQ(got.sources.size(), 2u);
  for (size_t i = 0; i < corpus.sources.size(); ++i) {
    const data::IndexedDataset ds =
        data::IndexedDataset::open(corpus.dir + "/" + corpus.sources[i].valid.prefix);
    ASSERT_GT(ds.num_sequences(), 1);
    double sum = 0;
    int64_t count = 0;
    for (int64_t d = 0; d < ds.num_sequences(); ++d) add_window_ce(model, ds.get(d), &sum, &count);
    EXPECT_EQ(got.sources[i].tokens, count);
    EXPECT_LT(got.sources[i].tokens, packed.sources[i].tokens);
    EXPECT_NEAR(got.sources[i].loss, sum / count, 1e-5 * sum / count);
  }
  fs::remove_all(dir);
}

// With a loss mask beside a split (chat data), only the targets marked 1 count: here the even
// tokens, against the same naive cross-entropy.
TEST(DatasetEval, ALossMaskCountsOnlyTheMarkedTargets) {
  const fs::path dir = moex::testing::make_temp_corpus("moex_eval_mask");
  data::CorpusManifest corpus = data::load_corpus_manifest(dir.string());
  model::Model model(dense_config());
  model.init_weights(5);
  double sum = 0;
  int64_t count = 0;
  for (data::CorpusSource& source : corpus.sources) {
    const data::IndexedDataset ds =
        data::IndexedDataset::open(corpus.dir + "/" + source.valid.prefix);
    source.valid.mask_prefix = source.valid.prefix + ".mask";
    data::IndexedDatasetBuilder marks(corpus.dir + "/" + source.valid.mask_prefix,
                                      data::TokenDType::kU16);
    std::vector<int32_t> stream;
    for (int64_t s = 0; s < ds.num_sequences(); ++s) {
      const auto part = ds.get(s);
      std::vector<int32_t> mask;
      for (int32_t id : part) mask.push_back(even(id));
      marks.add_document(mask);
      stream.insert(stream.end(), part.begin(), part.end());
    }
    marks.finish();
    add_window_ce(model, stream, &sum, &count, even);
  }
  DatasetEvalOptions o;
  o.seq_len = 16;
  o.batch = 3;
  const DatasetEval got = evaluate_dataset(model, corpus, nullptr, o);
  ASSERT_GT(count, 0);
  EXPECT_EQ(got.tokens, count);
  EXPECT_NEAR(got.loss, sum / count, 1e-5 * sum / count);
  fs::remove_all(dir);
}

// Ids 0..35 are words "w<id>", 36 <task:translate>, 37 <lang:en>, 38 <lang:es>, 39 EOS.
class WordTokenizer : public data::Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view, bool) const override { return {}; }
  std::string decode(const std::vector<int32_t>& ids, bool) const override {
    std::string out;
    for (const int32_t id : ids) {
      if (id == kEos) continue;
      if (!out.empty()) out += ' ';
      out += id_to_token(id);
    }
    return out;
  }
  std::string decode_bytes(const std::vector<int32_t>& ids) const override {
    return decode(ids, false);
  }
  int64_t vocab_size() const override { return 40; }
  int32_t bos_id() const override { return -1; }
  int32_t eos_id() const override { return kEos; }
  int32_t token_to_id(const std::string& t) const override {
    return t == "<task:translate>" ? 36 : t == "<lang:en>" ? 37 : t == "<lang:es>" ? 38 : -1;
  }
  std::string id_to_token(int32_t id) const override {
    const char* tags[] = {"<task:translate>", "<lang:en>", "<lang:es>", "</s>"};
    return id >= 36 ? tags[id - 36] : "w" + std::to_string(id);
  }
  bool is_special(int32_t id) const override { return id == kEos; }
  static constexpr int32_t kEos = 39;
};

TEST(DatasetEval, GreedyTranslationsAreScoredAgainstTheTargets) {
  const fs::path dir = fs::temp_directory_path() / ("moex_eval_mt_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // Five documents [<task:translate>, <lang:X>, source..., <lang:Y>, target..., EOS].
  std::vector<std::vector<int32_t>> docs;
  data::IndexedDatasetBuilder builder((dir / "mt.valid").string(), data::TokenDType::kU16);
  int64_t tokens = 0;
  for (int d = 0; d < 5; ++d) {
    const bool en_first = d % 2 == 0;
    std::vector<int32_t> doc = {36, en_first ? 37 : 38};
    for (int i = 0; i < 3 + d % 3; ++i) doc.push_back((d * 7 + i * 5) % 36);
    doc.push_back(en_first ? 38 : 37);
    for (int i = 0; i < 2 + d % 2; ++i) doc.push_back((d * 11 + i * 3) % 36);
    doc.push_back(WordTokenizer::kEos);
    builder.add_document(doc);
    tokens += static_cast<int64_t>(doc.size());
    docs.push_back(doc);
  }
  builder.finish();
  data::CorpusManifest corpus;
  corpus.dir = dir.string();
  corpus.vocab_size = 40;
  corpus.eos_id = WordTokenizer::kEos;
  data::CorpusSource source;
  source.name = "bible.en-es";
  source.language = "en-es";
  source.task = "translate";
  source.valid.prefix = "mt.valid";
  source.valid.tokens = tokens;
  corpus.sources.push_back(source);

  model::Model model(dense_config());
  model.init_weights(8);
  const WordTokenizer tok;
  DatasetEvalOptions o;
  o.max_translations = 4;
  o.max_new_tokens = 6;
  const DatasetEval got = evaluate_dataset(model, corpus, &tok, o);
  ASSERT_EQ(got.sources.size(), 1u);
  const SourceEval& s = got.sources[0];
  ASSERT_EQ(s.translations.size(), 4u);
  std::vector<std::string> hyps, refs;
  for (int d = 0; d < 4; ++d) {
    const std::vector<int32_t>& doc = docs[d];
    const size_t k = static_cast<size_t>(
        std::find(doc.begin() + 2, doc.end(), d % 2 == 0 ? 38 : 37) - doc.begin());
    // Naive greedy: the argmax of the last row of the full sequence's logits, again and again.
    std::vector<int32_t> seq(doc.begin(), doc.begin() + k + 1), hyp;
    for (int step = 0; step < 6; ++step) {
      std::vector<float> logits(seq.size() * 40);
      model.logits(seq.data(), 1, static_cast<int64_t>(seq.size()), logits.data());
      const float* last = &logits[(seq.size() - 1) * 40];
      const int32_t next = static_cast<int32_t>(std::max_element(last, last + 40) - last);
      if (next == WordTokenizer::kEos) break;
      hyp.push_back(next);
      seq.push_back(next);
    }
    const std::vector<int32_t> target(doc.begin() + k + 1, doc.end() - 1);
    EXPECT_EQ(s.translations[d].hypothesis, tok.decode(hyp, true)) << "document " << d;
    EXPECT_EQ(s.translations[d].reference, tok.decode(target, true)) << "document " << d;
    EXPECT_EQ(s.translations[d].source_text,
              tok.decode(std::vector<int32_t>(doc.begin() + 2, doc.begin() + k), true));
    hyps.push_back(tok.decode(hyp, true));
    refs.push_back(tok.decode(target, true));
  }
  EXPECT_TRUE(std::any_of(hyps.begin(), hyps.end(), [](const std::string& h) {
    return !h.empty();
  })) << "the random model should emit something before EOS";
  EXPECT_EQ(s.bleu, corpus_bleu(hyps, {refs}).score);
  EXPECT_EQ(s.chrf, corpus_chrf(hyps, {refs}));
  fs::remove_all(dir);
}

TEST(DatasetEval, SplitTranslationNeedsTwoLanguageTags) {
  std::vector<int32_t> prompt, target;
  EXPECT_TRUE(split_translation({36, 37, 1, 2, 38, 3, 4, 39}, 37, 38, 39, &prompt, &target));
  EXPECT_EQ(prompt, (std::vector<int32_t>{36, 37, 1, 2, 38}));
  EXPECT_EQ(target, (std::vector<int32_t>{3, 4}));
  EXPECT_FALSE(split_translation({36, 37, 1, 2, 3, 39}, 37, 38, 39, &prompt, &target));
  EXPECT_FALSE(split_translation({36, 1, 37, 2, 38, 3}, 37, 38, 39, &prompt, &target));
  EXPECT_FALSE(split_translation({36, 37, 1, 38, 39}, 37, 38, 39, &prompt, &target));
}

}  // namespace
}  // namespace moex::eval
