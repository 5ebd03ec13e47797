// A moex training config: one JSON file with "model", "data", "optimizer", "schedule" and
// "training" sections (DeepSpeed style), and an optional "parallel" one. Unknown fields are errors
// naming the file and field.
#pragma once

#include <string>
#include <vector>

#include "core/json_reader.h"
#include "core/tensor.h"
#include "data/mixture.h"
#include "dist/parallel_layout.h"
#include "model/model_config.h"

namespace moex::train {

struct DataConfig {
  std::string path;  // corpus directory (moex data prepare), with corpus.json
  int64_t seq_len = 128;
  // Sampling temperatures (Kim et al., mBART): languages, and tasks when set (data/mixture.h).
  data::MixtureTemperatures temperatures;
  std::string tasks = "all";  // "all", "lm", "translate" or "denoise"
  // true: windows over the concatenated documents; false: one document a sample, padded
  // (data::Packing, docs/config.md).
  bool packing = true;
};

struct OptimizerConfig {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // matrices only; norms and biases are not decayed
  double grad_clip = 1.0;     // global L2 norm; 0 turns clipping off
  // How exp_avg and exp_avg_sq are stored: kF32, or kBF16 (half the state's bytes and traffic;
  // stored with stochastic rounding, docs/architecture.md §Numerics). Checkpoints hold fp32 either
  // way.
  DType moments_dtype = DType::kF32;
  // How a GPU model stores its gradients: kF32, or kBF16 (half the bytes; each write rounds, so
  // micro-batches add in bf16; any GPU layout; docs/gpu-model.md §bf16 gradients).
  DType grads_dtype = DType::kF32;
  // How a GPU model stores the weights the optimizer updates: kF32 (fp32 master weights beside the
  // bf16 copy the kernels read), or kBF16 (the bf16 weights are the master: 4 fewer bytes a
  // parameter; updates stored with stochastic rounding; any GPU layout, ZeRO's without a
  // sharded master; docs/gpu-model.md §bf16 master weights).
  DType master_dtype = DType::kF32;
  // moments_dtype's, grads_dtype's and master_dtype's names in configs and on the command line, in
  // DType order: "fp32", "bf16".
  static const std::vector<std::string>& precision_names();
  static DType precision_of(const std::string& name);  // one of precision_names()
  static const char* precision_name(DType dtype);
  // Auxiliary-loss-free balancing (train/load_balance.h): the selection bias's step per optimizer
  // step; 0 = off. Needs model.moe.selection_bias.
  double bias_update_rate = 0.0;
};

// How the learning rate falls after the warmup (Megatron's --lr-decay-style names): to
// lr * min_lr_ratio at the last step along a cosine or a line; none; lr * sqrt(warmup / (step + 1))
// (never below the minimum); or warmup-stable-decay, the full lr until the last decay_fraction of
// the steps after the warmup, then a line to the minimum.
enum class LrDecay { kCosine, kLinear, kConstant, kInverseSqrt, kWsd };

struct ScheduleConfig {
  int64_t warmup_steps = 0;
  LrDecay decay = LrDecay::kCosine;
  double min_lr_ratio = 0.1;    // the lr at the last step (and after it), times lr
  double decay_fraction = 0.2;  // wsd: the share of the post-warmup steps that decay
};

struct TrainingConfig {
  int64_t steps = 100;
  int64_t micro_batch_size = 8;
  int64_t grad_accum = 1;
  uint64_t seed = 1;
  int64_t log_every = 10;
  int64_t eval_every = 50;
  int64_t eval_batches = 4;
  int64_t checkpoint_every = 0;  // 0: only the final checkpoint
  int64_t keep_checkpoints = 0;  // > 0: only the newest this many step-N checkpoints stay
  std::string out_dir = "runs/default";
  // A fresh run into an out_dir that holds an earlier run's metrics or checkpoints is an error
  // unless this is set (`moex train --overwrite`): then that run's files are deleted first.
  bool overwrite_out_dir = false;
  bool activation_checkpointing = false;
  int num_threads = 0;  // 0: all cores
  Device device;        // "cpu" (default), "cuda" or "cuda:N"
  // A model directory (moex's or Hugging Face's) the run starts from: its model and weights
  // (train/init_from.h). "" draws random weights for the config's "model".
  std::string init_from;
  bool init_from_moex = false;  // init_from is a moex directory (else a Hugging Face one)
};

struct TrainConfig {
  std::string source;      // the file it came from
  // The "model" object as written (with training.init_from: the directory's, as moex JSON),
  // saved with every checkpoint.
  std::string model_json;
  ModelConfig model;
  DataConfig data;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  TrainingConfig training;
  dist::ParallelConfig parallel;  // "parallel": tp, ep, zero_stage, ... (docs/parallelism.md)

  // init_from: a model directory overriding training.init_from (moex train --init-from).
  static TrainConfig from_file(const std::string& path, const std::string& init_from = "");
  // The sections above from an open config, leaving root.finish() to the caller (a tool whose
  // config has a further section, e.g. "distill", reads that too before finishing).
  static TrainConfig from_reader(const JsonReader& root, const std::string& path,
                                 const std::string& init_from = "");
};

// Learning rate at `step` (0-based): linear warmup, then the schedule's decay.
double learning_rate(const OptimizerConfig& opt, const ScheduleConfig& schedule, int64_t step,
                     int64_t total_steps);

}  // namespace moex::train
