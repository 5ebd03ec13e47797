#include "infer/hf_export.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "core/json_reader.h"
#include "data/tokenizer.h"
#include "infer/model_tokenizer.h"
#include "io/atomic_file.h"

namespace moex::infer {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Protocol buffer wire format, only as far as a SentencePiece ModelProto needs it.
class WireReader {
 public:
  WireReader(const std::string& path, std::string_view bytes) : path_(path), bytes_(bytes) {}
  bool done() const { return pos_ >= bytes_.size(); }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      MOEX_CHECK(pos_ < bytes_.size(), path_, ": not a SentencePiece model (truncated varint)");
      const uint8_t b = static_cast<uint8_t>(bytes_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    MOEX_THROW(path_, ": not a SentencePiece model (varint longer than 10 bytes)");
  }
  // Reads a field key; `wire` is 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
  int key(int* wire) {
    const uint64_t k = varint();
    *wire = static_cast<int>(k & 7);
    return static_cast<int>(k >> 3);
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    MOEX_CHECK(n <= bytes_.size() - pos_, path_,
               ": not a SentencePiece model (a field runs past the end)");
    const std::string_view v = bytes_.substr(pos_, n);
    pos_ += n;
    return v;
  }
  float fixed32_float() {
    MOEX_CHECK(bytes_.size() - pos_ >= 4, path_, ": not a SentencePiece model (truncated float)");
    uint32_t u = 0;
    for (int i = 0; i < 4; ++i)
      u |= static_cast<uint32_t>(static_cast<uint8_t>(bytes_[pos_ + i])) << (8 * i);
    pos_ += 4;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  void skip(int wire) {
    switch (wire) {
      case 0:
        varint();
        break;
      case 1:
        advance(8);
        break;
      case 2:
        bytes();
        break;
      case 5:
        advance(4);
        break;
      default:
        MOEX_THROW(path_, ": not a SentencePiece model (wire type ", wire, ")");
    }
  }
  const std::string& path() const { return path_; }

 private:
  void advance(size_t n) {
    MOEX_CHECK(bytes_.size() - pos_ >= n, path_, ": not a SentencePiece model (truncated field)");
    pos_ += n;
  }
  std::string path_;
  std::string_view bytes_;
  size_t pos_ = 0;
};

// int32 fields are varints of the sign-extended 64-bit value.
int32_t as_int32(uint64_t v) {
  return static_cast<int32_t>(static_cast<int64_t>(v));
}

std::string base64(std::string_view in) {
  static const char* kTable = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t v = static_cast<uint32_t>(static_cast<uint8_t>(in[i])) << 16;
    if (i + 1 < in.size()) v |= static_cast<uint32_t>(static_cast<uint8_t>(in[i + 1])) << 8;
    if (i + 2 < in.size()) v |= static_cast<uint8_t>(in[i + 2]);
    out += kTable[(v >> 18) & 63];
    out += kTable[(v >> 12) & 63];
    out += i + 1 < in.size() ? kTable[(v >> 6) & 63] : '=';
    out += i + 2 < in.size() ? kTable[v & 63] : '=';
  }
  return out;
}

json token_or_null(const data::Tokenizer& tok, int32_t id) {
  return id >= 0 ? json(tok.id_to_token(id)) : json(nullptr);
}

json id_or_null(int64_t id) {
  return id >= 0 ? json(id) : json(nullptr);
}

void write_json(const std::string& path, const json& j) {
  io::write_file_atomic(path, j.dump(2) + "\n");
}

}  // namespace

SentencePieceModelInfo read_sentencepiece_model(const std::string& path) {
  const std::string bytes = read_file(path);
  SentencePieceModelInfo info;
  WireReader top(path, bytes);
  int wire = 0;
  while (!top.done()) {
    const int field = top.key(&wire);
    if (field == 1 && wire == 2) {  // repeated SentencePiece pieces
      WireReader p(path, top.bytes());
      SentencePieceModelInfo::Piece piece;
      while (!p.done()) {
        const int f = p.key(&wire);
        if (f == 1 && wire == 2)
          piece.text = std::string(p.bytes());
        else if (f == 2 && wire == 5)
          piece.score = p.fixed32_float();
        else if (f == 3 && wire == 0)
          piece.type = static_cast<int>(p.varint());
        else
          p.skip(wire);
      }
      info.pieces.push_back(std::move(piece));
    } else if (field == 2 && wire == 2) {  // TrainerSpec
      WireReader t(path, top.bytes());
      while (!t.done()) {
        const int f = t.key(&wire);
        if (wire != 0) {
          t.skip(wire);
          continue;
        }
        const uint64_t v = t.varint();
        if (f == 3) info.model_type = static_cast<int>(v);
        if (f == 35) info.byte_fallback = v != 0;
        if (f == 40) info.unk_id = as_int32(v);
        if (f == 41) info.bos_id = as_int32(v);
        if (f == 42) info.eos_id = as_int32(v);
        if (f == 43) info.pad_id = as_int32(v);
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec
      WireReader n(path, top.bytes());
      while (!n.done()) {
        const int f = n.key(&wire);
        if (f == 2 && wire == 2)
          info.precompiled_charsmap = std::string(n.bytes());
        else if (f == 3 && wire == 0)
          info.add_dummy_prefix = n.varint() != 0;
        else if (f == 4 && wire == 0)
          info.remove_extra_whitespaces = n.varint() != 0;
        else
          n.skip(wire);
      }
    } else {
      top.skip(wire);
    }
  }
  const int64_t n = static_cast<int64_t>(info.pieces.size());
  MOEX_CHECK(n > 0, path, ": not a SentencePiece model (no pieces)");
  for (const int32_t id : {info.unk_id, info.bos_id, info.eos_id, info.pad_id})
    MOEX_CHECK(id < n, path, ": special token id ", id, " is outside the ", n, " pieces");
  MOEX_CHECK(info.unk_id >= 0, path, ": the model has no unknown piece");
  return info;
}

std::string sentencepiece_tokenizer_json(const SentencePieceModelInfo& spm) {
  using Piece = SentencePieceModelInfo;
  MOEX_CHECK(spm.model_type == 1, "tokenizer.json: only a unigram SentencePiece model converts (",
             "model_type ", spm.model_type, ")");
  json added = json::array();
  json vocab = json::array();
  for (size_t id = 0; id < spm.pieces.size(); ++id) {
    const auto& p = spm.pieces[id];
    vocab.push_back({p.text, static_cast<double>(p.score)});
    // Control pieces (<s>, </s>) are special added tokens; user-defined ones (moex's language
    // and task tags) are plain added tokens, matched whole before normalization.
    if (p.type == Piece::kControl || p.type == Piece::kUserDefined || p.type == Piece::kUnknown) {
      added.push_back({{"id", id},
                       {"content", p.text},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", p.type != Piece::kUserDefined}});
    }
  }
  json normalizers = json::array();
  if (!spm.precompiled_charsmap.empty())
    normalizers.push_back(
        {{"type", "Precompiled"}, {"precompiled_charsmap", base64(spm.precompiled_charsmap)}});
  if (spm.remove_extra_whitespaces) {
    normalizers.push_back({{"type", "Strip"}, {"strip_left", false}, {"strip_right", true}});
    normalizers.push_back(
        {{"type", "Replace"}, {"pattern", {{"Regex", " {2,}"}}}, {"content", "\u2581"}});
  }
  const std::string prepend = spm.add_dummy_prefix ? "always" : "never";
  json decoders = json::array();
  decoders.push_back({{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}});
  if (spm.byte_fallback) decoders.push_back({{"type", "ByteFallback"}});
  decoders.push_back({{"type", "Fuse"}});
  if (spm.add_dummy_prefix)
    decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});

  json post = nullptr;
  if (spm.bos_id >= 0) {  // BOS first, as SentencePieceTokenizer::encode adds it
    const std::string bos = spm.pieces[spm.bos_id].text;
    auto special = [&](int type_id) {
      return json{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}};
    };
    auto seq = [](const char* id, int type_id) {
      return json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
    };
    post = {{"type", "TemplateProcessing"},
            {"single", {special(0), seq("A", 0)}},
            {"pair", {special(0), seq("A", 0), special(1), seq("B", 1)}},
            {"special_tokens", {{bos, {{"id", bos}, {"ids", {spm.bos_id}}, {"tokens", {bos}}}}}}};
  }
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", normalizers}};
  j["pre_tokenizer"] = {{"type", "Metaspace"},
                        {"replacement", "\u2581"},
                        {"prepend_scheme", prepend},
                        {"split", true}};
  j["post_processor"] = post;
  j["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
  j["model"] = {{"type", "Unigram"},
                {"unk_id", spm.unk_id},
                {"vocab", vocab},
                {"byte_fallback", spm.byte_fallback}};
  return j.dump(2) + "\n";
}

void save_hf_tokenizer_files(const model::Model& model, const std::string& model_dir,
                             const std::string& out_dir) {
  const auto& mc = model.config();
  const std::string tokenizer_path = data::tokenizer_file_in(model_dir);
  std::unique_ptr<data::Tokenizer> tok;
  json tc;  // tokenizer_config.json
  int32_t pad_id = -1;
  if (!tokenizer_path.empty()) {
    tok = data::open_tokenizer(tokenizer_path);
    tc["model_max_length"] = mc.max_seq_len;
    tc["clean_up_tokenization_spaces"] = false;
    tc["bos_token"] = token_or_null(*tok, tok->bos_id());
    tc["eos_token"] = token_or_null(*tok, tok->eos_id());
    if (fs::path(tokenizer_path).extension() == ".model") {
      const SentencePieceModelInfo spm = read_sentencepiece_model(tokenizer_path);
      pad_id = spm.pad_id;
      io::write_file_atomic(out_dir + "/tokenizer.model", read_file(tokenizer_path));
      if (spm.model_type == 1) {
        io::write_file_atomic(out_dir + "/tokenizer.json", sentencepiece_tokenizer_json(spm));
        tc["tokenizer_class"] = "PreTrainedTokenizerFast";
      } else {
        // transformers builds a BPE tokenizer from tokenizer.model (sentencepiece and protobuf
        // needed where it loads).
        tc["tokenizer_class"] = "LlamaTokenizer";
        tc["legacy"] = false;
      }
      tc["unk_token"] = spm.pieces[spm.unk_id].text;
      tc["pad_token"] = pad_id >= 0 ? json(spm.pieces[pad_id].text) : json(nullptr);
      tc["add_bos_token"] = spm.bos_id >= 0;
      tc["add_eos_token"] = false;
    } else {
      io::write_file_atomic(out_dir + "/tokenizer.json", read_file(tokenizer_path));
      const std::string own_config = (fs::path(model_dir) / "tokenizer_config.json").string();
      if (fs::exists(own_config)) {
        tc = nullptr;
        io::write_file_atomic(out_dir + "/tokenizer_config.json", read_file(own_config));
      } else {
        tc["tokenizer_class"] = "PreTrainedTokenizerFast";
      }
    }
    if (!tc.is_null()) write_json(out_dir + "/tokenizer_config.json", tc);
  }

  // The ids transformers' generate() starts and stops with.
  const std::vector<int32_t> eos = end_of_sequence_tokens(model, tok.get());
  std::vector<int32_t> unique_eos;
  for (const int32_t id : eos)
    if (std::find(unique_eos.begin(), unique_eos.end(), id) == unique_eos.end())
      unique_eos.push_back(id);
  const int64_t bos = tok && tok->bos_id() >= 0 ? tok->bos_id() : mc.bos_id;
  json gc;
  gc["bos_token_id"] = id_or_null(bos);
  gc["eos_token_id"] = unique_eos.empty()       ? json(nullptr)
                       : unique_eos.size() == 1 ? json(unique_eos[0])
                                                : json(unique_eos);
  if (pad_id >= 0) gc["pad_token_id"] = pad_id;
  write_json(out_dir + "/generation_config.json", gc);

  const std::string config_path = out_dir + "/config.json";
  json config = parse_json(read_file(config_path), config_path);
  bool changed = false;
  if ((!config.contains("bos_token_id") || config["bos_token_id"].is_null()) && bos >= 0) {
    config["bos_token_id"] = bos;
    changed = true;
  }
  if ((!config.contains("eos_token_id") || config["eos_token_id"].is_null()) &&
      !unique_eos.empty()) {
    config["eos_token_id"] = unique_eos[0];
    changed = true;
  }
  if (changed) write_json(config_path, config);
}

}  // namespace moex::infer
