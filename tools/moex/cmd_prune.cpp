// moex prune --model DIR --out DIR --keep-experts K --calibration F.safetensors
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "args.h"
#include "command.h"
#include "core/json_reader.h"
#include "io/atomic_file.h"
#include "model/model_io.h"
#include "model_dir.h"
#include "train/prune.h"

namespace {

namespace fs = std::filesystem;

int run_prune(const std::vector<std::string>& argv) {
  const moex::cli::Args args(argv, {"model", "out", "keep-experts", "calibration"}, {"help"});
  if (args.flag("help")) {
    std::printf(
        "usage: moex prune --model DIR --out DIR --keep-experts K --calibration F.safetensors\n"
        "  Expert pruning: runs the calibration tokens (int32 input_ids [B, T], as moex eval\n"
        "  takes) through the model, keeps the K experts of every MoE layer that they routed to\n"
        "  most, and writes a moex model directory (its tokenizer copied along). Prints the\n"
        "  parameters before and after and the kept experts. DIR must be a moex model\n"
        "  directory (Hugging Face directories are not taken yet).\n");
    return 0;
  }
  const std::string dir = args.require("model"), out = args.require("out");
  const int64_t keep = args.get_int("keep-experts", 0);
  MOEX_CHECK(keep >= 1, "--keep-experts must be >= 1, got ", keep);
  const std::string config_path = dir + "/config.json";
  const moex::JsonReader config = moex::JsonReader::from_file(config_path);
  MOEX_CHECK(config.get_string("model_type") == "moex", config_path,
             ": prune takes a moex model directory (model_type \"moex\")");
  const std::string model_json = config.get_json_text("moex_model");
  MOEX_CHECK(fs::absolute(out) != fs::absolute(dir), "--out ", out,
             " is the model directory itself");

  auto model = moex::model::load_model(dir);
  const moex::Tensor ids = moex::cli::read_input_ids(args.require("calibration"));
  const int32_t* p = ids.data<int32_t>();
  const std::vector<int32_t> flat(p, p + ids.numel());
  const moex::train::ExpertLoads loads =
      moex::train::calibration_loads(*model, flat, ids.dim(0), ids.dim(1));
  const moex::train::PruneResult r =
      moex::train::prune_experts(*model, model_json, loads, static_cast<int>(keep));

  moex::io::AtomicDirectory target(out);
  moex::model::save_model(*r.model, r.model_json, target.temp_path());
  for (const char* tok : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"})
    if (fs::exists(fs::path(dir) / tok))
      fs::copy_file(fs::path(dir) / tok, fs::path(target.temp_path()) / tok);
  target.commit();

  nlohmann::json kept = nlohmann::json::object();
  for (const auto& [layer, experts] : r.kept) kept[std::to_string(layer)] = experts;
  std::printf("%s\n", nlohmann::json{{"params_before", r.params_before},
                                     {"params_after", r.params_after},
                                     {"kept", kept},
                                     {"out", out}}
                          .dump()
                          .c_str());
  return 0;
}

const moex::cli::Command kPrune("prune", "expert pruning by routing frequency", run_prune);

}  // namespace
