#include "data/corpus_writer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace moex::data {

using nlohmann::json;

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

std::set<std::string> pick_valid_units(std::vector<std::string> units, double fraction,
                                       uint64_t seed) {
  std::sort(units.begin(), units.end());
  units.erase(std::unique(units.begin(), units.end()), units.end());
  std::sort(units.begin(), units.end(), [&](const std::string& a, const std::string& b) {
    const uint64_t ha = philox_u32(seed, fnv1a(a), 0), hb = philox_u32(seed, fnv1a(b), 0);
    return ha != hb ? ha < hb : a < b;
  });
  size_t n = static_cast<size_t>(std::ceil(fraction * static_cast<double>(units.size())));
  if (units.size() < 2) n = 0;
  n = std::min(n, units.size() - (units.empty() ? 0 : 1));  // keep at least one for training
  return std::set<std::string>(units.begin(), units.begin() + static_cast<std::ptrdiff_t>(n));
}

SourceSplitsWriter::SourceSplitsWriter(const std::string& dir, CorpusSource* info,
                                       TokenDType dtype, bool loss_mask)
    : info_(info),
      train_(dir + "/" + info->train.prefix, dtype),
      valid_(dir + "/" + info->valid.prefix, dtype) {
  if (!loss_mask) return;
  for (CorpusSplitStats* split : {&info->train, &info->valid})
    split->mask_prefix = split->prefix + ".mask";
  train_mask_ = std::make_unique<IndexedDatasetBuilder>(dir + "/" + info->train.mask_prefix,
                                                        TokenDType::kU16);
  valid_mask_ = std::make_unique<IndexedDatasetBuilder>(dir + "/" + info->valid.mask_prefix,
                                                        TokenDType::kU16);
}

void SourceSplitsWriter::add(const std::vector<int32_t>& ids, bool valid,
                             const std::vector<int32_t>* mask) {
  MOEX_CHECK((mask != nullptr) == (train_mask_ != nullptr) && (!mask || mask->size() == ids.size()),
             info_->name, ": a document's loss mask must match its ids");
  (valid ? valid_ : train_).add_document(ids);
  CorpusSplitStats& stats = valid ? info_->valid : info_->train;
  stats.documents++;
  stats.tokens += static_cast<int64_t>(ids.size());
  if (mask == nullptr) return;
  (valid ? *valid_mask_ : *train_mask_).add_document(*mask);
  for (int32_t m : *mask) stats.trained_tokens += m != 0;
}

void SourceSplitsWriter::finish() {
  train_.finish();
  valid_.finish();
  if (train_mask_) {
    train_mask_->finish();
    valid_mask_->finish();
  }
}

namespace {

json split_json(const CorpusSplitStats& s) {
  json j = {{"prefix", s.prefix}, {"documents", s.documents}, {"tokens", s.tokens}};
  if (!s.mask_prefix.empty()) {
    j["loss_mask"] = s.mask_prefix;
    j["trained_tokens"] = s.trained_tokens;
  }
  return j;
}

}  // namespace

json corpus_manifest_json(const CorpusManifest& manifest, const std::string& tokenizer_file,
                          int32_t bos_id, TokenDType dtype) {
  json j;
  j["format"] = "moex-corpus-1";
  j["tokenizer"] = tokenizer_file;
  j["vocab_size"] = manifest.vocab_size;
  j["eos_id"] = manifest.eos_id;
  j["bos_id"] = bos_id;
  j["token_dtype"] = dtype == TokenDType::kU16 ? "uint16" : "int32";
  j["sources"] = json::array();
  json per_lang = json::object();
  for (const auto& s : manifest.sources) {
    j["sources"].push_back({{"name", s.name},
                            {"language", s.language},
                            {"task", s.task},
                            {"origin", s.origin},
                            {"text", s.text_path},
                            {"text_bytes", s.text_bytes},
                            {"train", split_json(s.train)},
                            {"valid", split_json(s.valid)}});
    if (!per_lang.contains(s.language))
      per_lang[s.language] = {{"train_tokens", 0}, {"valid_tokens", 0}};
    json& pl = per_lang[s.language];
    pl["train_tokens"] = pl["train_tokens"].get<int64_t>() + s.train.tokens;
    pl["valid_tokens"] = pl["valid_tokens"].get<int64_t>() + s.valid.tokens;
  }
  j["languages"] = per_lang;
  j["seconds"] = manifest.seconds;
  return j;
}

}  // namespace moex::data
