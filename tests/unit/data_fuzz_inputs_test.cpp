// Fuzzing of the data inputs read from outside (docs/fuzzing.md): tokenizer.json (with its
// tokenizer_config.json) and Megatron .idx/.bin pairs. Seeded mutations of valid inputs must
// load (and then encode, decode and read without crashing) or end in moex::Error.
#include <gtest/gtest.h>

#include <map>

#include "core/json_reader.h"
#include "data/indexed_dataset.h"
#include "data/tokenizer_json.h"
#include "fuzz_harness.h"

namespace moex::data {
namespace {

namespace fs = std::filesystem;
using fuzz::Rng;
using nlohmann::json;

// ---- tokenizer.json ----

// A fixture's tokenizer.json cut down to its first `keep` ids and the merges among them, with
// the rest of its pipeline (normalizer, pre-tokenizer, post-processor, decoder, added tokens)
// unchanged: small enough to parse hundreds of times in a test.
std::string trimmed_tokenizer(const std::string& name, int32_t keep) {
  const fs::path dir = fs::path(MOEX_SOURCE_DIR) / "tests/fixtures/tokenizers" / name;
  json root = json::parse(fuzz::read_bytes(dir / "tokenizer.json"));
  json& model = root["model"];
  json vocab = json::object();
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it)
    if (it.value().get<int32_t>() < keep) vocab[it.key()] = it.value();
  json merges = json::array();
  for (const json& m : model["merges"]) {
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      left = s.substr(0, s.find(' '));
      right = s.substr(s.find(' ') + 1);
    } else {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    }
    if (vocab.contains(left) && vocab.contains(right) && vocab.contains(left + right))
      merges.push_back(m);
  }
  model["vocab"] = vocab;
  model["merges"] = merges;
  return root.dump(1);
}

struct TokenizerSeed {
  std::string name, json_text, config_text;
};

const std::vector<TokenizerSeed>& tokenizer_seeds() {
  static const std::vector<TokenizerSeed> kSeeds = [] {
    std::vector<TokenizerSeed> seeds;
    for (const auto& [name, keep] : std::vector<std::pair<std::string, int32_t>>{
             {"gpt2", 600}, {"llama2", 700}, {"qwen2_5", 600}}) {
      const fs::path config =
          fs::path(MOEX_SOURCE_DIR) / "tests/fixtures/tokenizers" / name / "tokenizer_config.json";
      seeds.push_back({name, trimmed_tokenizer(name, keep), fuzz::read_bytes(config)});
    }
    return seeds;
  }();
  return kSeeds;
}

// Parses, then encodes a mixed text and decodes the ids back, and decodes a few arbitrary ids
// (an id outside the vocabulary is a moex::Error of its own).
void exercise_tokenizer(const std::string& text, const std::string& config,
                        const std::string& source) {
  const auto tok = parse_tokenizer_json(text, source, config);
  for (const char* sample : {"Hello world! It's 2024, naïve café — 中文 テスト \t\n  x",
                             "<|endoftext|><s></s> lots   of   spaces\r\n\xF0\x9F\x98\x80", "", " ",
                             "\xff\xfe invalid utf-8 \xc3"}) {
    const std::vector<int32_t> ids = tok->encode(sample);
    tok->decode(ids);
    tok->decode(ids, false);
  }
  for (int32_t id : {0, 1, 2, 3, 255, 256, static_cast<int32_t>(tok->vocab_size()) - 1}) {
    try {
      tok->decode({id});
      tok->id_to_token(id);
    } catch (const Error&) {
    }
  }
}

TEST(FuzzTokenizerJson, MutatedFilesLoadOrFailWithMoexError) {
  const std::string target = "tokenizer_json";
  const fs::path dir = fuzz::scratch_dir(target);
  fuzz::Stats stats;
  // Corpus: <name>.json (a tokenizer.json, parsed with no tokenizer_config.json).
  size_t corpus_cases = 0;
  for (const fs::path& f : fuzz::corpus(target)) {
    ++corpus_cases;
    const std::string text = fuzz::read_bytes(f);
    fuzz::run_case(
        target, f.filename().string(), text, [&] { exercise_tokenizer(text, "", f.string()); },
        &stats);
  }
  fuzz::expect_corpus_rejected(target, corpus_cases, stats);
  for (const TokenizerSeed& s : tokenizer_seeds())
    ASSERT_NO_THROW(exercise_tokenizer(s.json_text, s.config_text, s.name)) << s.name;
  const int64_t n = fuzz::iterations(250);
  for (int64_t i = 0; i < n; ++i) {
    Rng rng = fuzz::case_rng(target, i);
    const TokenizerSeed& seed = rng.pick(tokenizer_seeds());
    std::string text = seed.json_text, config = seed.config_text;
    if (rng.coin(5))
      config = fuzz::mutate(config, rng, true);
    else
      text = fuzz::mutate(text, rng, true);
    const std::string name = "iter" + std::to_string(i) + "_" + seed.name;
    // On disk too, so that a crash leaves the input behind.
    fuzz::write_bytes(dir / "tokenizer.json", text);
    fuzz::write_bytes(dir / "tokenizer_config.json", config);
    fuzz::run_case(
        target, name + ".json", text,
        [&] { exercise_tokenizer(text, config, (dir / "tokenizer.json").string()); }, &stats);
  }
  fuzz::report(target, stats);
  EXPECT_GT(stats.errors, 0);
  EXPECT_GT(stats.loaded, 0);
}

// ---- .idx / .bin ----

struct DatasetSeed {
  std::string idx, bin;
};

// One dataset per token dtype, with documents of several sequences, and one with Megatron's
// trailing sequence_modes bytes.
std::vector<DatasetSeed> dataset_seeds() {
  const fs::path dir = fuzz::scratch_dir("indexed_dataset_seeds");
  std::vector<DatasetSeed> seeds;
  int k = 0;
  for (TokenDType dtype :
       {TokenDType::kU8, TokenDType::kI8, TokenDType::kI16, TokenDType::kU16, TokenDType::kI32,
        TokenDType::kI64, TokenDType::kF32, TokenDType::kF64}) {
    const std::string prefix = (dir / ("seed" + std::to_string(k++))).string();
    IndexedDatasetBuilder b(prefix, dtype);
    for (int d = 0; d < 4; ++d) {
      for (int s = 0; s <= d % 2; ++s) {
        std::vector<int32_t> ids;
        for (int t = 0; t < 3 + d + s; ++t) ids.push_back((d * 31 + s * 7 + t) % 100);
        b.add_sequence(ids.data(), ids.size());
      }
      b.end_document();
    }
    b.finish();
    seeds.push_back({fuzz::read_bytes(prefix + ".idx"), fuzz::read_bytes(prefix + ".bin")});
  }
  DatasetSeed modes = seeds[3];
  uint64_t seq_count = 0;
  std::memcpy(&seq_count, modes.idx.data() + 18, 8);
  modes.idx.append(seq_count, '\0');
  seeds.push_back(modes);
  return seeds;
}

// Overwrites a header field or an entry of sizes/pointers/document_indices with an interesting
// value, so that the checks behind the magic and the counts are reached.
std::string mutate_index_field(std::string idx, Rng& rng) {
  if (idx.size() < 34) return fuzz::mutate_bytes(std::move(idx), rng);
  uint64_t seq_count = 0;
  std::memcpy(&seq_count, idx.data() + 18, 8);
  std::vector<std::pair<size_t, size_t>> fields = {{9, 8}, {17, 1}, {18, 8}, {26, 8}};
  const size_t arrays = 34;
  for (uint64_t i = 0; i < seq_count && arrays + seq_count * 12 <= idx.size(); ++i) {
    fields.push_back({arrays + 4 * i, 4});                  // sizes[i]
    fields.push_back({arrays + seq_count * 4 + 8 * i, 8});  // pointers[i]
  }
  for (size_t off = arrays + seq_count * 12; off + 8 <= idx.size(); off += 8)
    fields.push_back({off, 8});  // document_indices
  const auto [offset, width] = rng.pick(fields);
  uint64_t w = rng.pick(fuzz::interesting_words());
  if (rng.coin(3)) {  // a nearby value: off by one or a token's width
    uint64_t old = 0;
    std::memcpy(&old, idx.data() + offset, width);
    w = old + rng.below(17) - 8;
  }
  std::memcpy(&idx[offset], &w, width);
  return idx;
}

void exercise_dataset(const std::string& prefix) {
  const auto ds = std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix));
  int64_t tokens = 0;
  for (int64_t i = 0; i < ds->num_sequences(); ++i) tokens += ds->get(i).size();
  EXPECT_EQ(tokens, ds->num_tokens());
  GPTSampler sampler(ds, 4, 7);
  std::vector<int32_t> out(5);
  for (int s = 0; s < 2 * sampler.samples_per_epoch() + 1; ++s) sampler.next(out.data());
}

TEST(FuzzIndexedDataset, MutatedPairsLoadOrFailWithMoexError) {
  const std::string target = "indexed_dataset";
  const std::string prefix = (fuzz::scratch_dir(target) / "case").string();
  fuzz::Stats stats;
  // Corpus: <name>.idx with <name>.bin beside it.
  size_t corpus_cases = 0;
  for (const fs::path& f : fuzz::corpus(target)) {
    if (f.extension() != ".idx") continue;
    ++corpus_cases;
    fs::path bin = f;
    bin.replace_extension(".bin");
    const std::string idx = fuzz::read_bytes(f);
    fuzz::write_bytes(prefix + ".idx", idx);
    fuzz::write_bytes(prefix + ".bin", fuzz::read_bytes(bin));
    fuzz::run_case(
        target, f.filename().string(), idx, [&] { exercise_dataset(prefix); }, &stats);
  }
  fuzz::expect_corpus_rejected(target, corpus_cases, stats);
  const std::vector<DatasetSeed> seeds = dataset_seeds();
  for (const DatasetSeed& s : seeds) {
    fuzz::write_bytes(prefix + ".idx", s.idx);
    fuzz::write_bytes(prefix + ".bin", s.bin);
    ASSERT_NO_THROW(exercise_dataset(prefix));
  }
  const int64_t n = fuzz::iterations(800);
  for (int64_t i = 0; i < n; ++i) {
    Rng rng = fuzz::case_rng(target, i);
    DatasetSeed s = rng.pick(seeds);
    switch (rng.below(4)) {
      case 0:
      case 1:
        s.idx = mutate_index_field(s.idx, rng);
        break;
      case 2:
        s.idx = fuzz::mutate(s.idx, rng, false);
        break;
      default:
        s.bin = fuzz::mutate(s.bin, rng, false);
        break;
    }
    fuzz::write_bytes(prefix + ".idx", s.idx);
    fuzz::write_bytes(prefix + ".bin", s.bin);
    const std::string name = "iter" + std::to_string(i);
    const int64_t failures = stats.failures;
    fuzz::run_case(
        target, name + ".idx", s.idx, [&] { exercise_dataset(prefix); }, &stats);
    if (stats.failures > failures) fuzz::save_failure(target, name + ".bin", s.bin);
  }
  fuzz::report(target, stats);
  EXPECT_GT(stats.errors, 0);
  EXPECT_GT(stats.loaded, 0);
}

}  // namespace
}  // namespace moex::data
