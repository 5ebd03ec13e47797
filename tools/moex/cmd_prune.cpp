// moex prune --model DIR --out DIR [--keep-experts K --calibration F|PREFIX] [--keep-layers i,j]
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "args.h"
#include "command.h"
#include "io/atomic_file.h"
#include "model/model_io.h"
#include "model_dir.h"
#include "train/prune_io.h"

namespace {

namespace fs = std::filesystem;

// The calibration rows: a safetensors file's input_ids [B, T], or windows of a token dataset or
// of a corpus's train splits.
std::vector<int32_t> calibration_ids(const moex::cli::Args& args, int64_t max_seq_len,
                                     int64_t vocab_size, int64_t* batch, int64_t* seq_len) {
  const std::string source = args.require("calibration");
  const int64_t tokens = args.get_int("calibration-tokens", 16384);
  *seq_len = std::min<int64_t>(max_seq_len, 256);
  if (fs::exists(fs::path(source) / "corpus.json"))
    return moex::train::corpus_calibration_ids(source, tokens, *seq_len, batch);
  if (fs::exists(source + ".bin") || fs::exists(source + ".idx"))
    return moex::train::dataset_calibration_ids(source, tokens, *seq_len, batch);
  MOEX_CHECK(!args.has("calibration-tokens"),
             "--calibration-tokens applies to a dataset prefix or corpus directory; ", source,
             " is neither (no ", source, ".bin or ", source, "/corpus.json)");
  const moex::Tensor ids = moex::cli::read_input_ids(source, vocab_size);
  *batch = ids.dim(0);
  *seq_len = ids.dim(1);
  const int32_t* p = ids.data<int32_t>();
  return std::vector<int32_t>(p, p + ids.numel());
}

int run_prune(const std::vector<std::string>& argv) {
  const moex::cli::Args args(argv,
                             {"model", "out", "keep-experts", "keep-layers", "calibration",
                              "calibration-tokens", "rank-by", "format"},
                             {"help"});
  if (args.flag("help")) {
    std::printf(
        "usage: moex prune --model DIR --out DIR [--keep-experts K --calibration SRC\n"
        "                  [--rank-by frequency|gate-mass] [--calibration-tokens N]]\n"
        "                  [--keep-layers i,j,...] [--format moex|hf]\n"
        "  Expert pruning: runs calibration tokens through the model and keeps, in every MoE\n"
        "  layer, the K experts they routed to most (frequency: route count; gate-mass: summed\n"
        "  combine weights). SRC is a safetensors file with int32 input_ids [B, T] (as moex eval\n"
        "  takes), a dataset prefix (PREFIX.bin/.idx as moex data prepare writes, e.g.\n"
        "  data/default/bible.en.train) or a corpus directory (its train splits by size), of\n"
        "  which N tokens (default 16384) are used.\n"
        "  Layer dropping: --keep-layers keeps those blocks, in increasing order (embedding,\n"
        "  final norm and head stay). Either or both.\n"
        "  DIR is a moex or a Hugging Face model directory; OUT has the same format (--format,\n"
        "  if given, must name it) and the tokenizer files copied along. Prints the parameters\n"
        "  before and after (total and active per token), the kept layers and experts as JSON.\n");
    return 0;
  }
  const std::string dir = args.require("model"), out = args.require("out");
  moex::io::check_model_output_dir(out, "--out");
  moex::train::PruneSpec spec;
  const int64_t keep = args.get_int("keep-experts", 0);
  MOEX_CHECK(!args.has("keep-experts") || keep >= 1, "--keep-experts must be >= 1, got ", keep);
  spec.keep_experts = static_cast<int>(keep);
  if (args.has("keep-layers")) spec.keep_layers = args.get_int_list("keep-layers");
  spec.rank_by = moex::train::parse_rank_by(args.get("rank-by", "frequency"));
  MOEX_CHECK(spec.keep_experts == 0 || args.has("calibration"),
             "--keep-experts needs --calibration (a safetensors file or a dataset prefix)");
  std::error_code ec;
  MOEX_CHECK(!fs::equivalent(dir, out, ec), "--out ", out, " is the model directory itself");
  const moex::train::ModelFormat format = moex::train::model_dir_format(dir);
  const std::string format_name = moex::train::model_format_name(format);
  MOEX_CHECK(args.get("format", format_name) == format_name, "--format ", args.get("format"), ": ",
             dir, " is a ", format_name,
             " model directory and is written as one (convert with moex export)");

  auto model = moex::model::load_model(dir);
  moex::train::check_prune_spec(model->config(), spec);  // before the calibration's work
  moex::train::ExpertLoads scores;
  if (spec.keep_experts > 0) {
    int64_t batch = 0, seq_len = 0;
    const std::vector<int32_t> ids = calibration_ids(args, model->config().max_seq_len,
                                                     model->config().vocab_size, &batch, &seq_len);
    const int64_t vocab = model->config().vocab_size;
    for (const int32_t id : ids)  // another tokenizer's data, most likely
      MOEX_CHECK(id >= 0 && id < vocab, "--calibration ", args.get("calibration"), ": token id ",
                 id, " is outside the model's vocabulary of ", vocab);
    scores = moex::train::calibration_scores(*model, ids, batch, seq_len, spec.rank_by);
  }
  const moex::train::PruneResult r = moex::train::prune_model(*model, scores, spec);

  moex::io::AtomicDirectory target(out);
  moex::train::save_pruned_model(r, dir, target.temp_path());
  target.commit();

  nlohmann::json kept = nlohmann::json::object();
  for (const auto& [layer, experts] : r.kept) kept[std::to_string(layer)] = experts;
  std::printf("%s\n", nlohmann::json{{"params_before", r.before.total},
                                     {"params_after", r.after.total},
                                     {"active_params_before", r.before.active},
                                     {"active_params_after", r.after.active},
                                     {"kept_layers", r.layers},
                                     {"kept", kept},
                                     {"rank_by", moex::train::rank_by_name(spec.rank_by)},
                                     {"format", format_name},
                                     {"out", out}}
                          .dump()
                          .c_str());
  return 0;
}

const moex::cli::Command kPrune("prune", "expert pruning and layer dropping", run_prune);

}  // namespace
