// The training loop (moex train): data from a prepared corpus mixed by language temperature,
// AdamW with warmup + cosine, clipping, gradient accumulation, periodic eval, progress lines,
// metrics as JSON lines, per-expert load, checkpoints (every N steps, at the end and on SIGINT)
// and exact resume.
#pragma once

#include <string>

#include "dist/communicator.h"
#include "train/train_config.h"

namespace moex::train {

struct TrainResult {
  int64_t steps_done = 0;
  double final_loss = 0;
  double final_eval_loss = -1;
  double tokens_per_second = 0;
  bool interrupted = false;
  std::string last_checkpoint;
};

// `resume_dir`: a checkpoint directory to continue from ("" starts fresh).
// `stop_after`: stop (and checkpoint) after this many steps of this run, 0 = run to the end.
// `group`: the ranks of this run (default: every rank mpirun started; Communicator::local()
// trains alone even under mpirun), divided as config.parallel says (docs/parallelism.md).
TrainResult run_training(const TrainConfig& config, const std::string& resume_dir,
                         int64_t stop_after = 0, dist::Communicator* group = nullptr);

}  // namespace moex::train
