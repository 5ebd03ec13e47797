// The Hugging Face tokenizer pipeline once parsed: added tokens -> normalizer -> pre-tokenizer ->
// BPE model -> post-processor, and the decoder chain back. tokenizer_json.cpp fills the spec.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "data/bpe.h"
#include "data/pretokenize_split.h"
#include "data/tokenizer.h"

namespace moex::data {

struct HfAddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
};

struct HfNormalizerStep {
  enum class Kind { kPrepend, kReplace, kStrip, kNfc };
  Kind kind;
  std::string text;                  // Prepend: prefix; Replace: pattern
  std::string content;               // Replace: replacement
  bool left = false, right = false;  // Strip
};

struct HfPreTokenizerStep {
  enum class Kind { kByteLevel, kMetaspace, kSplit };
  enum class Prepend { kAlways, kFirst, kNever };
  Kind kind = Kind::kByteLevel;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = true;          // ByteLevel
  std::string replacement;        // Metaspace
  Prepend prepend = Prepend::kAlways;
  bool split = true;     // Metaspace
  SplitSpec split_spec;  // Split
};

struct HfDecoderStep {
  enum class Kind { kReplace, kByteFallback, kFuse, kStrip, kByteLevel, kMetaspace };
  Kind kind = Kind::kFuse;
  std::string pattern, content;  // Replace; Strip uses content (one char)
  int start = 0, stop = 0;       // Strip
  std::string replacement;       // Metaspace
  bool prepend = true;           // Metaspace: drop the leading space of the first token
};

struct HfTokenizerSpec {
  std::unique_ptr<BpeModel> model;
  std::vector<HfAddedToken> added_tokens;
  std::vector<HfNormalizerStep> normalizer;
  std::vector<HfPreTokenizerStep> pre_tokenizer;
  std::vector<HfDecoderStep> decoder;  // empty: tokens joined with spaces, as HF does
  bool has_decoder = false;
  // Post-processor, flattened: ids before and after the sequence (TemplateProcessing single,
  // Bert/Roberta cls/sep). Nothing when the file has none or only ByteLevel.
  std::vector<int32_t> prefix_ids, suffix_ids;
  int32_t bos_id = -1, eos_id = -1;
};

class HfTokenizer : public Tokenizer {
 public:
  explicit HfTokenizer(HfTokenizerSpec spec);

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  std::string decode(const std::vector<int32_t>& ids,
                     bool skip_special_tokens = true) const override;
  std::string decode_bytes(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return spec_.bos_id; }
  int32_t eos_id() const override { return spec_.eos_id; }
  int32_t token_to_id(const std::string& token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;

 private:
  // The decoder chain; `raw` leaves bytes that are not valid UTF-8 as they are (decode_bytes)
  // where decode writes U+FFFD.
  std::string run_decoder(const std::vector<int32_t>& ids, bool skip_special_tokens,
                          bool raw) const;
  struct Segment {
    size_t begin, end;  // byte range in the text
    int32_t added_id;   // >= 0: an added token
  };
  std::vector<Segment> split_added_tokens(std::string_view text) const;
  void encode_section(std::string_view section, bool at_text_start,
                      std::vector<int32_t>* ids) const;
  const HfAddedToken* added_by_id(int32_t id) const;

  HfTokenizerSpec spec_;
  int64_t vocab_size_ = 0;
  // Added tokens indexed by first byte, longest first (leftmost-longest matching).
  std::vector<std::vector<size_t>> added_by_first_byte_;
  std::unordered_map<int32_t, size_t> added_index_by_id_;
  std::unordered_map<std::string, int32_t> added_id_by_content_;
};

}  // namespace moex::data
