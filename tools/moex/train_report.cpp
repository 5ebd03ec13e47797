#include "train_report.h"

#include <cstdio>

namespace moex::cli {

int report_training(const train::TrainResult& result) {
  if (dist::Communicator::world().is_root())
    std::printf(
        "{\"steps\": %lld, \"loss\": %.6f, \"eval_loss\": %.6f, \"tokens_per_second\": %.1f, "
        "\"checkpoint\": \"%s\"}\n",
        static_cast<long long>(result.steps_done), result.final_loss, result.final_eval_loss,
        result.tokens_per_second, result.last_checkpoint.c_str());
  return result.interrupted ? 130 : 0;
}

}  // namespace moex::cli
