#include "train/train_config.h"

#include <algorithm>
#include <cmath>

#include "model/tensor_parallel.h"
#include "train/init_from.h"

namespace moex::train {
namespace {

// The layout's options and the checks that need only the model; the world size is checked when
// training starts (dist::ParallelLayout::make).
dist::ParallelConfig parse_parallel(const JsonReader& par, const ModelConfig& model,
                                    bool activation_checkpointing) {
  dist::ParallelConfig p;
  p.tp = par.get_int("tp", 1);
  p.ep = par.get_int("ep", 1);
  p.zero_stage = par.get_int("zero_stage", 0);
  p.tile_elements = par.get_int("tile_elements", p.tile_elements);
  p.offload = par.get_bool("offload", false);
  p.dtd = par.get_bool("dtd", false);
  p.cac = par.get_bool("cac", false);
  p.expert_slicing = par.get_bool("expert_slicing", false);
  if (par.has("shard_master")) p.shard_master = par.get_bool("shard_master", false);
  p.overlap_comm = par.get_bool("overlap_comm", false);
  if (p.tp < 1) par.fail("tp", "must be >= 1");
  if (p.ep < 1) par.fail("ep", "must be >= 1");
  if (p.zero_stage < 0 || p.zero_stage > 2)
    par.fail("zero_stage", "must be 0, 1 or 2 (stage 3 is not built)");
  if (p.tile_elements < 1) par.fail("tile_elements", "must be >= 1");
  if (p.shard_master.value_or(false) && p.zero_stage == 0)
    par.fail("shard_master",
             "needs parallel.zero_stage 1 or 2 (it shards ZeRO's fp32 master, on the GPUs or "
             "with offload on the hosts)");
  // CAC changes what a checkpointed recompute exchanges: without either there is nothing to keep.
  if (p.cac && !activation_checkpointing)
    par.fail("cac", "needs training.activation_checkpointing");
  if (p.cac && p.ep < 2)
    par.fail("cac", "needs parallel.ep > 1 (without expert parallelism there is no all-to-all)");
  if (p.expert_slicing && p.tp < 2)
    par.fail("expert_slicing", "needs parallel.tp > 1 (it splits each expert over the tp ranks)");
  auto divides = [&](const char* field, int64_t n, int64_t size, const std::string& what) {
    if (size % n != 0)
      par.fail(field, "is " + std::to_string(n) + ", which does not divide " + what + " (" +
                          std::to_string(size) + ")");
  };
  // Tensor parallelism splits heads, the dense FFN's width and the vocabulary; MoE layers (their
  // residual and shared MLPs included) stay whole on every tp rank, or with expert_slicing each
  // expert's hidden width is split too.
  const model::TensorParallelMisfit misfit =
      model::tensor_parallel_misfit(model, p.tp, p.expert_slicing);
  if (!misfit.message.empty()) par.fail(misfit.option, misfit.message);
  for (size_t i = 0; i < model.layers.size(); ++i) {
    const LayerSpec& l = model.layers[i];
    if (l.moe)
      divides("ep", p.ep, l.moe_config.num_experts,
              "the number of experts of layer " + std::to_string(i));
  }
  return p;
}

}  // namespace

const std::vector<std::string>& OptimizerConfig::precision_names() {
  static const std::vector<std::string> names = {"fp32", "bf16"};
  return names;
}

DType OptimizerConfig::precision_of(const std::string& name) {
  MOEX_CHECK(name == "fp32" || name == "bf16", "dtype '", name, "' is not fp32 or bf16");
  return name == "bf16" ? DType::kBF16 : DType::kF32;
}

const char* OptimizerConfig::precision_name(DType dtype) {
  return dtype == DType::kBF16 ? "bf16" : "fp32";
}

TrainConfig TrainConfig::from_file(const std::string& path, const std::string& init_from) {
  const JsonReader root = JsonReader::from_file(path);
  MOEX_CHECK(!root.has("distill"), path,
             ": the 'distill' section makes this a distillation config: run it with moex distill "
             "--config ",
             path);
  TrainConfig c = from_reader(root, path, init_from);
  root.finish();
  return c;
}

TrainConfig TrainConfig::from_reader(const JsonReader& root, const std::string& path,
                                     const std::string& init_from) {
  TrainConfig c;
  c.source = path;
  // training.init_from (or --init-from): the directory's model. Its "model" section must be left
  // out, not merged: every model field either changes the math of the loaded weights or is a
  // routing option whose change would be silent (docs/config.md §training).
  const JsonReader tr = root.child("training");
  c.training.init_from = tr.get_string("init_from", "");
  const std::string init_from_what = init_from.empty() ? tr.where("init_from") : "--init-from";
  if (!init_from.empty()) c.training.init_from = init_from;
  if (c.training.init_from.empty()) {
    c.model = ModelConfig::from_json(root.child("model"));
    c.model_json = root.get_json_text("model", 2);
  } else {
    MOEX_CHECK(!root.has("model"), root.where("model"), ": leave it out with ",
               init_from.empty() ? "training.init_from" : "--init-from", "; the model is ",
               c.training.init_from, "'s");
    const InitFromModel from = read_init_from(c.training.init_from, init_from_what);
    c.model = from.config;
    c.model_json = from.model_json;
    c.training.init_from_moex = from.moex;
  }

  const JsonReader data = root.child("data");
  c.data.path = data.get_string("path");
  c.data.seq_len = data.get_int("seq_len", 128);
  data::MixtureTemperatures& t = c.data.temperatures;
  t.language = data.get_double("temperature", 1.0);
  if (t.language <= 0) data.fail("temperature", "must be > 0");
  t.task = data.get_double("task_temperature", 0.0);
  if (data.has("task_temperature") && t.task <= 0) data.fail("task_temperature", "must be > 0");
  const JsonReader by_task = data.child("language_temperatures");
  if (data.has("language_temperatures") && t.task == 0)
    data.fail("language_temperatures", "needs data.task_temperature (tasks sampled first)");
  for (const char* task : {"lm", "translate", "denoise"}) {
    if (!by_task.has(task)) continue;
    t.language_by_task[task] = by_task.get_double(task);
    if (t.language_by_task[task] <= 0) by_task.fail(task, "must be > 0");
  }
  c.data.tasks = data.get_choice("tasks", {"all", "lm", "translate", "denoise"}, "all");
  c.data.packing = data.get_bool("packing", true);
  if (c.data.seq_len < 2 || c.data.seq_len > c.model.max_seq_len)
    data.fail("seq_len",
              "must be in [2, model.max_seq_len = " + std::to_string(c.model.max_seq_len) + "]");

  const JsonReader opt = root.child("optimizer");
  c.optimizer.lr = opt.get_double("lr", 1e-3);
  c.optimizer.beta1 = opt.get_double("beta1", 0.9);
  c.optimizer.beta2 = opt.get_double("beta2", 0.95);
  c.optimizer.eps = opt.get_double("eps", 1e-8);
  c.optimizer.weight_decay = opt.get_double("weight_decay", 0.1);
  c.optimizer.grad_clip = opt.get_double("grad_clip", 1.0);
  c.optimizer.bias_update_rate = opt.get_double("bias_update_rate", 0.0);
  c.optimizer.moments_dtype = OptimizerConfig::precision_of(
      opt.get_choice("moments_dtype", OptimizerConfig::precision_names(), "fp32"));
  c.optimizer.grads_dtype = OptimizerConfig::precision_of(
      opt.get_choice("grads_dtype", OptimizerConfig::precision_names(), "fp32"));
  c.optimizer.master_dtype = OptimizerConfig::precision_of(
      opt.get_choice("master_dtype", OptimizerConfig::precision_names(), "fp32"));
  if (c.optimizer.lr <= 0) opt.fail("lr", "must be > 0");
  if (c.optimizer.beta1 < 0 || c.optimizer.beta1 >= 1) opt.fail("beta1", "must be in [0, 1)");
  if (c.optimizer.beta2 < 0 || c.optimizer.beta2 >= 1) opt.fail("beta2", "must be in [0, 1)");
  if (c.optimizer.grad_clip < 0) opt.fail("grad_clip", "must be >= 0");
  if (c.optimizer.eps <= 0) opt.fail("eps", "must be > 0");
  if (c.optimizer.weight_decay < 0) opt.fail("weight_decay", "must be >= 0");
  if (c.optimizer.bias_update_rate < 0) opt.fail("bias_update_rate", "must be >= 0");
  if (c.optimizer.bias_update_rate > 0) {
    bool any_bias = false;
    for (const LayerSpec& l : c.model.layers) any_bias |= l.moe && l.moe_config.selection_bias;
    if (!any_bias)
      opt.fail("bias_update_rate",
               "needs MoE layers with a selection bias (model.moe.selection_bias)");
  }

  const JsonReader sched = root.child("schedule");
  c.schedule.warmup_steps = sched.get_int("warmup_steps", 0);
  const std::vector<std::string> decays = {"cosine", "linear", "constant", "inverse_sqrt", "wsd"};
  const std::string decay = sched.get_choice("decay", decays, "cosine");
  c.schedule.decay = static_cast<LrDecay>(std::find(decays.begin(), decays.end(), decay) -
                                          decays.begin());  // LrDecay lists them in this order
  c.schedule.min_lr_ratio = sched.get_double("min_lr_ratio", 0.1);
  c.schedule.decay_fraction = sched.get_double("decay_fraction", 0.2);
  if (c.schedule.warmup_steps < 0) sched.fail("warmup_steps", "must be >= 0");
  if (c.schedule.min_lr_ratio < 0 || c.schedule.min_lr_ratio > 1)
    sched.fail("min_lr_ratio", "must be in [0, 1]");
  if (c.schedule.decay == LrDecay::kConstant && sched.has("min_lr_ratio"))
    sched.fail("min_lr_ratio", "has no use with \"decay\": \"constant\"");
  if (sched.has("decay_fraction") && c.schedule.decay != LrDecay::kWsd)
    sched.fail("decay_fraction", "is for \"decay\": \"wsd\" only");
  if (!(c.schedule.decay_fraction > 0 && c.schedule.decay_fraction <= 1))
    sched.fail("decay_fraction", "must be in (0, 1]");

  c.training.steps = tr.get_int("steps", 100);
  c.training.micro_batch_size = tr.get_int("micro_batch_size", 8);
  c.training.grad_accum = tr.get_int("grad_accum", 1);
  c.training.seed = static_cast<uint64_t>(tr.get_int("seed", 1));
  c.training.log_every = tr.get_int("log_every", 10);
  c.training.eval_every = tr.get_int("eval_every", 50);
  c.training.eval_batches = tr.get_int("eval_batches", 4);
  c.training.checkpoint_every = tr.get_int("checkpoint_every", 0);
  c.training.keep_checkpoints = tr.get_int("keep_checkpoints", 0);
  c.training.out_dir = tr.get_string("out_dir", "runs/default");
  c.training.overwrite_out_dir = tr.get_bool("overwrite_out_dir", false);
  c.training.activation_checkpointing = tr.get_bool("activation_checkpointing", false);
  c.training.device = Device::parse(tr.get_string("device", "cpu"), path + ": training.device");
  const int64_t num_threads = tr.get_int("num_threads", 0);
  if (num_threads < 0 || num_threads > 4096) tr.fail("num_threads", "must be in [0, 4096]");
  c.training.num_threads = static_cast<int>(num_threads);
  if (c.training.steps < 1) tr.fail("steps", "must be >= 1");
  if (c.training.micro_batch_size < 1) tr.fail("micro_batch_size", "must be >= 1");
  if (c.training.grad_accum < 1) tr.fail("grad_accum", "must be >= 1");
  if (c.training.log_every < 1) tr.fail("log_every", "must be >= 1");
  if (c.training.eval_every < 0) tr.fail("eval_every", "must be >= 0 (0: no evaluation)");
  if (c.training.eval_batches < 0) tr.fail("eval_batches", "must be >= 0");
  if (c.training.checkpoint_every < 0)
    tr.fail("checkpoint_every", "must be >= 0 (0: only the final checkpoint)");
  if (c.training.keep_checkpoints < 0)
    tr.fail("keep_checkpoints", "must be >= 0 (0: keep every step checkpoint)");
  if (c.training.keep_checkpoints > 0 && c.training.checkpoint_every == 0)
    tr.fail("keep_checkpoints", "needs training.checkpoint_every (without it only the final "
                                "checkpoint is written)");
  // Batch sizes multiply into buffer sizes (tokens per step, held-out windows): bounded so
  // that those products cannot overflow.
  constexpr int64_t kMaxBatch = int64_t{1} << 24;
  for (const char* key : {"micro_batch_size", "grad_accum", "eval_batches"})
    if (tr.get_int(key, 0) > kMaxBatch)
      tr.fail(key, "must be at most " + std::to_string(kMaxBatch));
  c.parallel = parse_parallel(root.child("parallel"), c.model, c.training.activation_checkpointing);
  return c;
}

double learning_rate(const OptimizerConfig& opt, const ScheduleConfig& schedule, int64_t step,
                     int64_t total_steps) {
  const int64_t warmup = schedule.warmup_steps;
  if (step < warmup) return opt.lr * static_cast<double>(step + 1) / warmup;
  const double min_lr = opt.lr * schedule.min_lr_ratio;
  switch (schedule.decay) {
    case LrDecay::kConstant:
      return opt.lr;
    case LrDecay::kInverseSqrt:  // counted as the warmup counts, so the last warmup step has lr
      return std::max(min_lr, opt.lr * std::sqrt(static_cast<double>(std::max<int64_t>(warmup, 1)) /
                                                 static_cast<double>(step + 1)));
    default:
      break;
  }
  // Steps are 0-based and the last trained one is total_steps - 1: counting step + 1 (as the
  // warmup does) puts that step at progress 1, i.e. at lr * min_lr_ratio.
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warmup);
  double progress = std::min(1.0, static_cast<double>(step + 1 - warmup) / decay_steps);
  if (schedule.decay == LrDecay::kWsd) {  // stable, then the last decay_fraction of the way
    const double stable = 1.0 - schedule.decay_fraction;
    progress = progress <= stable ? 0.0 : (progress - stable) / schedule.decay_fraction;
  }
  if (schedule.decay == LrDecay::kCosine)
    return min_lr + 0.5 * (opt.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
  return opt.lr - (opt.lr - min_lr) * progress;  // linear, and wsd's decay
}

}  // namespace moex::train
