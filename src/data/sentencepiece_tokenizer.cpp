#include "data/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "core/file_util.h"

namespace moex::data {

SentencePieceTokenizer::SentencePieceTokenizer(
    std::unique_ptr<sentencepiece::SentencePieceProcessor> processor, std::string path)
    : sp_(std::move(processor)), path_(std::move(path)) {
  for (int id = 0; id < sp_->GetPieceSize(); ++id)
    if (sp_->IsControl(id) && !sp_->IdToPiece(id).empty())
      controls_.emplace_back(sp_->IdToPiece(id), id);
  // The longest first: where two start at one place, the longer one is the match.
  std::stable_sort(controls_.begin(), controls_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::open(
    const std::string& model_path) {
  // Read here, bounded, rather than by SentencePiece's Load, which reads any stream to its end.
  constexpr int64_t kMaxModelBytes = int64_t{256} << 20;
  const std::string bytes = read_file(model_path, kMaxModelBytes);
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(absl::string_view(bytes.data(), bytes.size()));
  // The library's reason, without its source location when the protobuf did not parse.
  const std::string reason(status.message());
  MOEX_CHECK(status.ok(), model_path, ": not a SentencePiece model (and not a tokenizer.json): ",
             reason.find("ParseFromArray") != std::string::npos
                 ? std::string("its bytes do not parse as one")
                 : reason);
  return std::unique_ptr<SentencePieceTokenizer>(
      new SentencePieceTokenizer(std::move(sp), model_path));
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text,
                                                    bool add_special_tokens) const {
  std::vector<int32_t> ids;
  if (add_special_tokens && sp_->bos_id() >= 0) ids.push_back(sp_->bos_id());
  // libsentencepiece reads control pieces written in the text ("<s>", "</s>") as plain
  // characters: each is matched here and the text between them encoded on its own, as a
  // Hugging Face Llama tokenizer does (a chat template writes BOS and EOS as text).
  std::vector<int> pieces;
  auto encode_plain = [&](std::string_view part) {
    if (part.empty()) return;
    const auto status = sp_->Encode(absl::string_view(part.data(), part.size()), &pieces);
    MOEX_CHECK(status.ok(), path_, ": encode failed: ", status.ToString());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
  };
  // Each control's next place at or after `at`, searched again only once `at` has passed it:
  // linear in the text however many controls it holds.
  std::vector<size_t> next(controls_.size());
  for (size_t k = 0; k < controls_.size(); ++k) next[k] = text.find(controls_[k].first);
  size_t at = 0;
  while (at < text.size()) {
    size_t found = std::string_view::npos, match = 0;
    for (size_t k = 0; k < controls_.size(); ++k) {
      if (next[k] != std::string_view::npos && next[k] < at)
        next[k] = text.find(controls_[k].first, at);
      if (next[k] < found) found = next[k], match = k;  // ties keep the longer (earlier) one
    }
    if (found == std::string_view::npos) break;
    encode_plain(text.substr(at, found - at));
    ids.push_back(controls_[match].second);
    at = found + controls_[match].first.size();
  }
  encode_plain(text.substr(at));
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids,
                                           bool skip_special_tokens) const {
  const int n = sp_->GetPieceSize();
  std::vector<int> kept;
  kept.reserve(ids.size());
  std::string out;
  for (int32_t id : ids) {
    MOEX_CHECK(id >= 0 && id < n, path_, ": token id ", id, " is not in the vocabulary (size ", n,
               ")");
    if (!skip_special_tokens && sp_->IsControl(id)) {
      // libsentencepiece drops control pieces; keep their text in place when asked to.
      std::string part;
      MOEX_CHECK(sp_->Decode(kept, &part).ok(), path_, ": decode failed");
      out += part + sp_->IdToPiece(id);
      kept.clear();
      continue;
    }
    kept.push_back(id);
  }
  std::string part;
  const auto status = sp_->Decode(kept, &part);
  MOEX_CHECK(status.ok(), path_, ": decode failed: ", status.ToString());
  return out + part;
}

std::string SentencePieceTokenizer::decode_bytes(const std::vector<int32_t>& ids) const {
  const int n = sp_->GetPieceSize();
  static const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's word boundary
  std::string out;
  bool segment_start = true;  // encode gives each run between control pieces its dummy prefix
  for (size_t k = 0; k < ids.size(); ++k) {
    const int32_t id = ids[k];
    MOEX_CHECK(id >= 0 && id < n, path_, ": token id ", id, " is not in the vocabulary (size ", n,
               ")");
    const std::string piece = sp_->IdToPiece(id);
    if (sp_->IsControl(id)) {
      out += piece;
      segment_start = true;
      continue;
    }
    if (sp_->IsByte(id)) {  // "<0xNN>"
      out.push_back(static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    } else if (sp_->IsUnknown(id)) {
      out += sp_->DecodeIds({id});
    } else {
      std::string text = piece;
      for (size_t at = text.find(kSpace); at != std::string::npos; at = text.find(kSpace, at + 1))
        text.replace(at, kSpace.size(), " ");
      // The space SentencePiece's dummy prefix put before a run's first word is not the text's.
      if (segment_start && piece.compare(0, kSpace.size(), kSpace) == 0) text.erase(0, 1);
      out += text;
    }
    segment_start = false;
  }
  return out;
}

int64_t SentencePieceTokenizer::vocab_size() const {
  return sp_->GetPieceSize();
}
int32_t SentencePieceTokenizer::bos_id() const {
  return sp_->bos_id();
}
int32_t SentencePieceTokenizer::eos_id() const {
  return sp_->eos_id();
}

int32_t SentencePieceTokenizer::token_to_id(const std::string& token) const {
  const int id = sp_->PieceToId(token);
  // PieceToId answers unk_id for unknown pieces; only the unk piece itself maps to it.
  return (id == sp_->unk_id() && sp_->IdToPiece(id) != token) ? -1 : id;
}

std::string SentencePieceTokenizer::id_to_token(int32_t id) const {
  MOEX_CHECK(id >= 0 && id < sp_->GetPieceSize(), path_, ": token id ", id,
             " is not in the vocabulary");
  return sp_->IdToPiece(id);
}

bool SentencePieceTokenizer::is_special(int32_t id) const {
  return id >= 0 && id < sp_->GetPieceSize() && sp_->IsControl(id);
}

void train_sentencepiece(const SentencePieceTrainOptions& o) {
  MOEX_CHECK(!o.input.empty(), "train_sentencepiece: no input file");
  MOEX_CHECK(!o.model_prefix.empty(), "train_sentencepiece: no model_prefix");
  MOEX_CHECK(o.model_type == "unigram" || o.model_type == "bpe" || o.model_type == "char" ||
                 o.model_type == "word",
             "train_sentencepiece: model_type must be unigram, bpe, char or word, got '",
             o.model_type, "'");
  std::unordered_map<std::string, std::string> kwargs = {
      {"input", o.input},
      {"model_prefix", o.model_prefix},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"model_type", o.model_type},
      {"character_coverage", std::to_string(o.character_coverage)},
      {"byte_fallback", o.byte_fallback ? "true" : "false"},
      {"num_threads", std::to_string(o.num_threads)},
      {"unk_id", std::to_string(o.unk_id)},
      {"bos_id", std::to_string(o.bos_id)},
      {"eos_id", std::to_string(o.eos_id)},
      {"pad_id", std::to_string(o.pad_id)},
  };
  if (o.input_sentence_size > 0) {
    kwargs["input_sentence_size"] = std::to_string(o.input_sentence_size);
    kwargs["shuffle_input_sentence"] = "true";
  }
  if (!o.user_defined_symbols.empty()) {
    std::string joined;
    for (const auto& s : o.user_defined_symbols) joined += (joined.empty() ? "" : ",") + s;
    kwargs["user_defined_symbols"] = joined;
  }
  if (o.quiet) kwargs["minloglevel"] = "1";
  const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs);
  MOEX_CHECK(status.ok(), o.input, ": SentencePiece training failed: ", status.ToString());
}

}  // namespace moex::data
