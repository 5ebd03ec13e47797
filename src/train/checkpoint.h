// Training checkpoints: the model directory (config.json + model.safetensors, HF layout) plus
// optimizer.safetensors (exp_avg.<name>, exp_avg_sq.<name>), trainer_state.json (step, data
// position) and the tokenizer's files. Built under a temporary name and renamed, so a kill while
// saving leaves the previous checkpoint intact. Under expert parallelism every expert is saved
// under its global name (the checkpoint equals a single-process one) and loading takes this rank's
// rows, so a checkpoint moves between layouts (docs/parallelism.md).
#pragma once

#include <string>
#include <vector>

#include "model/model.h"
#include "train/optimizer.h"

namespace moex::train {

struct TrainerState {
  int64_t step = 0;        // optimizer steps done
  std::string data_state;  // MixtureDataset::state_json()
  double last_loss = 0;
};

// Under expert parallelism every rank of the model's expert group calls it (the experts are
// gathered), under ZeRO every rank of the run (the moments' shards are gathered); only the ranks
// with write = true write.
void save_checkpoint(const std::string& dir, const model::Model& model,
                     const std::string& model_json, AdamW& optimizer, const TrainerState& state,
                     const std::vector<std::string>& tokenizer_files, bool write = true);
// training.keep_checkpoints: removes the oldest `step-NNNNNN` checkpoints of `out_dir` so that the
// newest `keep` of those at or before `step` remain. Later ones (an earlier run's, past the step a
// run was resumed from), `latest`, `final` and anything else are left alone. Returns the removed
// directories, oldest first.
std::vector<std::string> remove_old_checkpoints(const std::string& out_dir, int64_t step,
                                                int64_t keep);
// Loads weights, optimizer moments and state from `dir` into an already built model/optimizer.
TrainerState load_checkpoint(const std::string& dir, model::Model& model, AdamW& optimizer);
// The fields of the "model" object in which `model_json` (a run's) differs from the one `dir`'s
// config.json was saved with, as "path: saved -> now" (e.g. "moe.top_k: 2 -> 1"); empty when they
// agree or `dir` has no moex config. A resume refuses tensors of other shapes; a change that
// keeps every shape (top_k, rope_theta, ...) loads, so the trainer warns with these.
std::vector<std::string> model_config_changes(const std::string& dir,
                                              const std::string& model_json);

}  // namespace moex::train
