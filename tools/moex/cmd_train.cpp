// moex train --config F [--device cpu|cuda[:N]] [--init-from DIR] [--resume DIR]
//            [--stop-after N] [--overwrite]
#include <cstdio>

#include "args.h"
#include "command.h"
#include "core/error.h"
#include "train/trainer.h"
#include "train_report.h"

namespace {

int run_train(const std::vector<std::string>& argv) {
  const moex::cli::Args args(argv, {"config", "device", "init-from", "resume", "stop-after"},
                             {"help", "overwrite"});
  if (args.flag("help")) {
    std::printf(
        "usage: moex train --config FILE [--device cpu|cuda[:N]] [--init-from MODEL_DIR]\n"
        "                  [--resume CHECKPOINT_DIR] [--stop-after STEPS] [--overwrite]\n"
        "  Trains the model the config describes on a prepared corpus (moex data prepare).\n"
        "  Progress goes to stderr; metrics.jsonl, loss.svg and checkpoints go to "
        "training.out_dir.\n"
        "  --device overrides training.device (cpu by default; cuda trains in bf16 on a GPU).\n"
        "  --init-from (training.init_from) fine-tunes a model directory: a moex checkpoint or\n"
        "  final/, or a Hugging Face Mixtral/Qwen2-MoE/Qwen3-MoE/OLMoE one. The config then has\n"
        "  no \"model\" section: the model and its weights are the directory's.\n"
        "  Ctrl-C (or SIGTERM, what mpirun passes its ranks) stops after the current step and\n"
        "  writes a checkpoint to out_dir/latest; --resume out_dir/latest goes on from there.\n"
        "  Pressing it again changes nothing until that checkpoint is written (kill -9 does).\n"
        "  --stop-after N stops after N steps of this run (not at step N), with a checkpoint.\n"
        "  --overwrite (training.overwrite_out_dir) deletes an earlier run's metrics and\n"
        "  checkpoints in out_dir; without it a run that does not resume refuses them.\n");
    return 0;
  }
  const int64_t stop_after = args.get_int("stop-after", 0);
  MOEX_CHECK(!args.has("stop-after") || stop_after >= 1, "--stop-after must be >= 1 (got ",
             stop_after, ")");
  moex::train::TrainConfig config =
      moex::train::TrainConfig::from_file(args.require("config"), args.get("init-from"));
  if (args.has("device"))  // overrides training.device
    config.training.device = moex::Device::parse(args.get("device"), "--device");
  if (args.flag("overwrite")) config.training.overwrite_out_dir = true;
  const auto result = moex::train::run_training(config, args.get("resume"), stop_after);
  return moex::cli::report_training(result);
}

const moex::cli::Command kTrain("train", "train a model from a JSON config", run_train);

}  // namespace
