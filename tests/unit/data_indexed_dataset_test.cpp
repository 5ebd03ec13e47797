// Megatron .bin/.idx datasets and the GPT sampler.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <set>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "unit/cpu_kernel_checks.h"

namespace moex::data {
namespace {

namespace fs = std::filesystem;

std::string temp_prefix(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("moex_data_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

template <typename T>
void append(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Documents 0..n-1 of varying lengths with recognizable ids (doc * 100 + position).
std::vector<std::vector<int32_t>> make_docs(int n) {
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < n; ++d) {
    std::vector<int32_t> ids;
    for (int k = 0; k < 3 + (d * 7) % 11; ++k) ids.push_back(d * 100 + k);
    docs.push_back(ids);
  }
  return docs;
}

void build(const std::string& prefix, const std::vector<std::vector<int32_t>>& docs,
           TokenDType dtype) {
  IndexedDatasetBuilder b(prefix, dtype);
  for (const auto& d : docs) b.add_document(d);
  b.finish();
}

void expect_error(const std::string& prefix, const std::vector<std::string>& needles) {
  try {
    IndexedDataset::open(prefix);
    FAIL() << "no error; expected " << needles[0];
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

TEST(IndexedDataset, RoundTrip) {
  const auto docs = make_docs(20);
  for (TokenDType dtype : {TokenDType::kU16, TokenDType::kI32, TokenDType::kI64}) {
    const std::string prefix = temp_prefix("rt" + std::to_string(static_cast<int>(dtype)));
    build(prefix, docs, dtype);
    EXPECT_FALSE(fs::exists(prefix + ".bin.tmp"));
    const IndexedDataset ds = IndexedDataset::open(prefix);
    EXPECT_EQ(ds.dtype(), dtype);
    ASSERT_EQ(ds.num_sequences(), 20);
    EXPECT_EQ(ds.num_documents(), 20);
    int64_t total = 0;
    for (int i = 0; i < 20; ++i) {
      EXPECT_EQ(ds.get(i), docs[i]);
      total += static_cast<int64_t>(docs[i].size());
    }
    EXPECT_EQ(ds.num_tokens(), total);
    int32_t two[2];
    ds.read(3, 1, 2, two);
    EXPECT_EQ(two[0], 301);
    EXPECT_EQ(two[1], 302);
    EXPECT_THROW(ds.read(3, 1, 100, two), Error);
  }
  EXPECT_THROW(IndexedDatasetBuilder(temp_prefix("small"), TokenDType::kU16).add_document({70000}),
               Error);
}

// A pair written byte by byte from Megatron's documented layout (as its
// MMapIndexedDatasetBuilder would), with two sequences in the first document.
TEST(IndexedDataset, ReadsHandMadeMegatronFiles) {
  const std::string prefix = temp_prefix("hand");
  std::string bin;
  const uint16_t tokens[] = {5, 6, 7, 8, 9, 10, 65000};
  for (uint16_t t : tokens) append(&bin, t);
  std::string idx("MMIDIDX\x00\x00", 9);
  append<uint64_t>(&idx, 1);  // version
  append<uint8_t>(&idx, 8);   // uint16
  append<uint64_t>(&idx, 3);  // sequences
  append<uint64_t>(&idx, 3);  // document indices: 2 documents + 1
  for (int32_t s : {2, 3, 2}) append(&idx, s);
  for (int64_t p : {0, 4, 10}) append(&idx, p);
  for (int64_t d : {0, 2, 3}) append(&idx, d);
  write_all(prefix + ".bin", bin);
  write_all(prefix + ".idx", idx);
  const IndexedDataset ds = IndexedDataset::open(prefix);
  EXPECT_EQ(ds.num_sequences(), 3);
  EXPECT_EQ(ds.num_documents(), 2);
  EXPECT_EQ(ds.num_tokens(), 7);
  EXPECT_EQ(ds.get(1), (std::vector<int32_t>{7, 8, 9}));
  EXPECT_EQ(ds.get(2), (std::vector<int32_t>{10, 65000}));
  EXPECT_EQ(ds.document_indices(), (std::vector<int64_t>{0, 2, 3}));

  // Our builder writes exactly these bytes for the same content.
  const std::string again = temp_prefix("hand_again");
  IndexedDatasetBuilder b(again, TokenDType::kU16);
  b.add_sequence(std::vector<int32_t>{5, 6}.data(), 2);
  b.add_sequence(std::vector<int32_t>{7, 8, 9}.data(), 3);
  b.end_document();
  b.add_document({10, 65000});
  b.finish();
  EXPECT_EQ(read_all(again + ".idx"), idx);
  EXPECT_EQ(read_all(again + ".bin"), bin);
}

TEST(IndexedDataset, MismatchedIndexIsAnError) {
  const auto docs = make_docs(5);
  const std::string good = temp_prefix("good");
  build(good, docs, TokenDType::kU16);
  const std::string idx = read_all(good + ".idx");
  const std::string bin = read_all(good + ".bin");
  const std::string bad = temp_prefix("bad");
  auto with = [&](const std::string& i, const std::string& b) {
    write_all(bad + ".idx", i);
    write_all(bad + ".bin", b);
  };

  std::string m = idx;
  m[0] = 'X';
  with(m, bin);
  expect_error(bad, {"bad.idx", "magic"});

  m = idx;
  m[9] = 2;
  with(m, bin);
  expect_error(bad, {"bad.idx", "version 2"});

  m = idx;
  m[17] = 42;
  with(m, bin);
  expect_error(bad, {"bad.idx", "dtype code 42"});

  with(idx.substr(0, idx.size() - 5), bin);
  expect_error(bad, {"bad.idx", "truncated"});

  with(idx.substr(0, 20), bin);
  expect_error(bad, {"bad.idx", "truncated"});

  with(idx, bin.substr(0, bin.size() - 4));
  expect_error(bad, {"bad.idx", "pointers[4]", "past the end of", "bad.bin"});

  with(idx, bin + "xx");
  expect_error(bad, {"bad.idx", "do not match"});

  m = idx;  // pointers[1] -> far away
  const int64_t far = 1 << 20;
  std::memcpy(&m[34 + 5 * 4 + 8], &far, 8);
  with(m, bin);
  expect_error(bad, {"bad.idx", "pointers[1]"});

  m = idx;  // sizes[0] negative
  const int32_t neg = -3;
  std::memcpy(&m[34], &neg, 4);
  with(m, bin);
  expect_error(bad, {"bad.idx", "sizes[0]"});

  m = idx;  // document index beyond the sequences
  const int64_t beyond = 99;
  std::memcpy(&m[34 + 5 * 12 + 8 * 2], &beyond, 8);
  with(m, bin);
  expect_error(bad, {"bad.idx", "document_indices[2]"});

  fs::remove(bad + ".bin");
  expect_error(bad, {"bad.bin", "cannot open"});
}

// A one-sequence pair whose .bin is `bin` (tokens of `esize` bytes) with the given dtype code.
void write_pair(const std::string& prefix, uint8_t code, const std::string& bin, size_t esize) {
  std::string idx("MMIDIDX\x00\x00", 9);
  append<uint64_t>(&idx, 1);
  append<uint8_t>(&idx, code);
  append<uint64_t>(&idx, 1);  // sequences
  append<uint64_t>(&idx, 2);  // document indices
  append<int32_t>(&idx, static_cast<int32_t>(bin.size() / esize));
  append<int64_t>(&idx, 0);
  for (int64_t d : {0, 1}) append(&idx, d);
  write_all(prefix + ".idx", idx);
  write_all(prefix + ".bin", bin);
}

// Reading sequence 0 must fail with a message naming the .bin file and containing `needle`.
void expect_read_error(const std::string& prefix, const std::string& needle) {
  const IndexedDataset ds = IndexedDataset::open(prefix);
  try {
    const std::vector<int32_t> ids = ds.get(0);
    std::string got;
    for (int32_t id : ids) got += std::to_string(id) + " ";
    FAIL() << "read ids " << got << "; expected an error mentioning " << needle;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(prefix + ".bin"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

// A pointer near 2^63 with a large size must be rejected by the bounds check itself, without
// forming ptr + size * esize (a signed overflow; -fsanitize=undefined reports it).
TEST(IndexedDataset, HugePointerAndSizeAreAnErrorWithoutOverflow) {
  const std::string prefix = temp_prefix("overflow");
  std::string bin;
  for (int64_t t : {1, 2, 3, 4}) append(&bin, t);
  for (const auto& [ptr, size] : std::vector<std::pair<int64_t, int32_t>>{
           {std::numeric_limits<int64_t>::max() - 7, std::numeric_limits<int32_t>::max()},
           {std::numeric_limits<int64_t>::max() - 7, 4},
           {8, std::numeric_limits<int32_t>::max()}}) {
    std::string idx("MMIDIDX\x00\x00", 9);
    append<uint64_t>(&idx, 1);
    append<uint8_t>(&idx, 5);  // i64
    append<uint64_t>(&idx, 1);
    append<uint64_t>(&idx, 2);
    append<int32_t>(&idx, size);
    append<int64_t>(&idx, ptr);
    for (int64_t d : {0, 1}) append(&idx, d);
    write_all(prefix + ".idx", idx);
    write_all(prefix + ".bin", bin);
    expect_error(prefix, {"overflow.idx", "pointers[0]", "past the end of", "overflow.bin"});
  }
}

TEST(IndexedDataset, I64TokenOutsideInt32IsAnErrorNotTruncated) {
  const std::string prefix = temp_prefix("i64_range");
  for (int64_t bad : {int64_t{1} << 31, (int64_t{1} << 32) + 7, int64_t{-1},
                      std::numeric_limits<int64_t>::min()}) {
    std::string bin;
    for (int64_t t : {int64_t{5}, bad, int64_t{6}}) append(&bin, t);
    write_pair(prefix, 5, bin, 8);
    expect_read_error(prefix, "token 1 of sequence 0 is " + std::to_string(bad));
  }
  // The largest id still reads.
  std::string bin;
  append<int64_t>(&bin, std::numeric_limits<int32_t>::max());
  write_pair(prefix, 5, bin, 8);
  EXPECT_EQ(IndexedDataset::open(prefix).get(0),
            std::vector<int32_t>{std::numeric_limits<int32_t>::max()});
}

TEST(IndexedDataset, NegativeIntegerTokensAreAnError) {
  const std::string prefix = temp_prefix("negative");
  std::string bin;
  for (int32_t t : {3, -2}) append(&bin, t);
  write_pair(prefix, 4, bin, 4);  // i32: the memcpy path
  expect_read_error(prefix, "token 1 of sequence 0 is -2");
  bin.clear();
  for (int16_t t : {int16_t{-300}, int16_t{3}}) append(&bin, t);
  write_pair(prefix, 3, bin, 2);  // i16
  expect_read_error(prefix, "token 0 of sequence 0 is -300");
  // And the builder refuses to write them.
  IndexedDatasetBuilder b(temp_prefix("negative_built"), TokenDType::kI32);
  EXPECT_THROW(b.add_document({1, -1}), Error);
}

TEST(IndexedDataset, NonIntegralFloatTokensAreAnError) {
  const std::string prefix = temp_prefix("float_ids");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (double bad : {nan, inf, -inf, 1.5, -1.0, 3e9, 1e300}) {
    std::string bin32;
    for (float t : {7.0f, static_cast<float>(bad)}) append(&bin32, t);
    write_pair(prefix, 7, bin32, 4);
    expect_read_error(prefix, "token 1 of sequence 0 is ");
    std::string bin64;
    for (double t : {7.0, bad}) append(&bin64, t);
    write_pair(prefix, 6, bin64, 8);
    expect_read_error(prefix, "token 1 of sequence 0 is ");
  }
  std::string bin64;
  for (double t : {0.0, 2147483647.0}) append(&bin64, t);
  write_pair(prefix, 6, bin64, 8);
  EXPECT_EQ(IndexedDataset::open(prefix).get(0), (std::vector<int32_t>{0, 2147483647}));
  std::string bin32;
  for (float t : {16777216.0f, 1.0f}) append(&bin32, t);
  write_pair(prefix, 7, bin32, 4);
  EXPECT_EQ(IndexedDataset::open(prefix).get(0), (std::vector<int32_t>{16777216, 1}));
}

TEST(GPTSampler, SamplesComeFromTheStreamAndCoverIt) {
  const std::string prefix = temp_prefix("sampler");
  const auto docs = make_docs(30);
  build(prefix, docs, TokenDType::kU16);
  auto ds = std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix));
  const int64_t seq_len = 8;
  GPTSampler sampler(ds, seq_len, 1234);
  EXPECT_EQ(sampler.samples_per_epoch(), (ds->num_tokens() - 1) / seq_len);
  // Every window is a run of consecutive tokens of the shuffled stream: within a document,
  // ids go up by one; a document boundary starts at position 0 of another document.
  std::multiset<int32_t> seen;
  std::vector<int32_t> buf(seq_len + 1);
  for (int64_t s = 0; s < sampler.samples_per_epoch(); ++s) {
    sampler.next(buf.data());
    for (int64_t k = 0; k + 1 <= seq_len; ++k) {
      const bool same_doc = buf[k + 1] == buf[k] + 1;
      const bool new_doc = buf[k + 1] % 100 == 0;
      EXPECT_TRUE(same_doc || new_doc) << buf[k] << " -> " << buf[k + 1];
    }
    for (int64_t k = 0; k < seq_len; ++k) seen.insert(buf[k]);
  }
  // One epoch visits each token at most once as an input (windows overlap by one only).
  for (int32_t v : seen) EXPECT_EQ(seen.count(v), 1u) << v;
  EXPECT_EQ(static_cast<int64_t>(seen.size()), sampler.samples_per_epoch() * seq_len);
  // The next epoch is shuffled differently.
  std::vector<int32_t> e0(seq_len + 1), e1(seq_len + 1);
  sampler.sample(0, 0, e0.data());
  sampler.sample(1, 0, e1.data());
  EXPECT_NE(e0, e1);
}

TEST(GPTSampler, ResumeGivesIdenticalSequences) {
  const std::string prefix = temp_prefix("resume");
  build(prefix, make_docs(25), TokenDType::kI32);
  auto ds = std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix));
  const int64_t seq_len = 5;
  GPTSampler straight(ds, seq_len, 7);
  const int64_t total = straight.samples_per_epoch() * 2 + 3;  // crosses two epoch boundaries
  std::vector<std::vector<int32_t>> expected;
  for (int64_t i = 0; i < total; ++i) {
    std::vector<int32_t> buf(seq_len + 1);
    straight.next(buf.data());
    expected.push_back(buf);
  }
  for (int64_t stop : {int64_t{0}, int64_t{1}, straight.samples_per_epoch(), total / 2}) {
    GPTSampler first(ds, seq_len, 7);
    std::vector<int32_t> buf(seq_len + 1);
    for (int64_t i = 0; i < stop; ++i) first.next(buf.data());
    const std::string saved = first.state().to_json();
    GPTSampler resumed(ds, seq_len, 7);
    resumed.restore(SamplerState::from_json(saved));
    for (int64_t i = stop; i < total; ++i) {
      resumed.next(buf.data());
      ASSERT_EQ(buf, expected[i]) << "stop " << stop << " sample " << i;
    }
  }
  GPTSampler other_seed(ds, seq_len, 8);
  EXPECT_THROW(other_seed.restore(straight.state()), Error);
  EXPECT_THROW(SamplerState::from_json(R"({"seed":1})"), Error);
  std::vector<int32_t> a(seq_len + 1), b(seq_len + 1);
  GPTSampler s7(ds, seq_len, 7), s8(ds, seq_len, 8);
  s7.next(a.data());
  s8.next(b.data());
  EXPECT_NE(a, b);
}

// data.packing false: each epoch visits every document once, in a seeded order; a sample is the
// document's first seq_len + 1 tokens (and loss mask), then padding marked 0.
TEST(GPTSampler, OneDocumentSamplesAreWholeDocumentsPadded) {
  const std::string prefix = temp_prefix("one_doc"), mask_prefix = temp_prefix("one_doc_mask");
  const auto docs = make_docs(23);  // 3 to 13 tokens, doc d's tokens d * 100 + k
  build(prefix, docs, TokenDType::kU16);
  std::vector<std::vector<int32_t>> masks;
  for (const auto& d : docs) {
    std::vector<int32_t> m;
    for (const int32_t id : d) m.push_back((id * 7 + id / 100) % 3 != 0);
    masks.push_back(m);
  }
  build(mask_prefix, masks, TokenDType::kU8);
  auto ds = std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix));
  auto mask = std::make_shared<const IndexedDataset>(IndexedDataset::open(mask_prefix, 2));
  const int64_t seq_len = 8, window = seq_len + 1;
  GPTSampler sampler(ds, seq_len, 99, mask, Packing::kOneDocument);
  ASSERT_EQ(sampler.samples_per_epoch(), 23);
  int64_t cut = 0, kept = 0;
  for (const auto& d : docs) {
    cut += static_cast<int64_t>(d.size()) > window;
    kept += std::min<int64_t>(static_cast<int64_t>(d.size()), window);
  }
  ASSERT_GT(cut, 0);
  EXPECT_EQ(sampler.cut_documents(), cut);
  EXPECT_DOUBLE_EQ(sampler.padding_fraction(), 1.0 - static_cast<double>(kept) / (23.0 * window));
  std::vector<std::vector<int64_t>> orders(2);
  std::vector<int32_t> out(window), out_mask(window);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    for (int64_t i = 0; i < 23; ++i) {
      sampler.next(out.data(), out_mask.data());
      const int64_t d = out[0] / 100;
      ASSERT_LT(d, 23);
      orders[epoch].push_back(d);
      const int64_t len = static_cast<int64_t>(docs[d].size());
      for (int64_t k = 0; k < window; ++k) {
        EXPECT_EQ(out[k], k < len ? docs[d][k] : GPTSampler::kPadId) << "doc " << d << " " << k;
        EXPECT_EQ(out_mask[k], k < len ? masks[d][k] : 0) << "doc " << d << " " << k;
      }
    }
    std::vector<int64_t> sorted = orders[epoch];
    std::sort(sorted.begin(), sorted.end());
    for (int64_t d = 0; d < 23; ++d) EXPECT_EQ(sorted[d], d);  // each document once
  }
  EXPECT_NE(orders[0], orders[1]);  // reshuffled

  // Without a mask dataset the document's tokens are marked 1, the padding 0; a padded sample
  // asks for its mask.
  GPTSampler plain(ds, seq_len, 99, nullptr, Packing::kOneDocument);
  plain.sample(0, 0, out.data(), out_mask.data());
  const int64_t len = static_cast<int64_t>(docs[out[0] / 100].size());
  for (int64_t k = 0; k < window; ++k) EXPECT_EQ(out_mask[k], k < len ? 1 : 0);
  int64_t short_index = 0;
  while (static_cast<int64_t>(docs[orders[0][short_index]].size()) >= window) ++short_index;
  EXPECT_THROW(plain.sample(0, short_index, out.data()), Error);

  // A resumed sampler continues the same stream; packed and one-document states do not mix.
  GPTSampler resumed(ds, seq_len, 99, mask, Packing::kOneDocument);
  GPTSampler first(ds, seq_len, 99, mask, Packing::kOneDocument);
  for (int i = 0; i < 30; ++i) first.next(out.data(), out_mask.data());
  resumed.restore(SamplerState::from_json(first.state().to_json()));
  std::vector<int32_t> again(window), again_mask(window);
  first.next(out.data(), out_mask.data());
  resumed.next(again.data(), again_mask.data());
  EXPECT_EQ(out, again);
  EXPECT_EQ(out_mask, again_mask);
  GPTSampler packed(ds, seq_len, 99, mask);
  testing::expect_error_naming([&] { packed.restore(first.state()); }, {"data.packing false"});
  // States saved before the field existed were packed.
  EXPECT_TRUE(SamplerState::from_json(R"({"seed":1,"seq_len":2,"epoch":0,"position":0})").packed);
}

TEST(GPTSampler, TooShortDatasetIsAnError) {
  const std::string prefix = temp_prefix("short");
  build(prefix, {{1, 2, 3}}, TokenDType::kU16);
  auto ds = std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix));
  EXPECT_THROW(GPTSampler(ds, 3, 0), Error);
  EXPECT_NO_THROW(GPTSampler(ds, 2, 0));
}

TEST(SeededPermutation, IsAPermutationAndDeterministic) {
  const auto p = seeded_permutation(1000, 42, 0);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) EXPECT_EQ(sorted[i], i);
  EXPECT_EQ(p, seeded_permutation(1000, 42, 0));
  EXPECT_NE(p, seeded_permutation(1000, 42, 1));
  EXPECT_NE(p, seeded_permutation(1000, 43, 0));
}

}  // namespace
}  // namespace moex::data
