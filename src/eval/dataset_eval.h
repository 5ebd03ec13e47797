// moex eval --data: a model on a split of a prepared corpus (docs/eval.md). Every source gets its
// perplexity over the split's whole token stream; translation sources (task "translate",
// documents `<task:translate> <lang:A> source <lang:B> target EOS`, docs/data.md) also get
// greedy translations of their first documents, scored with corpus BLEU and chrF against the
// targets.
#pragma once

#include <string>
#include <vector>

#include "data/corpus.h"
#include "data/tokenizer.h"
#include "model/model.h"

namespace moex::eval {

struct DatasetEvalOptions {
  std::string split = "valid";    // "train" or "valid"
  int64_t seq_len = 0;            // window length; 0: the model's max_seq_len
  int64_t batch = 8;              // windows per forward
  int64_t max_translations = 50;  // per translation source; 0: none
  int64_t max_new_tokens = 128;   // per translation (also bounded by max_seq_len)
  // true: windows over the documents put end to end; false: each document alone (its windows
  // never read another's tokens), as training with data.packing false reads them.
  bool packing = true;
};

struct TranslationPair {
  std::string source_text, hypothesis, reference;
};

struct SourceEval {
  std::string name, task;
  int64_t tokens = 0;  // predicted positions
  double loss = 0;     // mean next-token cross-entropy
  double perplexity = 0;
  // Translation sources with max_translations > 0:
  std::vector<TranslationPair> translations;
  double bleu = -1, chrf = -1;  // -1: not a translation source
};

struct DatasetEval {
  std::vector<SourceEval> sources;
  int64_t tokens = 0;
  double loss = 0, perplexity = 0;  // over all sources' positions
};

// The split's token stream of each wanted source (or each of its documents, options.packing
// false), cut into windows of seq_len + 1 tokens that overlap by one (every token after the first
// is predicted once, with the context of its own window). `tokenizer` decodes translations; it
// may be null when no translation is asked for.
DatasetEval evaluate_dataset(model::Model& model, const data::CorpusManifest& corpus,
                             const data::Tokenizer* tokenizer, const DatasetEvalOptions& options);

// A translation document split at its second language tag: the prompt (through that tag) and the
// target ids (EOS dropped). False when the document is not in that shape.
bool split_translation(const std::vector<int32_t>& doc, int32_t tag_a, int32_t tag_b,
                       int32_t eos_id, std::vector<int32_t>* prompt, std::vector<int32_t>* target);

}  // namespace moex::eval
