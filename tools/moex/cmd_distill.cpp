// moex distill --teacher DIR --config F [--device cpu|cuda[:N]] [--resume DIR] [--stop-after N]
#include <cstdio>

#include "args.h"
#include "command.h"
#include "train/distill.h"
#include "train_report.h"

namespace {

int run_distill(const std::vector<std::string>& argv) {
  const moex::cli::Args args(argv, {"teacher", "config", "device", "resume", "stop-after"},
                             {"help", "overwrite"});
  if (args.flag("help")) {
    std::printf(
        "usage: moex distill --teacher DIR --config FILE [--device cpu|cuda[:N]]\n"
        "                    [--resume CHECKPOINT_DIR] [--stop-after STEPS] [--overwrite]\n"
        "  Knowledge distillation (Mixture-of-Students): trains the student the config's\n"
        "  \"model\" describes, as moex train does, with loss = LM loss + alpha * tau^2 *\n"
        "  KL(teacher || student) on logits softened at temperature tau. The config's \"distill\"\n"
        "  section sets alpha, temperature, stop_kd_at_step (staged KD) and\n"
        "  init_from_teacher_layers (docs/distill.md). DIR is the teacher's model directory; it\n"
        "  runs forward only, on the student's device. Metrics add lm_loss, kd_loss, kd_alpha.\n"
        "  A resumed run needs the same --teacher and --config. --overwrite as for moex train.\n");
    return 0;
  }
  moex::train::DistillRunConfig config =
      moex::train::DistillRunConfig::from_file(args.require("config"));
  if (args.has("device"))  // overrides training.device
    config.train.training.device = moex::Device::parse(args.get("device"), "--device");
  if (args.flag("overwrite")) config.train.training.overwrite_out_dir = true;
  const auto result = moex::train::run_distillation(
      config, args.require("teacher"), args.get("resume"), args.get_int("stop-after", 0));
  return moex::cli::report_training(result);
}

const moex::cli::Command kDistill("distill", "train a smaller student from a teacher (KD)",
                                  run_distill);

}  // namespace
