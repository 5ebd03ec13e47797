// The loss curve of a run as a self-contained SVG (train loss, and eval loss where logged).
#pragma once

#include <string>

namespace moex::train {

// Reads metrics.jsonl lines {"step", "loss", "eval_loss"?} and writes an SVG plot atomically,
// plus the same plot as an HTML page beside it (loss.svg -> loss.html).
void write_loss_plot(const std::string& metrics_path, const std::string& svg_path);

}  // namespace moex::train
