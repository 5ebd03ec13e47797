// Token datasets in Megatron-LM's MMapIndexedDataset format (`prefix.bin` + `prefix.idx`), and
// a GPTDataset-style sampler of fixed-length training sequences with exact resume.
//
// .idx layout (all little-endian), as megatron/core/datasets/indexed_dataset.py writes it:
//   magic      9 bytes  "MMIDIDX\x00\x00"
//   version    u64      1
//   dtype      u8       token dtype code (1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f64, 7 f32, 8 u16)
//   seq_count  u64      number of sequences
//   doc_count  u64      number of document indices (documents + 1)
//   sizes      i32[seq_count]   tokens per sequence
//   pointers   i64[seq_count]   byte offset of each sequence in .bin
//   doc_idx    i64[doc_count]   sequence index where each document starts, then seq_count
// .bin is the sequences' tokens back to back.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/atomic_file.h"

namespace moex::io {
class MappedFile;
}

namespace moex::data {

// Megatron's token dtype codes.
enum class TokenDType : uint8_t {
  kU8 = 1,
  kI8 = 2,
  kI16 = 3,
  kI32 = 4,
  kI64 = 5,
  kF64 = 6,
  kF32 = 7,
  kU16 = 8
};
size_t token_dtype_size(TokenDType dtype);
// The smallest dtype Megatron would pick for a vocabulary: u16 below 65500 tokens, else i32.
TokenDType token_dtype_for_vocab(int64_t vocab_size);

// Writes `prefix.bin` and `prefix.idx` atomically (both appear at finish(), never half-written).
class IndexedDatasetBuilder {
 public:
  IndexedDatasetBuilder(const std::string& prefix, TokenDType dtype);
  // Appends one sequence and closes it as a document. Ids must be >= 0 and fit the dtype.
  void add_document(const int32_t* ids, size_t count);
  void add_document(const std::vector<int32_t>& ids) { add_document(ids.data(), ids.size()); }
  // Appends one sequence to the current document (several sequences may make one document).
  void add_sequence(const int32_t* ids, size_t count);
  void end_document();
  void finish();

  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_documents() const { return static_cast<int64_t>(doc_idx_.size()) - 1; }

 private:
  std::string prefix_;
  TokenDType dtype_;
  io::AtomicFile bin_;
  std::vector<int32_t> sizes_;
  std::vector<int64_t> pointers_;
  std::vector<int64_t> doc_idx_{0};
  std::vector<uint8_t> buffer_;
  int64_t num_tokens_ = 0;
  bool finished_ = false;
};

// Reads a `.bin/.idx` pair through mmap. An index that does not match its data (bad magic,
// wrong version, unknown dtype, truncated, pointers past the end of .bin, ...) is an Error
// naming the file and the field. Reading a token that is not an id (negative, above INT32_MAX,
// or a float that is NaN, infinite or fractional) is an Error naming the .bin file, as is an id
// >= vocab_size when one is given (a corpus made with another tokenizer).
class IndexedDataset {
 public:
  static IndexedDataset open(const std::string& prefix, int64_t vocab_size = 0);

  const std::string& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  int64_t num_sequences() const { return static_cast<int64_t>(sizes_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(doc_idx_.size()) - 1; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t sequence_length(int64_t i) const;
  // Sequence i's tokens.
  std::vector<int32_t> get(int64_t i) const;
  // `count` tokens of sequence i from `offset` into `out`.
  void read(int64_t i, int64_t offset, int64_t count, int32_t* out) const;
  // Sequences [doc_idx[d], doc_idx[d+1]) make document d.
  const std::vector<int64_t>& document_indices() const { return doc_idx_; }

 private:
  std::string prefix_;
  TokenDType dtype_ = TokenDType::kU16;
  int64_t vocab_size_ = 0;  // > 0: ids must be below it
  std::shared_ptr<const io::MappedFile> bin_;
  std::vector<int32_t> sizes_;
  std::vector<int64_t> pointers_;
  std::vector<int64_t> doc_idx_;
  int64_t num_tokens_ = 0;
};

// How a sampler cuts its samples (data.packing, docs/config.md).
enum class Packing {
  // Megatron's windows over the epoch's concatenated documents: no token is wasted, and a window
  // may hold the end of one document and the start of the next (attention crosses them).
  kPacked,
  // One document a sample, from its first token, cut after seq_len + 1 tokens and padded after
  // its end with masked tokens: no sample sees another document, at the cost of the padding
  // (Hugging Face TRL's default for fine-tuning).
  kOneDocument,
};

// Where a sampler stands: restoring it reproduces the following sequences exactly.
struct SamplerState {
  uint64_t seed = 0;
  int64_t seq_len = 0;
  int64_t epoch = 0;
  int64_t position = 0;  // sample index within the epoch
  bool packed = true;    // Packing::kPacked (states written before the field was added were)
  std::string to_json() const;
  static SamplerState from_json(const std::string& text);  // errors name the field
};

// Fixed-length training samples of seq_len + 1 tokens (inputs and shifted targets). Packed, as
// Megatron's GPTDataset draws them: each epoch shuffles the documents (seeded by seed and
// epoch), concatenates them into one token stream, cuts it into windows of seq_len tokens
// that overlap by one, and visits the windows in a shuffled order. One document a sample: each
// epoch visits the documents (the dataset's sequences) in a shuffled order. Deterministic in
// (seed, epoch, position); the stream wraps into the next epoch when one ends.
class GPTSampler {
 public:
  // `mask` (optional): a loss mask of the same sequences and lengths (CorpusSplitStats::mask_prefix),
  // read at the same places as the tokens.
  GPTSampler(std::shared_ptr<const IndexedDataset> dataset, int64_t seq_len, uint64_t seed,
             std::shared_ptr<const IndexedDataset> mask = nullptr,
             Packing packing = Packing::kPacked);

  // The id written after a document's end under Packing::kOneDocument (mask 0, never a target).
  static constexpr int32_t kPadId = 0;

  int64_t seq_len() const { return seq_len_; }
  int64_t samples_per_epoch() const { return samples_per_epoch_; }
  bool has_mask() const { return mask_ != nullptr; }
  Packing packing() const { return packing_; }
  // Under Packing::kOneDocument: documents longer than seq_len + 1 tokens (cut), and the share of
  // an epoch's sample tokens that are padding. 0 when packed.
  int64_t cut_documents() const { return cut_documents_; }
  double padding_fraction() const { return padding_fraction_; }
  // Writes the next seq_len + 1 tokens to `out` (and with a mask dataset their mask values to
  // `mask_out`, when given; without one, 1s, and 0s on padding) and advances. A sample with
  // padding needs `mask_out`.
  void next(int32_t* out, int32_t* mask_out = nullptr);
  // Sample `index` of `epoch` without moving (evaluation reads these in order).
  void sample(int64_t epoch, int64_t index, int32_t* out, int32_t* mask_out = nullptr);

  SamplerState state() const;
  // Errors if the state was saved with another seed or seq_len.
  void restore(const SamplerState& state);

 private:
  void build_epoch(int64_t epoch);

  std::shared_ptr<const IndexedDataset> dataset_;
  std::shared_ptr<const IndexedDataset> mask_;  // null: every token is trained on
  int64_t seq_len_;
  uint64_t seed_;
  Packing packing_;
  int64_t cut_documents_ = 0;
  double padding_fraction_ = 0;
  int64_t samples_per_epoch_ = 0;
  int64_t epoch_ = 0;
  int64_t position_ = 0;
  int64_t built_epoch_ = -1;
  std::vector<int64_t> doc_order_;     // documents of the built epoch, shuffled
  std::vector<int64_t> doc_start_;     // stream offset of each doc_order_ entry (+ total at end)
  std::vector<int64_t> sample_order_;  // shuffled window indices
};

// Deterministic Fisher-Yates permutation of [0, n) from (seed, stream); the same on every
// platform (std::shuffle is not).
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, uint64_t stream);

}  // namespace moex::data
