// What both corpus builders share (the default corpus, data/corpus.h, and a corpus of the user's
// own text, data/text_corpus.h): the seeded train/valid split, each source's .bin/.idx datasets,
// and the manifest, corpus.json, that the trainer reads back (load_corpus_manifest).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "data/corpus.h"
#include "data/indexed_dataset.h"

namespace moex::data {

uint64_t fnv1a(const std::string& s);  // a stable 64-bit hash of a document's key

// Marks ceil(fraction * units) split units as validation, chosen by a seeded hash so that the
// choice does not depend on order and is the same for every source that shares units. Never all
// of them: at least one unit stays for training.
std::set<std::string> pick_valid_units(std::vector<std::string> units, double fraction,
                                       uint64_t seed);

// One source's two datasets, `<dir>/<prefix>.{bin,idx}` for the train and valid prefixes named in
// `info`, with their document and token counts kept in `info` as documents are added. With
// `loss_mask`, each split's mask beside it (`<prefix>.mask`, named in info's mask_prefix).
class SourceSplitsWriter {
 public:
  SourceSplitsWriter(const std::string& dir, CorpusSource* info, TokenDType dtype,
                     bool loss_mask = false);
  // `mask`: one 0/1 per id, given exactly when the writer keeps masks.
  void add(const std::vector<int32_t>& ids, bool valid,
           const std::vector<int32_t>* mask = nullptr);
  void finish();

 private:
  CorpusSource* info_;
  IndexedDatasetBuilder train_, valid_;
  std::unique_ptr<IndexedDatasetBuilder> train_mask_, valid_mask_;  // with loss_mask
};

// corpus.json's fields that every corpus has: format, tokenizer (its file name, in the corpus
// directory), vocab_size, eos_id, bos_id, token_dtype, sources, per-language token counts and
// seconds. A builder adds its own fields (the default corpus: tags, seed, ...).
nlohmann::json corpus_manifest_json(const CorpusManifest& manifest,
                                    const std::string& tokenizer_file, int32_t bos_id,
                                    TokenDType dtype);

}  // namespace moex::data
