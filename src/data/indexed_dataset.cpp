#include "data/indexed_dataset.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <type_traits>

#include "core/error.h"
#include "core/rng.h"
#include "io/mapped_file.h"

namespace moex::data {

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kVersion = 1;
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;

template <typename T>
T read_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // x86/ARM hosts are little-endian, as the format
  return v;
}

bool valid_dtype(uint8_t code) {
  return code >= 1 && code <= 8;
}

// Calls fn with the token at `p` in the type the dataset stores it in; fn returns the same type
// for every one of them.
template <typename Fn>
auto visit_token(const uint8_t* p, TokenDType dtype, Fn fn) {
  switch (dtype) {
    case TokenDType::kU8:
      return fn(*p);
    case TokenDType::kI8:
      return fn(static_cast<int8_t>(*p));
    case TokenDType::kI16:
      return fn(read_le<int16_t>(p));
    case TokenDType::kU16:
      return fn(read_le<uint16_t>(p));
    case TokenDType::kI32:
      return fn(read_le<int32_t>(p));
    case TokenDType::kI64:
      return fn(read_le<int64_t>(p));
    case TokenDType::kF32:
      return fn(read_le<float>(p));
    case TokenDType::kF64:
      break;
  }
  return fn(read_le<double>(p));
}

// Token `p` as an id: false when it is not one (negative, above INT32_MAX, or a float that is
// NaN, infinite or not a whole number), so that no value is truncated or cast out of range.
bool token_at(const uint8_t* p, TokenDType dtype, int32_t* id) {
  return visit_token(p, dtype, [id](auto v) {
    constexpr auto kMaxId = std::numeric_limits<int32_t>::max();
    if constexpr (std::is_floating_point_v<decltype(v)>) {
      // The range test is false for NaN; it comes before the cast, which is undefined outside it.
      const double f = v;
      if (!(f >= 0.0 && f <= static_cast<double>(kMaxId)) || std::floor(f) != f) return false;
    } else {
      if (static_cast<int64_t>(v) < 0 || static_cast<int64_t>(v) > kMaxId) return false;
    }
    *id = static_cast<int32_t>(v);
    return true;
  });
}

// The token at `p` as text for an error message (floats keep their fraction, NaN and inf).
std::string token_text(const uint8_t* p, TokenDType dtype) {
  return visit_token(p, dtype, [](auto v) {
    std::ostringstream out;
    out << +v;  // unary + prints 8-bit values as numbers, not characters
    return out.str();
  });
}

void put_token(uint8_t* p, int32_t id, TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kU8:
      *p = static_cast<uint8_t>(id);
      break;
    case TokenDType::kI8:
      *p = static_cast<uint8_t>(static_cast<int8_t>(id));
      break;
    case TokenDType::kI16: {
      const int16_t v = static_cast<int16_t>(id);
      std::memcpy(p, &v, 2);
      break;
    }
    case TokenDType::kU16: {
      const uint16_t v = static_cast<uint16_t>(id);
      std::memcpy(p, &v, 2);
      break;
    }
    case TokenDType::kI32:
      std::memcpy(p, &id, 4);
      break;
    case TokenDType::kI64: {
      const int64_t v = id;
      std::memcpy(p, &v, 8);
      break;
    }
    case TokenDType::kF32: {
      const float v = static_cast<float>(id);
      std::memcpy(p, &v, 4);
      break;
    }
    case TokenDType::kF64: {
      const double v = id;
      std::memcpy(p, &v, 8);
      break;
    }
  }
}

// Token ids are never negative (the reader rejects them), whatever the dtype could hold.
bool fits(int32_t id, TokenDType dtype) {
  if (id < 0) return false;
  switch (dtype) {
    case TokenDType::kU8:
      return id >= 0 && id <= 255;
    case TokenDType::kI8:
      return id >= -128 && id <= 127;
    case TokenDType::kI16:
      return id >= -32768 && id <= 32767;
    case TokenDType::kU16:
      return id >= 0 && id <= 65535;
    case TokenDType::kF32:
      return id >= -(1 << 24) && id <= (1 << 24);
    default:
      return true;
  }
}

uint64_t random_u64(uint64_t seed, uint64_t stream, uint64_t index) {
  return (static_cast<uint64_t>(philox_u32(seed, stream, 2 * index)) << 32) |
         philox_u32(seed, stream, 2 * index + 1);
}

}  // namespace

size_t token_dtype_size(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kU8:
    case TokenDType::kI8:
      return 1;
    case TokenDType::kI16:
    case TokenDType::kU16:
      return 2;
    case TokenDType::kI32:
    case TokenDType::kF32:
      return 4;
    case TokenDType::kI64:
    case TokenDType::kF64:
      return 8;
  }
  MOEX_THROW("unknown token dtype code ", static_cast<int>(dtype));
}

TokenDType token_dtype_for_vocab(int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDType::kU16 : TokenDType::kI32;
}

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) perm[i] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    // Unbiased bound by rejection (Lemire's multiply-shift would need 128-bit; n is small).
    const uint64_t bound = static_cast<uint64_t>(i) + 1;
    const uint64_t limit =
        std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % bound;
    uint64_t r;
    uint64_t k = static_cast<uint64_t>(i);
    do {
      r = random_u64(seed, stream, k);
      k += static_cast<uint64_t>(n);  // a fresh counter on rejection
    } while (r >= limit);
    std::swap(perm[i], perm[r % bound]);
  }
  return perm;
}

// ---- builder ----

IndexedDatasetBuilder::IndexedDatasetBuilder(const std::string& prefix, TokenDType dtype)
    : prefix_(prefix), dtype_(dtype), bin_(prefix + ".bin") {
  MOEX_CHECK(valid_dtype(static_cast<uint8_t>(dtype)), prefix, ": unknown token dtype code ",
             static_cast<int>(dtype));
}

void IndexedDatasetBuilder::add_sequence(const int32_t* ids, size_t count) {
  MOEX_CHECK(!finished_, prefix_, ": add after finish()");
  MOEX_CHECK(count <= static_cast<size_t>(std::numeric_limits<int32_t>::max()), prefix_,
             ": a sequence of ", count, " tokens does not fit the int32 sizes field");
  const size_t esize = token_dtype_size(dtype_);
  buffer_.resize(count * esize);
  for (size_t i = 0; i < count; ++i) {
    MOEX_CHECK(fits(ids[i], dtype_), prefix_, ": token id ", ids[i], " does not fit dtype code ",
               static_cast<int>(dtype_));
    put_token(buffer_.data() + i * esize, ids[i], dtype_);
  }
  pointers_.push_back(static_cast<int64_t>(bin_.bytes_written()));
  sizes_.push_back(static_cast<int32_t>(count));
  if (!buffer_.empty()) bin_.write(buffer_.data(), buffer_.size());
  num_tokens_ += static_cast<int64_t>(count);
}

void IndexedDatasetBuilder::end_document() {
  doc_idx_.push_back(static_cast<int64_t>(sizes_.size()));
}

void IndexedDatasetBuilder::add_document(const int32_t* ids, size_t count) {
  add_sequence(ids, count);
  end_document();
}

void IndexedDatasetBuilder::finish() {
  MOEX_CHECK(!finished_, prefix_, ": finish() called twice");
  if (doc_idx_.back() != static_cast<int64_t>(sizes_.size())) end_document();
  finished_ = true;
  io::AtomicFile idx(prefix_ + ".idx");
  idx.write(kMagic, sizeof(kMagic));
  const uint64_t version = kVersion;
  idx.write(&version, 8);
  const uint8_t code = static_cast<uint8_t>(dtype_);
  idx.write(&code, 1);
  const uint64_t seq_count = sizes_.size(), doc_count = doc_idx_.size();
  idx.write(&seq_count, 8);
  idx.write(&doc_count, 8);
  idx.write(sizes_.data(), sizes_.size() * 4);
  idx.write(pointers_.data(), pointers_.size() * 8);
  idx.write(doc_idx_.data(), doc_idx_.size() * 8);
  // .bin first: a kill between the two renames leaves an old .idx that no longer matches the
  // new .bin, which the reader reports, rather than an index pointing into missing data.
  bin_.commit();
  idx.commit();
}

// ---- reader ----

IndexedDataset IndexedDataset::open(const std::string& prefix, int64_t vocab_size) {
  IndexedDataset ds;
  ds.prefix_ = prefix;
  ds.vocab_size_ = vocab_size;
  const std::string idx_path = prefix + ".idx";
  const auto idx = io::MappedFile::open(idx_path);
  ds.bin_ = io::MappedFile::open(prefix + ".bin");
  const uint8_t* p = idx->data();
  const size_t size = idx->size();
  MOEX_CHECK(size >= 9 && std::memcmp(p, kMagic, 9) == 0, idx_path,
             ": magic: not a Megatron MMIDIDX index");
  MOEX_CHECK(size >= kHeaderBytes, idx_path, ": truncated header (", size, " bytes)");
  const uint64_t version = read_le<uint64_t>(p + 9);
  MOEX_CHECK(version == kVersion, idx_path, ": version ", version, " (only version 1 is read)");
  const uint8_t code = p[17];
  MOEX_CHECK(valid_dtype(code), idx_path, ": dtype code ", static_cast<int>(code), " is unknown");
  ds.dtype_ = static_cast<TokenDType>(code);
  const uint64_t seq_count = read_le<uint64_t>(p + 18);
  const uint64_t doc_count = read_le<uint64_t>(p + 26);
  MOEX_CHECK(seq_count < (1ull << 40) && doc_count < (1ull << 40), idx_path, ": sequence count ",
             seq_count, " / document count ", doc_count, " is implausible");
  const uint64_t expect = kHeaderBytes + seq_count * 12 + doc_count * 8;
  MOEX_CHECK(size >= expect, idx_path, ": truncated: sequence count ", seq_count,
             " and document count ", doc_count, " need ", expect, " bytes, file has ", size);
  // Megatron may append a multimodal sequence_modes array (i8 per sequence); nothing else.
  MOEX_CHECK(size == expect || size == expect + seq_count, idx_path, ": ", size - expect,
             " unexpected bytes after the document indices");
  const uint8_t* q = p + kHeaderBytes;
  ds.sizes_.resize(seq_count);
  ds.pointers_.resize(seq_count);
  ds.doc_idx_.resize(doc_count);
  if (seq_count) std::memcpy(ds.sizes_.data(), q, seq_count * 4);
  if (seq_count) std::memcpy(ds.pointers_.data(), q + seq_count * 4, seq_count * 8);
  if (doc_count) std::memcpy(ds.doc_idx_.data(), q + seq_count * 12, doc_count * 8);

  const uint64_t bin_size = ds.bin_->size();
  const std::string bin_path = prefix + ".bin";
  const int64_t esize = static_cast<int64_t>(token_dtype_size(ds.dtype_));
  int64_t end_of_data = 0;
  for (uint64_t i = 0; i < seq_count; ++i) {
    const int64_t n = ds.sizes_[i], ptr = ds.pointers_[i];
    MOEX_CHECK(n >= 0, idx_path, ": sizes[", i, "] = ", n, " is negative");
    MOEX_CHECK(ptr >= 0 && ptr % esize == 0, idx_path, ": pointers[", i, "] = ", ptr,
               " is negative or not a multiple of the token size");
    // Compared without forming ptr + n * esize, which overflows for a pointer near 2^63.
    MOEX_CHECK(static_cast<uint64_t>(ptr) <= bin_size &&
                   static_cast<uint64_t>(n) <=
                       (bin_size - static_cast<uint64_t>(ptr)) / static_cast<uint64_t>(esize),
               idx_path, ": pointers[", i, "] = ", ptr, " with sizes[", i, "] = ", n,
               " runs past the end of ", bin_path, " (", bin_size, " bytes)");
    end_of_data = std::max(end_of_data, ptr + n * esize);
    ds.num_tokens_ += n;
  }
  MOEX_CHECK(static_cast<uint64_t>(end_of_data) == bin_size, idx_path, ": sequences cover ",
             end_of_data, " bytes but ", bin_path, " has ", bin_size,
             " (index and data do not match)");
  MOEX_CHECK(doc_count >= 1 && ds.doc_idx_[0] == 0, idx_path,
             ": document_indices must start with 0");
  for (uint64_t d = 1; d < doc_count; ++d) {
    MOEX_CHECK(
        ds.doc_idx_[d] >= ds.doc_idx_[d - 1] && ds.doc_idx_[d] <= static_cast<int64_t>(seq_count),
        idx_path, ": document_indices[", d, "] = ", ds.doc_idx_[d],
        " is decreasing or past the sequence count ", seq_count);
  }
  MOEX_CHECK(ds.doc_idx_.back() == static_cast<int64_t>(seq_count), idx_path,
             ": document_indices must end with the sequence count ", seq_count);
  return ds;
}

int64_t IndexedDataset::sequence_length(int64_t i) const {
  MOEX_CHECK(i >= 0 && i < num_sequences(), prefix_, ": sequence ", i, " out of range [0, ",
             num_sequences(), ")");
  return sizes_[i];
}

void IndexedDataset::read(int64_t i, int64_t offset, int64_t count, int32_t* out) const {
  const int64_t n = sequence_length(i);
  MOEX_CHECK(offset >= 0 && count >= 0 && offset + count <= n, prefix_, ": tokens [", offset, ", ",
             offset + count, ") out of sequence ", i, " of ", n);
  const size_t esize = token_dtype_size(dtype_);
  const uint8_t* p = bin_->data() + pointers_[i] + offset * static_cast<int64_t>(esize);
  int64_t bad = -1;
  if (dtype_ == TokenDType::kI32) {
    if (count) std::memcpy(out, p, static_cast<size_t>(count) * 4);
    for (int64_t k = 0; k < count && bad < 0; ++k)
      if (out[k] < 0) bad = k;
  } else {
    for (int64_t k = 0; k < count && bad < 0; ++k)
      if (!token_at(p + k * esize, dtype_, &out[k])) bad = k;
  }
  MOEX_CHECK(bad < 0, prefix_, ".bin: token ", offset + bad, " of sequence ", i, " is ",
             token_text(p + bad * esize, dtype_),
             ", not a token id (a whole number in [0, 2^31 - 1])");
  if (vocab_size_ > 0)
    for (int64_t k = 0; k < count; ++k)
      MOEX_CHECK(out[k] < vocab_size_, prefix_, ".bin: token ", offset + k, " of sequence ", i,
                 " is id ", out[k], ", outside the model's vocabulary of ", vocab_size_,
                 " (a corpus made with another tokenizer?)");
}

std::vector<int32_t> IndexedDataset::get(int64_t i) const {
  std::vector<int32_t> out(static_cast<size_t>(sequence_length(i)));
  read(i, 0, static_cast<int64_t>(out.size()), out.data());
  return out;
}

// ---- sampler ----

std::string SamplerState::to_json() const {
  return nlohmann::json{{"seed", seed},
                        {"seq_len", seq_len},
                        {"epoch", epoch},
                        {"position", position},
                        {"packed", packed}}
      .dump();
}

SamplerState SamplerState::from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    MOEX_THROW("sampler state: not valid JSON (", e.what(), ")");
  }
  SamplerState s;
  auto field = [&](const char* name) -> const nlohmann::json& {
    MOEX_CHECK(j.is_object() && j.contains(name) && j[name].is_number_integer(),
               "sampler state: field ", name, " missing or not an integer");
    return j[name];
  };
  s.seed = field("seed").get<uint64_t>();
  s.seq_len = field("seq_len").get<int64_t>();
  s.epoch = field("epoch").get<int64_t>();
  s.position = field("position").get<int64_t>();
  if (j.contains("packed")) {
    MOEX_CHECK(j["packed"].is_boolean(), "sampler state: field packed is not true or false");
    s.packed = j["packed"].get<bool>();
  }
  return s;
}

GPTSampler::GPTSampler(std::shared_ptr<const IndexedDataset> dataset, int64_t seq_len,
                       uint64_t seed, std::shared_ptr<const IndexedDataset> mask, Packing packing)
    : dataset_(std::move(dataset)),
      mask_(std::move(mask)),
      seq_len_(seq_len),
      seed_(seed),
      packing_(packing) {
  MOEX_CHECK(seq_len_ > 0, "seq_len must be positive, got ", seq_len_);
  if (mask_) {
    bool same = mask_->num_sequences() == dataset_->num_sequences();
    for (int64_t i = 0; same && i < dataset_->num_sequences(); ++i)
      same = mask_->sequence_length(i) == dataset_->sequence_length(i);
    MOEX_CHECK(same, mask_->prefix(), ": the loss mask's sequences are not those of ",
               dataset_->prefix());
  }
  if (packing_ == Packing::kOneDocument) {
    const int64_t n = dataset_->num_sequences(), window = seq_len_ + 1;
    int64_t kept = 0, longest = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t len = dataset_->sequence_length(i);
      cut_documents_ += len > window;
      kept += std::min(len, window);
      longest = std::max(longest, len);
    }
    MOEX_CHECK(longest >= 2, dataset_->prefix(), ": no document has the 2 tokens of a prediction");
    samples_per_epoch_ = n;
    padding_fraction_ = 1.0 - static_cast<double>(kept) / static_cast<double>(n * window);
    return;
  }
  samples_per_epoch_ = (dataset_->num_tokens() - 1) / seq_len_;
  MOEX_CHECK(samples_per_epoch_ > 0, dataset_->prefix(), ": ", dataset_->num_tokens(),
             " tokens are fewer than one sample of seq_len + 1 = ", seq_len_ + 1);
}

void GPTSampler::build_epoch(int64_t epoch) {
  if (built_epoch_ == epoch) return;
  const int64_t n = dataset_->num_sequences();
  doc_order_ = seeded_permutation(n, seed_, 2 * static_cast<uint64_t>(epoch));
  built_epoch_ = epoch;
  if (packing_ == Packing::kOneDocument) return;  // a sample is doc_order_[index]
  doc_start_.assign(static_cast<size_t>(n) + 1, 0);
  for (int64_t k = 0; k < n; ++k)
    doc_start_[k + 1] = doc_start_[k] + dataset_->sequence_length(doc_order_[k]);
  sample_order_ =
      seeded_permutation(samples_per_epoch_, seed_, 2 * static_cast<uint64_t>(epoch) + 1);
}

void GPTSampler::sample(int64_t epoch, int64_t index, int32_t* out, int32_t* mask_out) {
  if (mask_out != nullptr && !mask_) std::fill(mask_out, mask_out + seq_len_ + 1, 1);
  MOEX_CHECK(index >= 0 && index < samples_per_epoch_, "sample ", index, " out of [0, ",
             samples_per_epoch_, ")");
  build_epoch(epoch);
  if (packing_ == Packing::kOneDocument) {
    const int64_t seq = doc_order_[index], window = seq_len_ + 1;
    const int64_t take = std::min(window, dataset_->sequence_length(seq));
    MOEX_CHECK(take == window || mask_out != nullptr,
               "GPTSampler: a padded sample needs its mask (the padding is not trained)");
    dataset_->read(seq, 0, take, out);
    std::fill(out + take, out + window, kPadId);
    if (mask_out == nullptr) return;
    if (mask_) mask_->read(seq, 0, take, mask_out);
    std::fill(mask_out + take, mask_out + window, 0);
    return;
  }
  int64_t pos = sample_order_[index] * seq_len_;
  int64_t need = seq_len_ + 1;
  // The sequence (in shuffled order) holding stream position `pos`.
  size_t k = static_cast<size_t>(std::upper_bound(doc_start_.begin(), doc_start_.end(), pos) -
                                 doc_start_.begin()) -
             1;
  while (need > 0) {
    const int64_t seq = doc_order_[k];
    const int64_t offset = pos - doc_start_[k];
    const int64_t take = std::min(need, dataset_->sequence_length(seq) - offset);
    dataset_->read(seq, offset, take, out);
    out += take;
    if (mask_out != nullptr && mask_) {
      mask_->read(seq, offset, take, mask_out);
      mask_out += take;
    }
    need -= take;
    pos += take;
    ++k;
  }
}

void GPTSampler::next(int32_t* out, int32_t* mask_out) {
  if (position_ >= samples_per_epoch_) {
    ++epoch_;
    position_ = 0;
  }
  sample(epoch_, position_, out, mask_out);
  ++position_;
}

SamplerState GPTSampler::state() const {
  return {seed_, seq_len_, epoch_, position_, packing_ == Packing::kPacked};
}

void GPTSampler::restore(const SamplerState& state) {
  MOEX_CHECK(state.seed == seed_ && state.seq_len == seq_len_, "sampler state was saved with seed ",
             state.seed, " and seq_len ", state.seq_len, ", this sampler has ", seed_, " and ",
             seq_len_);
  const auto packing_name = [](bool packed) { return packed ? "true" : "false"; };
  MOEX_CHECK(state.packed == (packing_ == Packing::kPacked),
             "sampler state was saved with data.packing ", packing_name(state.packed),
             ", this run has ", packing_name(packing_ == Packing::kPacked));
  MOEX_CHECK(state.epoch >= 0 && state.position >= 0 && state.position <= samples_per_epoch_,
             "sampler state: epoch ", state.epoch, " position ", state.position, " out of range");
  epoch_ = state.epoch;
  position_ = state.position;
}

}  // namespace moex::data
