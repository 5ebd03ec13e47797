// The training loop (moex train): data from a prepared corpus mixed by language temperature,
// AdamW with warmup + cosine, clipping, gradient accumulation, periodic eval, progress lines,
// metrics as JSON lines, per-expert load, checkpoints (every N steps, at the end and on SIGINT)
// and exact resume.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "dist/communicator.h"
#include "model/model.h"
#include "train/train_config.h"

namespace moex::train {

struct TrainResult {
  int64_t steps_done = 0;
  double final_loss = 0;
  double final_eval_loss = -1;
  double tokens_per_second = 0;
  bool interrupted = false;
  std::string last_checkpoint;
  int64_t optimizer_state_bytes = 0;  // Adam moments held by this rank (a ZeRO shard under ZeRO)
  // Gradient storage of this rank: the model's buffer and, under ZeRO stage 2, the optimizer's
  // shard sums (the model then holds only its streamed buckets, docs/parallelism.md §ZeRO).
  int64_t gradient_bytes = 0;
  // This rank's expert-parallel token exchanges over the run, all MoE layers (docs/parallelism.md).
  moe::ExchangeStats exchange;
  int64_t teacher_parameters = 0;  // distillation: the teacher's parameters this rank held
};

// What a variant of training adds to the loop (train/distill.h: knowledge distillation), so that
// it reuses the trainer's data, schedule, metrics, checkpoints and resume instead of copying them.
class TrainHooks {
 public:
  virtual ~TrainHooks() = default;
  // Once the run's layout is made (before init_weights, fresh run or resume), with the student's
  // tensor-parallel group (inactive without tp), expert group (null without ep), that group's GPU
  // communicator (on GPU ranks under ep; else null) and device: a variant's own models can be
  // split and placed like the student.
  virtual void start(const model::TensorParallel& tp, dist::Communicator* expert_group,
                     dist::DeviceGroup* device_expert_group, Device device) {}
  // A fresh run only (a resume takes the checkpoint's weights), after init_weights.
  // Returns true when it replaced any weight (a sharded fp32 master then starts from the model's).
  virtual bool init_weights(model::Model& model) { return false; }
  // Before the forward of each micro-batch of optimizer step `step` (0-based); ids [batch,
  // seq_len] on the host. May set options.soft_targets (valid until the next call).
  virtual void before_forward(const int32_t* ids, int64_t batch, int64_t seq_len, int64_t step,
                              model::ForwardOptions& options) {}
  // Fields added to the metrics line of optimizer step `step` (0-based).
  virtual void add_metrics(int64_t step, nlohmann::json& line) {}
};

// `resume_dir`: a checkpoint directory to continue from ("" starts fresh).
// `stop_after`: stop (and checkpoint) after this many steps of this run, 0 = run to the end.
// `group`: the ranks of this run (default: every rank mpirun started; Communicator::local()
// trains alone even under mpirun), divided as config.parallel says (docs/parallelism.md).
// `hooks`: a training variant (null: plain LM training); with hooks the metrics carry "lm_loss"
// and "kd_loss" (see LossResult) and "loss" is the objective lm_loss + weighted kd.
// parallel.shard_master as given or, unset, on for GPU ranks under ZeRO with an fp32 master
// (optimizer.master_dtype): the fp32 master then lives sharded with the moments and the model
// holds bf16 weights (docs/parallelism.md §ZeRO). A bf16 master has no fp32 master to shard.
bool shards_master(const TrainConfig& config);

TrainResult run_training(const TrainConfig& config, const std::string& resume_dir,
                         int64_t stop_after = 0, dist::Communicator* group = nullptr,
                         TrainHooks* hooks = nullptr);

}  // namespace moex::train
