// The summary line `moex train` and `moex distill` print when training ends.
#pragma once

#include "train/trainer.h"

namespace moex::cli {

// Rank 0 prints the run's JSON summary to stdout; every rank returns the exit code (130 after
// Ctrl-C, else 0).
int report_training(const train::TrainResult& result);

}  // namespace moex::cli
