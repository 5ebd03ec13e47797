// Fuzzing of safetensors files and sharded-checkpoint indexes (docs/fuzzing.md): seeded
// mutations of valid files must load or end in moex::Error, never crash or throw anything else.
#include <gtest/gtest.h>

#include <map>

#include "fuzz_harness.h"
#include "io/safetensors.h"

namespace moex::io {
namespace {

namespace fs = std::filesystem;
using fuzz::Rng;

// Touches every byte and converted value of every tensor (so ASan sees any read past the data).
void exercise(const SafetensorsFile& f) {
  double sum = 0;
  for (const std::string& name : f.names()) {
    const SafetensorsEntry& e = f.entry(name);
    const Tensor v = f.view(name);
    const Tensor c = f.copy(name);
    EXPECT_EQ(v.nbytes(), e.end - e.begin);
    EXPECT_EQ(c.nbytes(), v.nbytes());
    const auto* bytes = static_cast<const uint8_t*>(v.raw_data());
    for (size_t i = 0; i < v.nbytes(); ++i) sum += bytes[i];
    const Tensor t = f.to_f32(name);
    for (int64_t i = 0; i < t.numel(); ++i) sum += t.data<float>()[i];
    try {
      f.weight_f32(name);
    } catch (const Error&) {  // integer tensors are not weights
    }
  }
  EXPECT_FALSE(sum != sum && sum == 0);  // keeps the reads
}

// Seeds: the torch-written file of every dtype and files moex writes (metadata, BOOL, empty).
std::vector<std::string> seeds() {
  std::vector<std::string> out;
  out.push_back(fuzz::read_bytes(fs::path(MOEX_SOURCE_DIR) / "tests/fixtures/io" /
                                 "torch_all_dtypes.safetensors"));
  const fs::path dir = fuzz::scratch_dir("safetensors_seeds");
  std::map<std::string, Tensor> tensors;
  Tensor a = Tensor::empty(Shape{2, 3}, DType::kF32);
  for (int i = 0; i < 6; ++i) a.data<float>()[i] = 0.5f * static_cast<float>(i);
  tensors["a"] = a;
  Tensor b = Tensor::empty(Shape{4}, DType::kBF16);
  for (int i = 0; i < 4; ++i) {
    const uint16_t bits = static_cast<uint16_t>(0x3F80 + i);
    std::memcpy(static_cast<uint8_t*>(b.raw_data()) + 2 * i, &bits, 2);
  }
  tensors["b"] = b;
  Tensor ids = Tensor::empty(Shape{3}, DType::kI64);
  for (int i = 0; i < 3; ++i) ids.data<int64_t>()[i] = i - 1;
  tensors["ids"] = ids;
  Tensor mask = Tensor::empty(Shape{5}, DType::kU8);
  for (int i = 0; i < 5; ++i) mask.data<uint8_t>()[i] = static_cast<uint8_t>(i % 2);
  tensors["mask"] = mask;
  tensors["empty"] = Tensor::empty(Shape{0, 4}, DType::kF16);
  Tensor h = Tensor::empty(Shape{2}, DType::kF16);
  std::memset(h.raw_data(), 0x3C, h.nbytes());
  tensors["h"] = h;
  SafetensorsSaveOptions opts;
  opts.metadata = {{"format", "pt"}, {"note", "fuzz seed"}};
  opts.bool_tensors = {"mask"};
  save_safetensors((dir / "moex.safetensors").string(), tensors, opts);
  out.push_back(fuzz::read_bytes(dir / "moex.safetensors"));
  return out;
}

// Mutates the 8-byte length, the JSON header or the data; the header is usually rewritten with
// a consistent length so that the JSON checks are reached.
std::string mutate_file(const std::string& file, Rng& rng) {
  if (file.size() < 8 || rng.coin(4)) return fuzz::mutate(file, rng, false);
  uint64_t len = 0;
  std::memcpy(&len, file.data(), 8);
  if (len > file.size() - 8) return fuzz::mutate(file, rng, false);
  std::string header = file.substr(8, len);
  std::string data = file.substr(8 + len);
  switch (rng.below(4)) {
    case 0:
      data = fuzz::mutate(data, rng, false);
      break;
    case 1: {
      std::string out = file;
      const uint64_t w = rng.pick(fuzz::interesting_words());
      std::memcpy(&out[0], &w, 8);
      return out;
    }
    default:
      header = fuzz::mutate(header, rng, true);
      break;
  }
  std::string out(8, '\0');
  uint64_t new_len = header.size();
  std::memcpy(&out[0], &new_len, 8);
  return out + header + data;
}

TEST(FuzzSafetensors, MutatedFilesLoadOrFailWithMoexError) {
  const std::string target = "safetensors";
  const fs::path dir = fuzz::scratch_dir(target);
  const fs::path path = dir / "case.safetensors";
  fuzz::Stats stats;
  auto load = [&] { exercise(SafetensorsFile::open(path.string())); };
  size_t corpus_cases = 0;
  for (const fs::path& f : fuzz::corpus(target)) {
    ++corpus_cases;
    const std::string bytes = fuzz::read_bytes(f);
    fuzz::write_bytes(path, bytes);
    fuzz::run_case(target, f.filename().string(), bytes, load, &stats);
  }
  fuzz::expect_corpus_rejected(target, corpus_cases, stats);
  const std::vector<std::string> seed_files = seeds();
  for (const std::string& s : seed_files) {
    fuzz::write_bytes(path, s);
    ASSERT_NO_THROW(load()) << "a seed must load";
  }
  const int64_t n = fuzz::iterations(1000);
  for (int64_t i = 0; i < n; ++i) {
    Rng rng = fuzz::case_rng(target, i);
    const std::string input = mutate_file(rng.pick(seed_files), rng);
    fuzz::write_bytes(path, input);
    fuzz::run_case(target, "iter" + std::to_string(i) + ".safetensors", input, load, &stats);
  }
  fuzz::report(target, stats);
  EXPECT_GT(stats.errors, 0);
  EXPECT_GT(stats.loaded, 0);
}

// model.safetensors.index.json of a sharded checkpoint (the Qwen2-MoE fixture's five shards).
TEST(FuzzSafetensors, MutatedShardIndexesLoadOrFailWithMoexError) {
  const std::string target = "safetensors_index";
  const fs::path fixture = fs::path(MOEX_SOURCE_DIR) / "tests/fixtures/hf/qwen2_moe/model";
  const fs::path dir = fuzz::scratch_dir(target);
  for (const auto& e : fs::directory_iterator(fixture))
    if (e.path().extension() == ".safetensors")
      fs::copy_file(e.path(), dir / e.path().filename(), fs::copy_options::overwrite_existing);
  const fs::path index = dir / kSafetensorsIndexName;
  fuzz::Stats stats;
  auto load = [&] {
    const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(index.string());
    for (const std::string& name : ckpt.names()) ckpt.entry(name);
  };
  size_t corpus_cases = 0;
  for (const fs::path& f : fuzz::corpus(target)) {
    ++corpus_cases;
    const std::string bytes = fuzz::read_bytes(f);
    fuzz::write_bytes(index, bytes);
    fuzz::run_case(target, f.filename().string(), bytes, load, &stats);
  }
  fuzz::expect_corpus_rejected(target, corpus_cases, stats);
  const std::string seed = fuzz::read_bytes(fixture / kSafetensorsIndexName);
  fuzz::write_bytes(index, seed);
  ASSERT_NO_THROW(load());
  const int64_t n = fuzz::iterations(400);
  for (int64_t i = 0; i < n; ++i) {
    Rng rng = fuzz::case_rng(target, i);
    const std::string input = fuzz::mutate(seed, rng, true);
    fuzz::write_bytes(index, input);
    fuzz::run_case(target, "iter" + std::to_string(i) + ".json", input, load, &stats);
  }
  fuzz::report(target, stats);
  EXPECT_GT(stats.errors, 0);
}

}  // namespace
}  // namespace moex::io
