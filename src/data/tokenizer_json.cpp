#include "data/tokenizer_json.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/file_util.h"
#include "core/json_reader.h"
#include "data/pretokenize_split.h"
#include "data/tokenizer_hf.h"

namespace moex::data {
namespace {

using nlohmann::json;

// Reads fields of one file and names "<file>: field <path>" in every error.
class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    MOEX_THROW(source_, ": field ", field, ": ", what);
  }
  const json& require(const json& obj, const std::string& field, const char* key) const {
    if (!obj.is_object() || !obj.contains(key))
      fail(field.empty() ? key : field + "." + key, "is missing");
    return obj.at(key);
  }
  std::string string(const json& v, const std::string& field) const {
    if (!v.is_string()) fail(field, "expected a string, got " + dump(v));
    return v.get<std::string>();
  }
  std::string string_or(const json& obj, const char* key, const std::string& field,
                        std::string fallback) const {
    if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
    return string(obj.at(key), field + "." + key);
  }
  bool boolean_or(const json& obj, const char* key, const std::string& field, bool fallback) const {
    if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
    if (!obj.at(key).is_boolean())
      fail(field + "." + key, "expected true or false, got " + dump(obj.at(key)));
    return obj.at(key).get<bool>();
  }
  int64_t integer(const json& v, const std::string& field) const {
    if (!v.is_number_integer()) fail(field, "expected an integer, got " + dump(v));
    return v.get<int64_t>();
  }
  int32_t id(const json& v, const std::string& field) const {
    const int64_t x = integer(v, field);
    if (x < 0 || x > INT32_MAX) fail(field, "token id " + std::to_string(x) + " out of range");
    return static_cast<int32_t>(x);
  }
  const json& array(const json& v, const std::string& field) const {
    if (!v.is_array()) fail(field, "expected an array, got " + dump(v));
    return v;
  }
  // A Replace/Split "pattern": only {"String": s} is supported (no regex engine here).
  std::string string_pattern(const json& obj, const std::string& field) const {
    const json& p = require(obj, field, "pattern");
    if (p.is_object() && p.contains("String"))
      return string(p.at("String"), field + ".pattern.String");
    fail(field + ".pattern", "only {\"String\": ...} patterns are supported, got " + dump(p));
  }
  static std::string dump(const json& v) {
    std::string s = v.dump();
    return s.size() > 60 ? s.substr(0, 57) + "..." : s;
  }
  const std::string& source() const { return source_; }

 private:
  std::string source_;
};

std::string type_of(const Reader& r, const json& obj, const std::string& field) {
  return r.string(r.require(obj, field, "type"), field + ".type");
}

void parse_normalizer(const Reader& r, const json& n, const std::string& field,
                      std::vector<HfNormalizerStep>* steps) {
  if (n.is_null()) return;
  const std::string type = type_of(r, n, field);
  if (type == "Sequence") {
    const json& list = r.array(r.require(n, field, "normalizers"), field + ".normalizers");
    for (size_t k = 0; k < list.size(); ++k)
      parse_normalizer(r, list[k], field + ".normalizers[" + std::to_string(k) + "]", steps);
  } else if (type == "Prepend") {
    steps->push_back({HfNormalizerStep::Kind::kPrepend,
                      r.string(r.require(n, field, "prepend"), field + ".prepend"), ""});
  } else if (type == "Replace") {
    steps->push_back({HfNormalizerStep::Kind::kReplace, r.string_pattern(n, field),
                      r.string(r.require(n, field, "content"), field + ".content")});
  } else if (type == "Strip") {
    HfNormalizerStep s{HfNormalizerStep::Kind::kStrip, "", ""};
    s.left = r.boolean_or(n, "strip_left", field, true);
    s.right = r.boolean_or(n, "strip_right", field, true);
    steps->push_back(s);
  } else if (type == "NFC") {
    steps->push_back({HfNormalizerStep::Kind::kNfc, "", ""});
  } else {
    r.fail(field + ".type",
           "normalizer '" + type + "' is not supported (Sequence, Prepend, Replace, Strip, NFC)");
  }
}

void parse_pre_tokenizer(const Reader& r, const json& p, const std::string& field,
                         std::vector<HfPreTokenizerStep>* steps) {
  if (p.is_null()) return;
  const std::string type = type_of(r, p, field);
  if (type == "Sequence") {
    const json& list = r.array(r.require(p, field, "pretokenizers"), field + ".pretokenizers");
    for (size_t k = 0; k < list.size(); ++k)
      parse_pre_tokenizer(r, list[k], field + ".pretokenizers[" + std::to_string(k) + "]", steps);
  } else if (type == "ByteLevel") {
    HfPreTokenizerStep s;
    s.kind = HfPreTokenizerStep::Kind::kByteLevel;
    s.add_prefix_space = r.boolean_or(p, "add_prefix_space", field, true);
    s.use_regex = r.boolean_or(p, "use_regex", field, true);
    steps->push_back(s);
  } else if (type == "Metaspace") {
    HfPreTokenizerStep s;
    s.kind = HfPreTokenizerStep::Kind::kMetaspace;
    s.replacement = r.string_or(p, "replacement", field, "\xE2\x96\x81");
    s.split = r.boolean_or(p, "split", field, true);
    // tokenizers < 0.15 wrote only add_prefix_space; later files write prepend_scheme.
    const bool add_prefix_space = r.boolean_or(p, "add_prefix_space", field, true);
    const std::string scheme =
        r.string_or(p, "prepend_scheme", field, add_prefix_space ? "always" : "never");
    if (scheme == "always")
      s.prepend = HfPreTokenizerStep::Prepend::kAlways;
    else if (scheme == "first")
      s.prepend = HfPreTokenizerStep::Prepend::kFirst;
    else if (scheme == "never")
      s.prepend = HfPreTokenizerStep::Prepend::kNever;
    else
      r.fail(field + ".prepend_scheme", "expected always, first or never, got '" + scheme + "'");
    steps->push_back(s);
  } else if (type == "Split") {
    HfPreTokenizerStep s;
    s.kind = HfPreTokenizerStep::Kind::kSplit;
    const json& pattern = r.require(p, field, "pattern");
    if (pattern.is_object() && pattern.contains("String")) {
      s.split_spec.pattern = SplitPattern::kLiteral;
      s.split_spec.literal = r.string(pattern.at("String"), field + ".pattern.String");
    } else if (pattern.is_object() && pattern.contains("Regex")) {
      const std::string regex = r.string(pattern.at("Regex"), field + ".pattern.Regex");
      const auto known = recognize_split_regex(regex);
      if (!known)
        r.fail(field + ".pattern.Regex",
               "regex " + json(regex).dump() +
                   " is not one of the split patterns written by hand here (GPT-2, Qwen2, "
                   "Llama 3); there is no general regex engine");
      s.split_spec.pattern = *known;
    } else {
      r.fail(field + ".pattern",
             "expected {\"String\": ...} or {\"Regex\": ...}, got " + Reader::dump(pattern));
    }
    const std::string behavior = r.string(r.require(p, field, "behavior"), field + ".behavior");
    const auto b = parse_split_behavior(behavior);
    if (!b)
      r.fail(field + ".behavior",
             "expected Removed, Isolated, MergedWithPrevious, "
             "MergedWithNext or Contiguous, got '" +
                 behavior + "'");
    s.split_spec.behavior = *b;
    s.split_spec.invert = r.boolean_or(p, "invert", field, false);
    steps->push_back(s);
  } else {
    r.fail(field + ".type",
           "pre-tokenizer '" + type + "' is not supported (Sequence, ByteLevel, Metaspace, Split)");
  }
}

void parse_decoder(const Reader& r, const json& d, const std::string& field,
                   std::vector<HfDecoderStep>* steps) {
  const std::string type = type_of(r, d, field);
  HfDecoderStep s;
  if (type == "Sequence") {
    const json& list = r.array(r.require(d, field, "decoders"), field + ".decoders");
    for (size_t k = 0; k < list.size(); ++k)
      parse_decoder(r, list[k], field + ".decoders[" + std::to_string(k) + "]", steps);
    return;
  } else if (type == "Replace") {
    s.kind = HfDecoderStep::Kind::kReplace;
    s.pattern = r.string_pattern(d, field);
    s.content = r.string(r.require(d, field, "content"), field + ".content");
  } else if (type == "ByteFallback") {
    s.kind = HfDecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    s.kind = HfDecoderStep::Kind::kFuse;
  } else if (type == "Strip") {
    s.kind = HfDecoderStep::Kind::kStrip;
    s.content = r.string(r.require(d, field, "content"), field + ".content");
    s.start = static_cast<int>(r.integer(r.require(d, field, "start"), field + ".start"));
    s.stop = static_cast<int>(r.integer(r.require(d, field, "stop"), field + ".stop"));
  } else if (type == "ByteLevel") {
    s.kind = HfDecoderStep::Kind::kByteLevel;
  } else if (type == "Metaspace") {
    s.kind = HfDecoderStep::Kind::kMetaspace;
    s.replacement = r.string_or(d, "replacement", field, "\xE2\x96\x81");
    const bool add_prefix_space = r.boolean_or(d, "add_prefix_space", field, true);
    s.prepend =
        r.string_or(d, "prepend_scheme", field, add_prefix_space ? "always" : "never") != "never";
  } else {
    r.fail(field + ".type", "decoder '" + type +
                                "' is not supported (Sequence, Replace, ByteFallback, Fuse, Strip, "
                                "ByteLevel, Metaspace)");
  }
  steps->push_back(s);
}

// The ids of a post-processor, flattened to "prefix + sequence + suffix".
void parse_post_processor(const Reader& r, const json& p, const std::string& field,
                          HfTokenizerSpec* spec) {
  if (p.is_null()) return;
  const std::string type = type_of(r, p, field);
  if (type == "Sequence") {
    const json& list = r.array(r.require(p, field, "processors"), field + ".processors");
    for (size_t k = 0; k < list.size(); ++k)
      parse_post_processor(r, list[k], field + ".processors[" + std::to_string(k) + "]", spec);
  } else if (type == "ByteLevel") {
    // Adjusts offsets only.
  } else if (type == "TemplateProcessing") {
    const json& single = r.array(r.require(p, field, "single"), field + ".single");
    const json& specials = r.require(p, field, "special_tokens");
    bool seen_sequence = false;
    for (size_t k = 0; k < single.size(); ++k) {
      const std::string item_field = field + ".single[" + std::to_string(k) + "]";
      const json& item = single[k];
      if (item.is_object() && item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      if (!item.is_object() || !item.contains("SpecialToken"))
        r.fail(item_field, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      const std::string name =
          r.string(r.require(item.at("SpecialToken"), item_field + ".SpecialToken", "id"),
                   item_field + ".SpecialToken.id");
      if (!specials.is_object() || !specials.contains(name))
        r.fail(field + ".special_tokens", "has no entry for '" + name + "' used by " + item_field);
      const std::string ids_field = field + ".special_tokens." + name + ".ids";
      const json& ids = r.array(
          r.require(specials.at(name), field + ".special_tokens." + name, "ids"), ids_field);
      for (size_t j = 0; j < ids.size(); ++j) {
        const int32_t id = r.id(ids[j], ids_field + "[" + std::to_string(j) + "]");
        (seen_sequence ? spec->suffix_ids : spec->prefix_ids).push_back(id);
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    for (const char* key : {"cls", "sep"}) {
      const json& pair = r.array(r.require(p, field, key), field + "." + key);
      if (pair.size() != 2) r.fail(field + "." + key, "expected [token, id]");
      const int32_t id = r.id(pair[1], field + "." + key + "[1]");
      (std::string(key) == "cls" ? spec->prefix_ids : spec->suffix_ids).push_back(id);
    }
  } else {
    r.fail(field + ".type", "post-processor '" + type +
                                "' is not supported (TemplateProcessing, ByteLevel, "
                                "BertProcessing, RobertaProcessing, Sequence)");
  }
}

std::unique_ptr<BpeModel> parse_model(const Reader& r, const json& root) {
  const json& model = r.require(root, "", "model");
  if (!model.is_object()) r.fail("model", "expected an object");
  const std::string type = r.string_or(model, "type", "model", "BPE");
  if (type != "BPE") r.fail("model.type", "model type '" + type + "' is not supported (only BPE)");
  const json& vocab_json = r.require(model, "model", "vocab");
  if (!vocab_json.is_object()) r.fail("model.vocab", "expected an object of token: id");
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(vocab_json.size());
  int64_t max_id = -1;
  std::unordered_map<int32_t, std::string> token_of;  // one token an id: decoding needs it
  token_of.reserve(vocab_json.size());
  for (auto it = vocab_json.begin(); it != vocab_json.end(); ++it) {
    const std::string field = "model.vocab[\"" + it.key() + "\"]";
    const int32_t id = r.id(it.value(), field);
    const auto [earlier, fresh] = token_of.emplace(id, it.key());
    if (!fresh)
      r.fail(field, "id " + std::to_string(id) + " is also the id of \"" + earlier->second +
                        "\" (each id must name one token)");
    vocab[it.key()] = id;
    max_id = std::max<int64_t>(max_id, id);
  }
  // The model keeps a table indexed by id: an id far past the number of entries (a corrupted
  // file) would allocate gigabytes for nothing. Real vocabularies are dense.
  const int64_t id_limit = 2 * static_cast<int64_t>(vocab.size()) + 1024;
  if (max_id >= id_limit)
    r.fail("model.vocab", "token id " + std::to_string(max_id) + " is far beyond its " +
                              std::to_string(vocab.size()) + " entries (ids must be below " +
                              std::to_string(id_limit) + ")");

  const json& merges_json =
      model.contains("merges") ? r.array(model.at("merges"), "model.merges") : json::array();
  std::vector<BpeMerge> merges;
  merges.reserve(merges_json.size());
  for (size_t k = 0; k < merges_json.size(); ++k) {
    const std::string field = "model.merges[" + std::to_string(k) + "]";
    const json& m = merges_json[k];
    std::string left, right;
    if (m.is_string()) {  // "a b" (tokenizers < 0.20)
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        r.fail(field, "expected \"left right\" with one space, got " + Reader::dump(m));
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // [a, b]
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      r.fail(field, "expected \"left right\" or [left, right], got " + Reader::dump(m));
    }
    auto lookup = [&](const std::string& token) {
      auto it = vocab.find(token);
      if (it == vocab.end())
        r.fail(field, "names token '" + token + "' that is not in model.vocab");
      return it->second;
    };
    merges.push_back({lookup(left), lookup(right), lookup(left + right)});
  }

  BpeOptions options;
  options.byte_fallback = r.boolean_or(model, "byte_fallback", "model", false);
  options.fuse_unk = r.boolean_or(model, "fuse_unk", "model", false);
  options.ignore_merges = r.boolean_or(model, "ignore_merges", "model", false);
  options.continuing_subword_prefix = r.string_or(model, "continuing_subword_prefix", "model", "");
  options.end_of_word_suffix = r.string_or(model, "end_of_word_suffix", "model", "");
  if (model.contains("dropout") && !model.at("dropout").is_null() &&
      !model.at("dropout").is_number())
    r.fail("model.dropout", "expected a number or null, got " + Reader::dump(model.at("dropout")));
  if (model.contains("dropout") && !model.at("dropout").is_null() &&
      model.at("dropout").get<double>() != 0.0)
    r.fail("model.dropout", "BPE dropout is a training-time option and is not supported");
  const std::string unk = r.string_or(model, "unk_token", "model", "");
  if (!unk.empty()) {
    auto it = vocab.find(unk);
    if (it == vocab.end()) r.fail("model.unk_token", "'" + unk + "' is not in model.vocab");
    options.unk_id = it->second;
  }
  return std::make_unique<BpeModel>(std::move(vocab), merges, options);
}

// bos_token / eos_token of tokenizer_config.json: a string or {"content": ...}.
std::string config_token(const json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return "";
  const json& v = config.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return v.at("content").get<std::string>();
  return "";
}

}  // namespace

std::unique_ptr<Tokenizer> parse_tokenizer_json(const std::string& json_text,
                                                const std::string& source,
                                                const std::string& config_json) {
  const Reader r(source);
  const json root = parse_json(json_text, source, "not valid JSON");
  if (!root.is_object()) r.fail("(root)", "expected a JSON object");
  HfTokenizerSpec spec;
  try {
    spec.model = parse_model(r, root);
    if (root.contains("added_tokens") && !root.at("added_tokens").is_null()) {
      const json& list = r.array(root.at("added_tokens"), "added_tokens");
      for (size_t k = 0; k < list.size(); ++k) {
        const std::string field = "added_tokens[" + std::to_string(k) + "]";
        HfAddedToken t;
        t.id = r.id(r.require(list[k], field, "id"), field + ".id");
        t.content = r.string(r.require(list[k], field, "content"), field + ".content");
        t.special = r.boolean_or(list[k], "special", field, false);
        t.lstrip = r.boolean_or(list[k], "lstrip", field, false);
        t.rstrip = r.boolean_or(list[k], "rstrip", field, false);
        t.single_word = r.boolean_or(list[k], "single_word", field, false);
        if (t.content.empty()) r.fail(field + ".content", "is empty");
        spec.added_tokens.push_back(std::move(t));
      }
    }
    parse_normalizer(r, root.value("normalizer", json()), "normalizer", &spec.normalizer);
    parse_pre_tokenizer(r, root.value("pre_tokenizer", json()), "pre_tokenizer",
                        &spec.pre_tokenizer);
    if (root.contains("decoder") && !root.at("decoder").is_null()) {
      spec.has_decoder = true;
      parse_decoder(r, root.at("decoder"), "decoder", &spec.decoder);
    }
    parse_post_processor(r, root.value("post_processor", json()), "post_processor", &spec);
  } catch (const json::exception& e) {  // a type mismatch the checks above did not foresee
    MOEX_THROW(source, ": malformed tokenizer.json: ", e.what());
  }

  // BOS/EOS: tokenizer_config.json when given, else the template's leading special token and
  // the usual end-of-sequence names.
  json config;
  if (!config_json.empty())
    config = parse_json(config_json, source, "tokenizer_config.json beside it is not valid JSON");
  auto id_of = [&](const std::string& token) -> int32_t {
    if (token.empty()) return -1;
    for (const auto& t : spec.added_tokens)
      if (t.content == token) return t.id;
    return spec.model->token_to_id(token);
  };
  spec.bos_id = id_of(config_token(config, "bos_token"));
  spec.eos_id = id_of(config_token(config, "eos_token"));
  if (spec.bos_id < 0 && !spec.prefix_ids.empty()) spec.bos_id = spec.prefix_ids.front();
  for (const char* name : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>"}) {
    if (spec.eos_id < 0) spec.eos_id = id_of(name);
  }
  return std::make_unique<HfTokenizer>(std::move(spec));
}

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path) {
  const std::filesystem::path config_path =
      std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  const std::string config =
      std::filesystem::exists(config_path, ec) ? read_file(config_path.string()) : "";
  return parse_tokenizer_json(read_file(path), path, config);
}

}  // namespace moex::data
