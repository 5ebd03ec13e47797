// moex eval --model DIR --input-ids F.safetensors [--logits-out OUT.safetensors] [--device D]
// moex eval --model DIR --data CORPUS_DIR [--split valid|train] [--seq-len N] [--batch N]
//           [--max-translations N] [--max-new-tokens N] [--device D]
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "args.h"
#include "command.h"
#include "core/logging.h"
#include "data/corpus.h"
#include "eval/dataset_eval.h"
#include "io/safetensors.h"
#include "model/model_io.h"
#include "model_dir.h"

namespace {

// Where --logits-out writes, checked before minutes of evaluation: not the input's file (the
// logits would replace the ids), not a directory, in a directory that exists.
void check_logits_out(const std::string& out, const std::string& input_ids) {
  namespace fs = std::filesystem;
  std::error_code error;
  MOEX_CHECK(!fs::equivalent(out, input_ids, error), "--logits-out ", out,
             " is the --input-ids file: the logits would replace the ids; write them elsewhere");
  MOEX_CHECK(!fs::is_directory(out, error), "--logits-out ", out,
             " is a directory; give a file name such as ",
             (fs::path(out) / "logits.safetensors").string());
  const fs::path parent = fs::absolute(out, error).parent_path();
  MOEX_CHECK(fs::is_directory(parent, error), "--logits-out ", out, ": its directory ",
             parent.string(), " does not exist");
}

// Perplexity of every source of a corpus split, and BLEU/chrF of greedy translations.
int eval_dataset(const moex::cli::Args& args, moex::model::Model& model, bool print) {
  const moex::data::CorpusManifest corpus = moex::data::load_corpus_manifest(args.require("data"));
  moex::eval::DatasetEvalOptions o;
  o.split = args.get("split", "valid");
  o.seq_len = args.get_int("seq-len", 0);
  o.batch = args.get_int("batch", 8);
  o.max_translations = args.get_int("max-translations", 50);
  o.max_new_tokens = args.get_int("max-new-tokens", 128);
  o.packing = !args.flag("no-packing");
  MOEX_CHECK(o.max_translations >= 0, "--max-translations must be >= 0");
  MOEX_CHECK(o.max_new_tokens >= 1, "--max-new-tokens must be >= 1");
  const auto tokenizer = moex::data::open_tokenizer(corpus.tokenizer);
  const moex::eval::DatasetEval r = moex::eval::evaluate_dataset(model, corpus, tokenizer.get(), o);
  if (!print) return 0;
  nlohmann::json sources = nlohmann::json::array();
  for (const auto& s : r.sources) {
    nlohmann::json j = {{"name", s.name},
                        {"task", s.task},
                        {"tokens", s.tokens},
                        {"loss", s.loss},
                        {"perplexity", s.perplexity}};
    if (s.bleu >= 0) {
      j["translations"] = s.translations.size();
      j["bleu"] = s.bleu;
      j["chrf"] = s.chrf;
      j["examples"] = nlohmann::json::array();
      for (size_t i = 0; i < std::min<size_t>(3, s.translations.size()); ++i)
        j["examples"].push_back({{"source", s.translations[i].source_text},
                                 {"hypothesis", s.translations[i].hypothesis},
                                 {"reference", s.translations[i].reference}});
    }
    sources.push_back(j);
  }
  std::printf("%s\n", nlohmann::json{{"split", o.split},
                                     {"tokens", r.tokens},
                                     {"loss", r.loss},
                                     {"perplexity", r.perplexity},
                                     {"sources", sources}}
                          .dump()
                          .c_str());
  return 0;
}

int run_eval(const std::vector<std::string>& argv) {
  const moex::cli::Args args(argv,
                             {"model", "input-ids", "logits-out", "device", "data", "split",
                              "seq-len", "batch", "max-translations", "max-new-tokens", "tp"},
                             {"help", "no-packing"});
  if (args.flag("help")) {
    std::printf(
        "usage: moex eval --model DIR --input-ids F.safetensors [--logits-out OUT.safetensors]\n"
        "                 [--device cpu|cuda[:N]] [--tp N]\n"
        "       moex eval --model DIR --data CORPUS_DIR [--split valid|train] [--seq-len N]\n"
        "                 [--batch N] [--no-packing] [--max-translations N] [--max-new-tokens N]\n"
        "                 [--device D]\n"
        "  With --input-ids: F holds int32 input_ids [B, T]. Prints {\"loss\", \"aux_loss\"}: the\n"
        "  mean next-token cross-entropy over all B*(T-1) positions; writes logits [B, T, V] f32\n"
        "  if asked.\n"
        "  With --data (a corpus from moex data prepare): the loss and perplexity of every\n"
        "  source over the split (windows of --seq-len, default the model's max_seq_len, over\n"
        "  the documents put end to end, or with --no-packing over each document alone), and\n"
        "  for translation sources greedy translations of the first --max-translations (50)\n"
        "  documents scored with BLEU and chrF (sacrebleu's defaults, docs/eval.md). Prints "
        "JSON.\n"
        "  --tp N under mpirun -np N: the model split over the N ranks (tensor parallelism);\n"
        "  rank 0 prints and writes.\n");
    return 0;
  }
  // Checked before the model loads: a flag of the other evaluation is a mistake.
  if (!args.has("data")) {
    for (const char* data_only :
         {"split", "seq-len", "batch", "max-translations", "max-new-tokens", "no-packing"})
      MOEX_CHECK(!args.has(data_only), "--", data_only,
                 " belongs to --data (a corpus); --input-ids evaluates the given rows as they are");
  }
  const moex::cli::ServingLayout layout = moex::cli::serving_layout(
      args.get_int("tp", 1), moex::Device::parse(args.get("device", "cpu"), "--device"), false);
  auto model = moex::model::load_model(args.require("model"), layout.device, layout.tp);
  // Under tp every rank runs the same evaluation (the split layers' sums need all of them).
  if (args.has("data")) {
    MOEX_CHECK(!args.has("input-ids") && !args.has("logits-out"),
               "--data and --input-ids/--logits-out are two different evaluations: pass one");
    return eval_dataset(args, *model, layout.is_root());
  }
  MOEX_CHECK(args.has("input-ids"),
             "give --input-ids F.safetensors (token ids) or --data DIR "
             "(a prepared corpus)");
  const std::string path = args.get("input-ids");
  if (args.has("logits-out")) check_logits_out(args.get("logits-out"), path);
  const moex::Tensor ids = moex::cli::read_input_ids(path, model->config().vocab_size);
  const int64_t batch = ids.dim(0), seq_len = ids.dim(1), vocab = model->config().vocab_size;
  MOEX_CHECK(seq_len >= 2, path, ": input_ids needs at least 2 tokens per row");
  // Past max_seq_len: learned positions have no row for it; RoPE computes, untrained (as generate
  // and serve warn).
  const moex::ModelConfig& config = model->config();
  MOEX_CHECK(seq_len <= config.max_seq_len ||
                 config.positions != moex::PositionType::kLearned,
             path, ": rows of ", seq_len, " tokens exceed model.max_seq_len (",
             config.max_seq_len, "), and the model's learned positions have no more rows");
  if (seq_len > config.max_seq_len)
    MOEX_WARN(path, ": rows of ", seq_len, " tokens run past the model's max_seq_len (",
              config.max_seq_len, "): RoPE positions beyond the trained length");
  const int32_t* id = ids.data<int32_t>();
  std::vector<int32_t> targets(static_cast<size_t>(batch * seq_len), -100);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t + 1 < seq_len; ++t) targets[b * seq_len + t] = id[b * seq_len + t + 1];
  moex::model::ForwardOptions opt;
  const moex::model::LossResult r = model->forward(id, targets.data(), batch, seq_len, opt);
  if (args.has("logits-out")) {
    moex::Tensor logits =
        moex::Tensor::empty(moex::Shape{batch, seq_len, vocab}, moex::DType::kF32);
    model->logits(id, batch, seq_len, logits.data<float>());
    if (layout.is_root()) moex::io::save_safetensors(args.get("logits-out"), {{"logits", logits}});
  }
  if (!layout.is_root()) return 0;
  std::printf("{\"loss\": %.8f, \"aux_loss\": %.8f}\n", r.loss, r.aux_loss);
  return 0;
}

const moex::cli::Command kEval("eval", "loss, perplexity, logits; BLEU/chrF on a corpus", run_eval);

}  // namespace
