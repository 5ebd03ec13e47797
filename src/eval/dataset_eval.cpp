#include "eval/dataset_eval.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "data/indexed_dataset.h"
#include "eval/bleu.h"
#include "eval/chrf.h"
#include "infer/generator.h"
#include "ops/cross_entropy.h"

namespace moex::eval {
namespace {

std::vector<int32_t> document_ids(const data::IndexedDataset& ds, int64_t doc) {
  std::vector<int32_t> ids;
  const auto& docs = ds.document_indices();
  for (int64_t s = docs[doc]; s < docs[doc + 1]; ++s) {
    const std::vector<int32_t> part = ds.get(s);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

// Sum of the cross-entropy over `count` windows starting at `starts`, each predicting `len`
// tokens of `stream`, run as one batch [count, len]. With a loss mask (chat data, one value per
// stream token) only the tokens marked 1 count as targets.
double window_loss_sum(model::Model& model, const std::vector<int32_t>& stream,
                       const std::vector<int32_t>& mask, const std::vector<int64_t>& starts,
                       int64_t len, int64_t* num_targets) {
  const int64_t batch = static_cast<int64_t>(starts.size());
  std::vector<int32_t> ids(static_cast<size_t>(batch * len)), targets(ids.size());
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < len; ++t) {
      const int64_t next = starts[b] + t + 1;
      ids[b * len + t] = stream[next - 1];
      targets[b * len + t] = mask.empty() || mask[next] != 0 ? stream[next] : ops::kIgnoreIndex;
    }
  model::ForwardOptions opt;  // evaluation: nothing kept for backward
  const model::LossResult r = model.forward(ids.data(), targets.data(), batch, len, opt);
  *num_targets += r.num_targets;
  return r.loss * static_cast<double>(r.num_targets);
}

// The concatenated sequences of a dataset.
std::vector<int32_t> token_stream(const data::IndexedDataset& ds) {
  std::vector<int32_t> stream;
  for (int64_t s = 0; s < ds.num_sequences(); ++s) {
    const std::vector<int32_t> part = ds.get(s);
    stream.insert(stream.end(), part.begin(), part.end());
  }
  return stream;
}

// `mask_ds`: the split's loss mask (chat data): the perplexity of the answers only; null: of
// every token after the first.
void perplexity(model::Model& model, const data::IndexedDataset& ds,
                const data::IndexedDataset* mask_ds, const DatasetEvalOptions& o, int64_t seq_len,
                SourceEval* out) {
  const std::vector<int32_t> stream = token_stream(ds);
  const std::vector<int32_t> mask = mask_ds ? token_stream(*mask_ds) : std::vector<int32_t>();
  MOEX_CHECK(mask.empty() || mask.size() == stream.size(), mask_ds->prefix(),
             ": the loss mask's length is not its tokens'");
  // The stretches of the stream that windows cut: the whole stream, or with o.packing false each
  // document (sequence) alone, so that no window reads across two.
  std::vector<int64_t> bounds{0};
  if (o.packing) {
    bounds.push_back(static_cast<int64_t>(stream.size()));
  } else {
    for (int64_t i = 0; i < ds.num_sequences(); ++i)
      bounds.push_back(bounds.back() + ds.sequence_length(i));
  }
  double total = 0;
  // Full windows in batches; the last, shorter window of a stretch on its own (no padding: padded
  // tokens would compete for MoE capacity).
  std::vector<int64_t> starts;
  for (size_t k = 0; k + 1 < bounds.size(); ++k) {
    const int64_t end = bounds[k + 1];
    int64_t start = bounds[k];
    for (; start + seq_len < end; start += seq_len) {
      starts.push_back(start);
      if (static_cast<int64_t>(starts.size()) == o.batch) {
        total += window_loss_sum(model, stream, mask, starts, seq_len, &out->tokens);
        starts.clear();
      }
    }
    if (end - 1 - start > 0)
      total += window_loss_sum(model, stream, mask, {start}, end - 1 - start, &out->tokens);
  }
  if (!starts.empty()) total += window_loss_sum(model, stream, mask, starts, seq_len, &out->tokens);
  out->loss = out->tokens > 0 ? total / static_cast<double>(out->tokens) : 0.0;
  out->perplexity = std::exp(out->loss);
}

void translate(model::Model& model, const data::CorpusSource& source,
               const data::IndexedDataset& ds, const data::Tokenizer& tok, int32_t eos_id,
               const DatasetEvalOptions& o, SourceEval* out) {
  const size_t dash = source.language.find('-');
  MOEX_CHECK(dash != std::string::npos, "source ", source.name, ": language '", source.language,
             "' is not a pair like en-es");
  const std::string tag_a = data::language_tag(source.language.substr(0, dash));
  const std::string tag_b = data::language_tag(source.language.substr(dash + 1));
  const int32_t id_a = tok.token_to_id(tag_a), id_b = tok.token_to_id(tag_b);
  MOEX_CHECK(id_a >= 0 && id_b >= 0, "source ", source.name, ": the tokenizer has no ", tag_a,
             " or ", tag_b, " token");
  const int64_t max_len = model.config().max_seq_len;
  std::vector<std::string> hyps, refs;
  for (int64_t d = 0; d < ds.num_documents() &&
                      static_cast<int64_t>(out->translations.size()) < o.max_translations;
       ++d) {
    std::vector<int32_t> prompt, target;
    if (!split_translation(document_ids(ds, d), id_a, id_b, eos_id, &prompt, &target)) continue;
    const int64_t budget =
        std::min<int64_t>(o.max_new_tokens, max_len - static_cast<int64_t>(prompt.size()));
    if (budget < 1) continue;  // the prompt alone fills the context
    infer::GenerateOptions g;  // greedy
    g.max_new_tokens = budget;
    if (eos_id >= 0) g.stop_tokens = {eos_id};
    std::vector<int32_t> hyp = infer::generate(model, prompt, g);
    if (!hyp.empty() && hyp.back() == eos_id) hyp.pop_back();
    TranslationPair pair;
    pair.source_text = tok.decode(std::vector<int32_t>(prompt.begin() + 2, prompt.end() - 1));
    pair.hypothesis = tok.decode(hyp);
    pair.reference = tok.decode(target);
    hyps.push_back(pair.hypothesis);
    refs.push_back(pair.reference);
    out->translations.push_back(std::move(pair));
  }
  if (hyps.empty()) return;
  out->bleu = corpus_bleu(hyps, {refs}).score;
  out->chrf = corpus_chrf(hyps, {refs});
}

}  // namespace

bool split_translation(const std::vector<int32_t>& doc, int32_t tag_a, int32_t tag_b,
                       int32_t eos_id, std::vector<int32_t>* prompt, std::vector<int32_t>* target) {
  // [<task:translate>, <lang:X>, source..., <lang:Y>, target..., EOS]
  if (doc.size() < 3 || (doc[1] != tag_a && doc[1] != tag_b)) return false;
  size_t k = 2;
  while (k < doc.size() && doc[k] != tag_a && doc[k] != tag_b) ++k;
  if (k + 1 >= doc.size()) return false;
  prompt->assign(doc.begin(), doc.begin() + static_cast<int64_t>(k) + 1);
  size_t end = doc.size();
  if (eos_id >= 0 && doc[end - 1] == eos_id) --end;
  target->assign(doc.begin() + static_cast<int64_t>(k) + 1,
                 doc.begin() + static_cast<int64_t>(end));
  return !target->empty();
}

DatasetEval evaluate_dataset(model::Model& model, const data::CorpusManifest& corpus,
                             const data::Tokenizer* tokenizer, const DatasetEvalOptions& o) {
  MOEX_CHECK(o.split == "train" || o.split == "valid", "--split must be train or valid, got '",
             o.split, "'");
  MOEX_CHECK(o.batch >= 1, "--batch must be >= 1, got ", o.batch);
  MOEX_CHECK(corpus.vocab_size <= model.config().vocab_size, corpus.dir,
             "/corpus.json: vocab_size ", corpus.vocab_size, " is larger than the model's ",
             model.config().vocab_size);
  const int64_t seq_len = o.seq_len > 0 ? o.seq_len : model.config().max_seq_len;
  MOEX_CHECK(seq_len <= model.config().max_seq_len, "--seq-len ", seq_len,
             " exceeds the model's max_seq_len ", model.config().max_seq_len);
  DatasetEval result;
  double total = 0;
  for (const data::CorpusSource& source : corpus.sources) {
    const data::CorpusSplitStats& split = o.split == "train" ? source.train : source.valid;
    if (split.tokens < 2) continue;
    const data::IndexedDataset ds =
        data::IndexedDataset::open(corpus.dir + "/" + split.prefix, model.config().vocab_size);
    // Chat data: ids below 2 (a mask holds 0s and 1s).
    const std::unique_ptr<data::IndexedDataset> mask =
        split.mask_prefix.empty() ? nullptr
                                  : std::make_unique<data::IndexedDataset>(data::IndexedDataset::open(
                                        corpus.dir + "/" + split.mask_prefix, 2));
    SourceEval s;
    s.name = source.name;
    s.task = source.task;
    perplexity(model, ds, mask.get(), o, seq_len, &s);
    if (s.tokens == 0) continue;  // a split whose loss mask trains nothing: no perplexity
    if (source.task == "translate" && o.max_translations > 0) {
      MOEX_CHECK(tokenizer != nullptr, "evaluating translations needs the corpus tokenizer");
      translate(model, source, ds, *tokenizer, corpus.eos_id, o, &s);
    }
    total += s.loss * static_cast<double>(s.tokens);
    result.tokens += s.tokens;
    result.sources.push_back(std::move(s));
  }
  MOEX_CHECK(result.tokens > 0, corpus.dir, ": no source has tokens in the ", o.split, " split");
  result.loss = total / static_cast<double>(result.tokens);
  result.perplexity = std::exp(result.loss);
  return result;
}

}  // namespace moex::eval
