#include "train_report.h"

#include <cstdio>
#include <nlohmann/json.hpp>

namespace moex::cli {

int report_training(const train::TrainResult& result) {
  if (dist::Communicator::world().is_root()) {
    // null where the run measured nothing: no evaluation ran, or no logging window closed.
    nlohmann::ordered_json line = {
        {"steps", result.steps_done},
        {"loss", result.final_loss},
        {"eval_loss", result.final_eval_loss >= 0 ? nlohmann::ordered_json(result.final_eval_loss)
                                                  : nlohmann::ordered_json(nullptr)},
        {"tokens_per_second", result.tokens_per_second > 0
                                  ? nlohmann::ordered_json(result.tokens_per_second)
                                  : nlohmann::ordered_json(nullptr)},
        {"checkpoint", result.last_checkpoint}};
    std::printf("%s\n",
                line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  }
  return result.interrupted ? 130 : 0;
}

}  // namespace moex::cli
