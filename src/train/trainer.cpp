#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <vector>

#include "core/file_util.h"
#include "core/logging.h"
#include "core/stop_signals.h"
#include "data/corpus.h"
#include "data/mixture.h"
#include "dist/communicator.h"
#include "dist/nccl_communicator.h"
#include "dist/parallel_layout.h"
#include "dist/rank_agreement.h"
#include "io/atomic_file.h"
#include "model/model.h"
#include "ops/collective.h"
#include "ops/cross_entropy.h"
#include "ops/device.h"
#include "train/checkpoint.h"
#include "train/gradient_all_reduce.h"
#include "train/init_from.h"
#include "train/load_balance.h"
#include "train/loss_plot.h"

namespace moex::train {
namespace {

std::atomic<int> g_interrupted{0};   // set by the signal thread (core/stop_signals.h)
std::atomic<int> g_say_stopping{0};  // this rank tells the user (rank 0)
// SIGINT (Ctrl-C) and SIGTERM (what mpirun passes its ranks on Ctrl-C, and what schedulers send
// before preempting a job): finish the step, checkpoint, stop. Until that checkpoint is written,
// another one changes nothing (a second Ctrl-C would otherwise cut the checkpoint short); the
// user hears of both at once.
void on_stop_signal(int) {
  static const char kFirst[] =
      "\nmoex train: stopping after this step, then writing a checkpoint\n";
  static const char kAgain[] =
      "\nmoex train: still stopping: the step ends and the checkpoint is written first (kill -9 "
      "abandons it)\n";
  const bool again = g_interrupted != 0;
  g_interrupted = 1;
  if (g_say_stopping) {
    const char* text = again ? kAgain : kFirst;
    const size_t len = again ? sizeof(kAgain) - 1 : sizeof(kFirst) - 1;
    [[maybe_unused]] const ssize_t written = ::write(STDERR_FILENO, text, len);
  }
}

// A run's out_dir is not a checkpoint; its checkpoints are directories inside it. Said before
// anything is read, naming one of them.
void check_resume_dir(const std::string& resume_dir) {
  if (resume_dir.empty()) return;
  const std::filesystem::path dir(resume_dir);
  if (std::filesystem::exists(dir / "trainer_state.json")) return;
  for (const char* inside : {"latest", "final"})
    MOEX_CHECK(!std::filesystem::exists(dir / inside / "trainer_state.json"), "--resume ",
               resume_dir, ": this is a run's out_dir, not a checkpoint; resume from one of its ",
               "checkpoints, e.g. ", (dir / inside).string());
}

// A resumed run continues metrics.jsonl from the checkpoint's step: lines of later steps (written
// after that checkpoint by the run that stopped) and a line cut short by a hard kill are dropped,
// so every step appears once.
void cut_metrics_after(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
        j["step"].get<int64_t>() <= step)
      kept += line + "\n";
  }
  in.close();
  io::write_file_atomic(path, kept);
}

using Clock = std::chrono::steady_clock;

bool wanted(const data::CorpusSource& s, const std::string& tasks) {
  return tasks == "all" || s.task == tasks;
}

// A run that does not resume starts from an out_dir without another run's files: their metrics
// would be truncated and their checkpoints replaced one by one, leaving a mix of both runs.
// Returns those files where overwrite_out_dir allows deleting them; an error otherwise.
std::vector<std::filesystem::path> earlier_run_files(const TrainConfig& c) {
  namespace fs = std::filesystem;
  std::vector<fs::path> earlier;
  std::error_code error;
  auto is_checkpoint_name = [](const std::string& name) {
    const bool step = name.size() > 5 && name.rfind("step-", 0) == 0 &&
                      name.find_first_not_of("0123456789", 5) == std::string::npos;
    return name == "final" || name == "latest" || step;
  };
  for (const fs::directory_entry& e : fs::directory_iterator(c.training.out_dir, error)) {
    const std::string name = e.path().filename().string();
    const bool checkpoint =
        is_checkpoint_name(name) && fs::is_regular_file(e.path() / "trainer_state.json", error);
    // What a save cut short (a kill) leaves: a checkpoint's temporary or replaced copy.
    const size_t cut = name.size() > 4 ? name.size() - 4 : 0;
    const std::string suffix = name.substr(cut);
    const bool unfinished = (suffix == ".tmp" || suffix == ".old") &&
                            is_checkpoint_name(name.substr(0, cut)) &&
                            fs::is_directory(e.path(), error);
    if (checkpoint || unfinished || name == "metrics.jsonl" || name == "loss.svg" ||
        name == "loss.html")
      earlier.push_back(e.path());
  }
  if (earlier.empty()) return earlier;
  std::sort(earlier.begin(), earlier.end());
  MOEX_CHECK(c.training.overwrite_out_dir, c.source, ": training.out_dir '", c.training.out_dir,
             "' holds an earlier run (", earlier.front().filename().string(),
             earlier.size() > 1 ? ", ..." : "",
             "): resume it with --resume <checkpoint>, choose another out_dir, or delete it and "
             "start over with --overwrite (training.overwrite_out_dir)");
  return earlier;
}

void delete_earlier_run(const TrainConfig& c, const std::vector<std::filesystem::path>& files) {
  for (const std::filesystem::path& p : files) {
    std::error_code error;
    std::filesystem::remove_all(p, error);
    MOEX_CHECK(!error, p.string(), ": cannot delete the earlier run's file: ", error.message());
  }
  if (!files.empty())
    MOEX_INFO("deleted an earlier run's ", files.size(), " files and checkpoints in ",
              c.training.out_dir, " (overwrite_out_dir)");
}

// A split's loss mask (chat data), or null when every token trains: values 0 or 1 (checked as
// ids below 2 as they are read).
std::shared_ptr<const data::IndexedDataset> open_loss_mask(const data::CorpusManifest& corpus,
                                                           const data::CorpusSplitStats& split) {
  if (split.mask_prefix.empty()) return nullptr;
  return std::make_shared<data::IndexedDataset>(
      data::IndexedDataset::open(corpus.dir + "/" + split.mask_prefix, 2));
}

data::Packing packing_of(const TrainConfig& c) {
  return c.data.packing ? data::Packing::kPacked : data::Packing::kOneDocument;
}

// A split holds a sample with more tokens than this: packed windows need seq_len + 1, one
// document 2.
int64_t fewest_split_tokens(const TrainConfig& c) {
  return c.data.packing ? c.data.seq_len : 1;
}

bool split_is_usable(const data::CorpusSplitStats& split, const TrainConfig& c) {
  return split.tokens > fewest_split_tokens(c);
}

// Whether training samples carry a loss mask: any wanted source's split of the corpus has one
// (chat data), or samples are padded documents.
bool has_loss_mask(const data::CorpusManifest& corpus, const TrainConfig& c) {
  if (!c.data.packing) return true;
  for (const auto& s : corpus.sources)
    if (wanted(s, c.data.tasks) && !s.train.mask_prefix.empty()) return true;
  return false;
}

// Training sequences: every wanted source's train split, mixed by task and language temperature.
std::unique_ptr<data::MixtureDataset> open_train_data(const data::CorpusManifest& corpus,
                                                      const TrainConfig& c) {
  std::vector<data::MixtureDataset::Input> inputs;
  for (const auto& s : corpus.sources) {
    if (!wanted(s, c.data.tasks) || !split_is_usable(s.train, c)) continue;
    data::MixtureDataset::Input in;
    in.source = {s.name, s.language, s.train.tokens, s.task};
    in.dataset = std::make_shared<data::IndexedDataset>(
        data::IndexedDataset::open(corpus.dir + "/" + s.train.prefix, c.model.vocab_size));
    in.mask = open_loss_mask(corpus, s.train);
    inputs.push_back(std::move(in));
  }
  MOEX_CHECK(!inputs.empty(), c.source, ": data.path '", c.data.path,
             "' has no training source with more than ", fewest_split_tokens(c),
             " tokens for tasks '", c.data.tasks, "'");
  return std::make_unique<data::MixtureDataset>(
      std::move(inputs), c.data.seq_len, c.data.temperatures, c.training.seed, packing_of(c));
}

// What one document a sample costs and cuts, per source (data.packing false).
void report_padding(const data::MixtureDataset& dataset, const TrainConfig& c) {
  for (size_t i = 0; i < dataset.mixer().sources().size(); ++i) {
    const data::GPTSampler& s = dataset.sampler(i);
    MOEX_INFO("data.packing false: source ", dataset.mixer().sources()[i].name, ": ",
              s.samples_per_epoch(), " documents, ", std::lround(100 * s.padding_fraction()),
              "% of the sample tokens are padding");
    if (s.cut_documents() > 0)
      MOEX_WARN("source ", dataset.mixer().sources()[i].name, ": ", s.cut_documents(), " of ",
                s.samples_per_epoch(), " documents are longer than data.seq_len + 1 = ",
                c.data.seq_len + 1, " tokens and are cut there");
  }
}

// Held-out sequences: the first eval_batches * micro_batch_size windows, spread over the sources,
// each as seq_len + 1 tokens followed by their seq_len + 1 loss-mask values.
std::vector<std::vector<int32_t>> eval_sequences(const data::CorpusManifest& corpus,
                                                 const TrainConfig& c) {
  std::vector<std::vector<int32_t>> out;
  std::vector<data::GPTSampler> samplers;
  for (const auto& s : corpus.sources) {
    if (!wanted(s, c.data.tasks) || !split_is_usable(s.valid, c)) continue;
    auto ds = std::make_shared<data::IndexedDataset>(
        data::IndexedDataset::open(corpus.dir + "/" + s.valid.prefix, c.model.vocab_size));
    samplers.emplace_back(ds, c.data.seq_len, 0, open_loss_mask(corpus, s.valid), packing_of(c));
  }
  const int64_t want = c.training.eval_batches * c.training.micro_batch_size;
  for (int64_t i = 0; !samplers.empty() && static_cast<int64_t>(out.size()) < want; ++i) {
    data::GPTSampler& sampler = samplers[static_cast<size_t>(i) % samplers.size()];
    const int64_t index = i / static_cast<int64_t>(samplers.size());
    if (index >= sampler.samples_per_epoch()) break;
    std::vector<int32_t> seq(static_cast<size_t>(2 * (c.data.seq_len + 1)));
    sampler.sample(0, index, seq.data(), seq.data() + c.data.seq_len + 1);
    out.push_back(std::move(seq));
  }
  return out;
}

// Splits [B][seq_len + 1] windows into ids and next-token targets, both [B, seq_len]. With a loss
// mask ([B][seq_len + 1], the windows' tokens' values) a target whose token is marked 0 is
// ignored: the model reads that token but is not trained to predict it.
void split_batch(const int32_t* windows, int64_t batch, int64_t seq_len,
                 std::vector<int32_t>* ids, std::vector<int32_t>* targets,
                 const int32_t* mask = nullptr) {
  ids->resize(static_cast<size_t>(batch * seq_len));
  targets->resize(static_cast<size_t>(batch * seq_len));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq_len; ++t) {
      const int64_t next = b * (seq_len + 1) + t + 1;
      (*ids)[b * seq_len + t] = windows[next - 1];
      (*targets)[b * seq_len + t] =
          mask == nullptr || mask[next] != 0 ? windows[next] : ops::kIgnoreIndex;
    }
}

double evaluate(model::Model& model, const std::vector<std::vector<int32_t>>& sequences,
                const TrainConfig& c) {
  if (sequences.empty()) return -1;
  const int64_t seq_len = c.data.seq_len, mb = c.training.micro_batch_size;
  double total = 0;
  int64_t count = 0;
  for (size_t start = 0; start < sequences.size(); start += static_cast<size_t>(mb)) {
    const int64_t batch = std::min<int64_t>(mb, static_cast<int64_t>(sequences.size() - start));
    std::vector<int32_t> windows, mask, ids, targets;
    for (int64_t b = 0; b < batch; ++b) {
      const std::vector<int32_t>& s = sequences[start + b];  // tokens, then their mask
      windows.insert(windows.end(), s.begin(), s.begin() + seq_len + 1);
      mask.insert(mask.end(), s.begin() + seq_len + 1, s.end());
    }
    split_batch(windows.data(), batch, seq_len, &ids, &targets, mask.data());
    model::ForwardOptions opt;  // evaluation: nothing kept for backward
    const model::LossResult r = model.forward(ids.data(), targets.data(), batch, seq_len, opt);
    total += r.loss * r.num_targets;
    count += r.num_targets;
  }
  return total / std::max<int64_t>(1, count);
}

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

// What every rank must agree on: the config file as written (the model object when the config
// did not come from a file), and the flags that change the run.
nlohmann::json run_settings(const TrainConfig& c, const std::string& resume_dir,
                            int64_t stop_after) {
  nlohmann::json s;
  s["config"] = c.model_json;
  if (std::filesystem::is_regular_file(c.source)) {
    const nlohmann::json file = nlohmann::json::parse(read_file(c.source), nullptr, false);
    if (!file.is_discarded()) s["config"] = file;
  }
  s["device"] = c.training.device.str();  // --device overrides the config's
  s["overwrite"] = c.training.overwrite_out_dir;
  s["resume"] = resume_dir;
  s["stop_after"] = stop_after;
  return s;
}

}  // namespace

bool shards_master(const TrainConfig& c) {
  // By default on GPU ranks under ZeRO, unless the master is bf16: then there is no fp32 master.
  return c.parallel.shard_master.value_or(c.training.device.is_cuda() &&
                                          c.parallel.zero_stage > 0 &&
                                          c.optimizer.master_dtype == DType::kF32);
}

TrainResult run_training(const TrainConfig& c, const std::string& resume_dir, int64_t stop_after,
                         dist::Communicator* group, TrainHooks* hooks) {
  if (c.training.num_threads > 0) omp_set_num_threads(c.training.num_threads);
  // The layout first: a layout that cannot run is refused before any data is read.
  dist::Communicator& comm = group ? *group : dist::Communicator::world();
  dist::check_same_on_all_ranks(comm, run_settings(c, resume_dir, stop_after), c.source);
  const dist::ParallelLayout layout =
      dist::ParallelLayout::make(comm.size(), comm.rank(), c.parallel, c.source);
  MOEX_CHECK(!c.parallel.offload || c.training.device.is_cuda(), c.source,
             ": parallel.offload: ZeRO-Offload moves GPU state to the host; it needs "
             "training.device \"cuda\"");
  MOEX_CHECK(!c.parallel.shard_master.value_or(false) || c.training.device.is_cuda(), c.source,
             ": parallel.shard_master: a CPU model's fp32 weights are what it computes with; "
             "sharding a master needs training.device \"cuda\"");
  // bf16 gradients and master weights run on GPUs in any layout of data, expert and tensor
  // parallelism and under ZeRO, offloaded too (the host steps the bf16 weights tile by tile): the
  // ranks' bf16 gradients are summed over their groups in bf16 (the experts' over edp, the rest
  // over dp, tensor-parallel partial sums over tp; ZeRO stage 2 widens each streamed bucket into
  // its fp32 shard sums), and the replicas of a tensor step the same sums; the stochastic
  // rounding's bits come from those, so the replicas stay equal (docs/gpu-model.md §bf16 master
  // weights, docs/parallelism.md §bf16 state over ranks).
  for (const auto& [field, dtype] : {std::pair{"grads_dtype", c.optimizer.grads_dtype},
                                     std::pair{"master_dtype", c.optimizer.master_dtype}})
    MOEX_CHECK(dtype == DType::kF32 || c.training.device.is_cuda(), c.source, ": optimizer.",
               field, " \"bf16\" needs training.device \"cuda\" (a CPU model computes with its "
               "fp32 weights and gradients)");
  MOEX_CHECK(c.optimizer.master_dtype == DType::kF32 || !c.parallel.shard_master.value_or(false),
             c.source,
             ": optimizer.master_dtype \"bf16\" with parallel.shard_master: a sharded master is "
             "fp32 beside the bf16 weights; with a bf16 master there is none to shard");
  // One CPU process holds the whole model's weights, gradients and Adam moments: a model that
  // cannot fit the machine's memory is refused before minutes of allocating and drawing.
  if (comm.size() == 1 && !c.training.device.is_cuda()) {
    const double params = static_cast<double>(c.model.num_parameters());
    const double need =
        params * (8.0 + 2.0 * static_cast<double>(dtype_size(c.optimizer.moments_dtype)));
    const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) *
                          static_cast<double>(::sysconf(_SC_PAGESIZE));
    constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
    const bool known = ::sysconf(_SC_PHYS_PAGES) > 0 && ::sysconf(_SC_PAGESIZE) > 0;
    MOEX_CHECK(!known || need <= memory, c.source, ": the model has ", c.model.num_parameters(),
               " parameters; training it on the CPU needs at least ", need / kGiB,
               " GiB (weights, gradients and Adam moments), more than this machine's ",
               memory / kGiB, " GiB of memory");
    // And a micro-batch's activations, a lower bound: backward needs every block's fp32 input and,
    // without activation checkpointing, also its attention norm's output, the attention output
    // and the residual sum after it (each tokens x hidden_size x 4 bytes).
    const double per_block = c.training.activation_checkpointing ? 1.0 : 4.0;
    const double kept = static_cast<double>(c.training.micro_batch_size) *
                        static_cast<double>(c.data.seq_len) *
                        static_cast<double>(c.model.hidden_size) *
                        static_cast<double>(c.model.num_layers) * per_block * 4.0;
    MOEX_CHECK(!known || need + kept <= memory, c.source, ": training.micro_batch_size ",
               c.training.micro_batch_size, " x data.seq_len ", c.data.seq_len,
               " tokens need at least ", kept / kGiB, " GiB of activations (", per_block,
               " kept tensors a block, ", c.model.num_layers, " blocks of ",
               c.model.hidden_size, ") beside ", need / kGiB,
               " GiB of weights, gradients and Adam moments: more than this machine's ",
               memory / kGiB, " GiB of memory");
  }
  check_resume_dir(resume_dir);
  // Refused before anything is read; deleted (--overwrite) only once the run is known to start.
  const std::vector<std::filesystem::path> earlier_run = comm.is_root() && resume_dir.empty()
                                                             ? earlier_run_files(c)
                                                             : std::vector<std::filesystem::path>{};
  // A relative data.path is taken from the current directory, not from the config's.
  MOEX_CHECK(std::filesystem::is_regular_file(std::filesystem::path(c.data.path) / "corpus.json"),
             c.source, ": data.path: ", c.data.path,
             " holds no corpus.json (make one with moex data prepare; a relative path is taken "
             "from the current directory, ",
             std::filesystem::current_path().string(), ")");
  const data::CorpusManifest corpus = data::load_corpus_manifest(c.data.path);
  MOEX_CHECK(corpus.vocab_size <= c.model.vocab_size, c.source, ": ",
             c.training.init_from.empty() ? "model.vocab_size"
                                          : "training.init_from " + c.training.init_from +
                                                ": the model's vocab_size",
             " (", c.model.vocab_size, ") is smaller than the corpus tokenizer's vocabulary (",
             corpus.vocab_size, ")");
  auto train_data = open_train_data(corpus, c);
  if (!c.data.packing && comm.is_root()) report_padding(*train_data, c);
  const auto eval_data = eval_sequences(corpus, c);
  // Every checkpoint carries the corpus tokenizer: a missing one is an error now, not at the end.
  MOEX_CHECK(corpus.tokenizer.empty() || std::filesystem::is_regular_file(corpus.tokenizer),
             c.data.path, "/corpus.json: tokenizer: ", corpus.tokenizer, " is not a file");
  // With init_from, the directory's tokenizer files when the corpus was tokenized with it.
  const std::vector<std::string> tokenizer_files =
      comm.is_root() ? checkpoint_tokenizer_files(corpus.tokenizer, c.training.init_from)
          : std::vector<std::string>{};

  // Data parallelism over the ranks of mpirun: each optimizer step covers grad_accum x dp
  // micro-batches of one shared sample stream; micro-batch j runs on data-parallel rank j % dp,
  // so the run equals a single process with grad_accum x dp micro-batches. Under expert
  // parallelism each rank holds E/ep experts of every MoE layer and the ep ranks exchange tokens
  // (docs/parallelism.md). Rank 0 logs and saves.
  dist::ProcessGroups groups = dist::ProcessGroups::make(comm, layout);
  const int64_t world = comm.size(), dp = layout.dp, dp_rank = layout.dp_rank;
  const bool ep = layout.ep > 1;
  const int64_t zero_stage = c.parallel.zero_stage;
  const bool tp = layout.tp > 1;
  // On the GPU the expert kernels take widths in whole 16-byte vectors (8 bf16): so must every
  // slice (the rest was checked when the config was read).
  const model::TensorParallelMisfit misfit = model::tensor_parallel_misfit(
      c.model, layout.tp, c.parallel.expert_slicing, c.training.device.is_cuda());
  MOEX_CHECK(misfit.message.empty(), c.source, ": parallel.", misfit.option, " ", misfit.message);
  // Detached sums would run beside backward's tp or ep collectives on another NCCL communicator,
  // which NCCL does not promise to progress side by side (docs/parallelism.md §Overlapped
  // gradient reductions).
  MOEX_CHECK(!(c.parallel.overlap_comm && c.training.device.is_cuda() && (tp || ep)), c.source,
             ": parallel.overlap_comm: on GPU ranks it needs tp 1 and ep 1 (the data-parallel "
             "sums would run beside backward's own collectives on another NCCL communicator)");
  // Every check of the config first: then the machine.
  MOEX_CHECK(!c.training.device.is_cuda() || ops::device_count() > 0, c.source,
             ": training.device \"cuda\" (or --device cuda), but no GPU is visible (no driver, "
             "CUDA_VISIBLE_DEVICES empty, or a build without CUDA)");
  // GPU ranks: tensor, expert and data parallelism over NCCL, one GPU per rank (the rank's local
  // index on its node).
  const Device device = c.training.device.is_cuda() && world > 1
                            ? Device::cuda(comm.local_rank() % std::max(1, ops::device_count()))
                            : c.training.device;
  // The GPU communicators of the groups with more than one rank, made in the same order on
  // every rank: dp (the gradients of the replicated weights), ep (the MoE layers' token
  // exchanges), edp (the expert gradients) and tp (the split layers' sums).
  // NCCL unless MOEX_GPU_COLLECTIVES=host (dist::make_device_group).
  std::unique_ptr<dist::DeviceGroup> gpu_dp, gpu_ep, gpu_edp, gpu_tp;
  if (device.is_cuda() && world > 1) {
    ops::use_device(device);
    dist::NcclOptions nccl;
    nccl.device = device.ordinal;
    if (dp > 1) gpu_dp = dist::make_device_group(*groups.dp, nccl);
    if (ep) gpu_ep = dist::make_device_group(*groups.ep, nccl);
    if (ep && layout.edp > 1) gpu_edp = dist::make_device_group(*groups.edp, nccl);
    if (tp) gpu_tp = dist::make_device_group(*groups.tp, nccl);
  }
  model::TensorParallel tensor_parallel;
  if (tp) {
    tensor_parallel.group = groups.tp.get();
    tensor_parallel.device_group = gpu_tp.get();
    tensor_parallel.drop_duplicate_tokens = c.parallel.dtd;
    tensor_parallel.slice_experts = c.parallel.expert_slicing;
  }
  if (hooks) hooks->start(tensor_parallel, ep ? groups.ep.get() : nullptr, gpu_ep.get(), device);
  // ZeRO stage 2: the model streams each bucket's gradients to the optimizer, which keeps only
  // its shard's sums. parallel.shard_master: the fp32 master weights are sharded too, the
  // optimizer keeping its shard of them and the model only the bf16 weights the kernels read
  // (docs/parallelism.md §ZeRO).
  const bool shard_master = shards_master(c);
  model::Model model(c.model, device, ep ? groups.ep.get() : nullptr, tensor_parallel,
                     c.parallel.offload,
                     model::ModelState{shard_master ? DType::kBF16 : c.optimizer.master_dtype,
                                       c.optimizer.grads_dtype, true, zero_stage == 2});
  if (gpu_ep) model.set_device_expert_group(gpu_ep.get());
  // Only a sharded master starts from the weights as drawn (fp32, before rounding): otherwise a
  // GPU model's host never holds the whole model (4 bytes a parameter) while they are drawn.
  ParamBuffer drawn = model.init_weights(c.training.seed, shard_master);
  const bool replaced = hooks && resume_dir.empty() && hooks->init_weights(model);
  // training.init_from: the directory's weights replace the drawn ones (a resume takes its
  // checkpoint's instead). `drawn` then holds them as read, which a sharded master starts from.
  const bool from_dir = resume_dir.empty() && !c.training.init_from.empty();
  MOEX_CHECK(!(replaced && from_dir), c.source,
             ": training.init_from cannot be combined with a variant that sets the weights itself");
  if (from_dir) {
    drawn = load_init_from_weights(model, c.training.init_from, c.training.init_from_moex);
    if (comm.is_root()) MOEX_INFO("weights from ", c.training.init_from);
  }
  ZeroConfig zero;
  zero.stage = zero_stage;
  zero.dp = groups.dp.get();
  zero.edp = groups.edp.get();
  zero.gpu_dp = gpu_dp.get();
  zero.gpu_edp = ep ? gpu_edp.get() : gpu_dp.get();  // without ep, edp holds the dp ranks
  zero.tile_elements = c.parallel.tile_elements;
  zero.shard_master = shard_master;
  zero.offload = c.parallel.offload;
  zero.overlap_comm = c.parallel.overlap_comm;
  AdamW optimizer = zero_stage > 0 ? AdamW(model, c.optimizer, zero)
                                   : AdamW(model.params(), c.optimizer, c.parallel.offload,
                                           c.parallel.tile_elements);
  if (zero_stage == 2) model.set_gradient_sink(&optimizer);
  // Without ZeRO's gradient partitioning every rank sums the whole buffer over dp (experts over
  // edp): after backward, or with parallel.overlap_comm as each block's gradients are final.
  const bool sum_over_dp = dp > 1 && zero_stage < 2;
  std::optional<GradientAllReduce> dp_sum;
  if (sum_over_dp)
    dp_sum.emplace(model,
                   DataParallelGroups{groups.dp.get(), ep ? groups.edp.get() : groups.dp.get(),
                                      gpu_dp.get(), ep ? gpu_edp.get() : gpu_dp.get()},
                   /*detach=*/c.parallel.overlap_comm);
  if (sum_over_dp && c.parallel.overlap_comm) model.set_gradient_sink(&*dp_sum);
  // The master starts from the weights as drawn (or as init_from's were read); a hook that
  // replaced some (a student initialized from its teacher's layers) leaves them in the model, so
  // the master takes the model's then.
  if (shard_master) optimizer.load_master(replaced ? model.host_params().flat() : drawn.flat());
  drawn = ParamBuffer();
  // Checkpoints gather experts (ep), tensor-parallel parts (tp) and moment shards (ZeRO): every
  // rank takes part then.
  const bool collective_save = ep || tp || zero_stage > 0;
  TrainerState state;
  if (!resume_dir.empty()) {
    state = load_checkpoint(resume_dir, model, optimizer);
    MOEX_CHECK(state.step < c.training.steps, resume_dir,
               "/trainer_state.json: the checkpoint is at step ", state.step, ", and ", c.source,
               " trains to training.steps ", c.training.steps,
               ": nothing is left to train (raise training.steps to train on)");
    try {
      train_data->restore_json(state.data_state);
    } catch (const Error& e) {
      MOEX_THROW(resume_dir, "/trainer_state.json: data_state does not fit the data of ", c.source,
                 " (data.path, data.seq_len, data.tasks and training.seed must be the run's): ",
                 e.message());
    }
    MOEX_INFO("resumed from ", resume_dir, " at step ", state.step);
    if (comm.is_root() && !c.training.init_from.empty())
      MOEX_INFO("training.init_from ", c.training.init_from,
                ": its model is this run's; the weights are the checkpoint's");
    if (comm.is_root())
      for (const std::string& change : model_config_changes(resume_dir, c.model_json))
        MOEX_WARN("resuming with another model config than ", resume_dir,
                  "/config.json was saved with: ", change);
  }
  const bool root = comm.is_root();
  std::ofstream metrics;
  if (root) {
    delete_earlier_run(c, earlier_run);  // the run has started: model, data and state are ready
    std::error_code error;
    std::filesystem::create_directories(c.training.out_dir, error);
    MOEX_CHECK(!error, c.source, ": training.out_dir: cannot create '", c.training.out_dir,
               "': ", error.message());
    MOEX_INFO("model: ", model.config().num_parameters(), " parameters, ", c.model.num_moe_layers(),
              " MoE layers; ", corpus.sources.size(), " corpus sources; ", dp,
              " data-parallel rank(s), ", layout.ep, " expert-parallel, ", layout.tp,
              " tensor-parallel");
    MOEX_INFO("optimizer state: ", optimizer.state_bytes(), " bytes on this rank (ZeRO stage ",
              zero_stage, "); gradients: ", model.gradient_bytes() + optimizer.gradient_bytes(),
              " bytes");
    // What the task and language temperatures make of the corpus (docs/data.md §Mixing).
    std::string mix;
    const data::MixtureSampler& mixer = train_data->mixer();
    for (size_t i = 0; i < mixer.sources().size(); ++i) {
      char p[32];
      std::snprintf(p, sizeof(p), " %.4f", mixer.probabilities()[i]);
      mix += (i ? "," : "") + std::string(" ") + mixer.sources()[i].name + p;
    }
    MOEX_INFO("data mixture (source probability):", mix);
  }

  g_interrupted = 0;
  g_say_stopping = root ? 1 : 0;
  // Kept until the stop checkpoint is written (a second signal must not cut it short).
  const StopSignalHandlers handlers(on_stop_signal);
  const int64_t seq_len = c.data.seq_len, mb = c.training.micro_batch_size;
  const int64_t micro_per_step = c.training.grad_accum * dp;
  const int64_t tokens_per_step = mb * seq_len * micro_per_step;
  TrainResult result;
  result.optimizer_state_bytes = optimizer.state_bytes();
  result.gradient_bytes = model.gradient_bytes() + optimizer.gradient_bytes();
  auto window_start = Clock::now();
  int64_t window_tokens = 0, steps_this_run = 0;
  // A step's windows, [micro_per_step][mb][seq_len + 1], and chat data's loss mask beside them
  // (empty without one).
  const int64_t window = seq_len + 1, micro_window = mb * window;
  std::vector<int32_t> windows(static_cast<size_t>(micro_per_step * micro_window)), ids, targets;
  std::vector<int32_t> window_masks(has_loss_mask(corpus, c) ? windows.size() : 0);
  int32_t* const masks = window_masks.empty() ? nullptr : window_masks.data();
  // With a loss mask, each micro-batch's head loss weighs by its share of the step's trained
  // targets, so that the step's loss is their mean however the step is cut into micro-batches
  // and ranks.
  std::vector<double> head_weight(static_cast<size_t>(micro_per_step), 0.0);

  auto checkpoint = [&](const std::string& name) {
    state.data_state = train_data->state_json();
    const std::string dir = c.training.out_dir + "/" + name;
    save_checkpoint(dir, model, c.model_json, optimizer, state, tokenizer_files, root);
    result.last_checkpoint = dir;
    if (root) MOEX_INFO("checkpoint ", dir);
  };

  while (state.step < c.training.steps) {
    const double lr = learning_rate(c.optimizer, c.schedule, state.step, c.training.steps);
    model.zero_grad();
    double loss = 0, aux = 0, zl = 0, kd = 0, weighted_kd = 0;
    ExpertLoads expert_loads;  // for the selection-bias rule
    // Every rank reads every micro-batch, so that the sample streams stay aligned (and each knows
    // the step's trained targets).
    for (int64_t w = 0; w < micro_per_step * mb; ++w)
      train_data->next(windows.data() + w * window, masks ? masks + w * window : nullptr);
    if (masks) {
      std::vector<int64_t> trained(static_cast<size_t>(micro_per_step), 0);
      int64_t total = 0;
      for (int64_t micro = 0; micro < micro_per_step; ++micro)
        for (int64_t w = 0; w < mb; ++w)
          for (int64_t t = 1; t < window; ++t)  // the targets: every token but the first
            trained[micro] += masks[micro * micro_window + w * window + t] != 0;
      for (const int64_t n : trained) total += n;
      for (int64_t micro = 0; micro < micro_per_step; ++micro)
        head_weight[micro] =
            total > 0 ? static_cast<double>(trained[micro]) / static_cast<double>(total) : 0.0;
    }
    for (int64_t micro = 0; micro < micro_per_step; ++micro) {
      if (micro % dp != dp_rank) continue;
      split_batch(windows.data() + micro * micro_window, mb, seq_len, &ids, &targets,
                  masks ? masks + micro * micro_window : nullptr);
      model::ForwardOptions opt;
      opt.training = true;
      opt.for_backward = true;
      opt.checkpoint_activations = c.training.activation_checkpointing;
      opt.cac = c.parallel.cac;
      opt.seed = c.training.seed;
      opt.step = static_cast<uint64_t>(state.step * micro_per_step + micro);
      opt.loss_scale = 1.0 / static_cast<double>(micro_per_step);
      if (masks) opt.head_loss_scale = head_weight[micro];
      if (hooks) hooks->before_forward(ids.data(), mb, seq_len, state.step, opt);
      const model::LossResult r = model.forward(ids.data(), targets.data(), mb, seq_len, opt);
      model.backward(/*last_of_step=*/micro + dp >= micro_per_step);
      if (c.optimizer.bias_update_rate > 0) accumulate_expert_loads(model, expert_loads);
      // The head's terms by the micro-batch's weight (1 / micro-batches without a mask).
      auto head_share = [&](double x) {
        return masks ? x * head_weight[micro] : x / static_cast<double>(micro_per_step);
      };
      loss += head_share(r.loss);
      aux += r.aux_loss / micro_per_step;
      zl += r.z_loss / micro_per_step;
      kd += head_share(r.kd_loss);
      weighted_kd += head_share(r.weighted_kd);
    }
    model.finish_gradients();
    // Under ZeRO stage 2 the optimizer has reduce-scattered every bucket as the model streamed it.
    if (sum_over_dp && c.parallel.overlap_comm)
      dp_sum->wait();
    else if (sum_over_dp)
      dp_sum->reduce_all(model);
    if (dp > 1) {
      double sums[5] = {loss, aux, zl, kd, weighted_kd};
      groups.dp->all_reduce_sum(sums, 5);
      loss = sums[0], aux = sums[1], zl = sums[2], kd = sums[3], weighted_kd = sums[4];
    }
    const double lm_loss = loss;
    loss += weighted_kd;  // the objective (without the router terms, as in plain training)
    // A diverged run ends here, before the optimizer writes non-finite weights (every rank sees
    // the same reduced loss, so all stop together); the last checkpoint stays as it was.
    MOEX_CHECK(std::isfinite(loss), c.source, ": training diverged: the loss of step ",
               state.step + 1, " is ", loss,
               " (lower optimizer.lr or model.init_std, or resume from an earlier checkpoint)");
    const double grad_norm = optimizer.step(model, lr, state.step + 1);
    if (c.optimizer.bias_update_rate > 0) {
      // Every rank applies the same rule to the same (summed) loads: the biases stay equal.
      for (auto& [layer, load] : expert_loads)
        groups.dp->all_reduce_sum(load.data(), static_cast<int64_t>(load.size()));
      update_selection_bias(model, expert_loads, c.optimizer.bias_update_rate);
    }
    ++state.step;
    ++steps_this_run;
    state.last_loss = loss;
    window_tokens += tokens_per_step;

    const bool last = state.step == c.training.steps;
    nlohmann::json line = {{"step", state.step}, {"loss", loss}, {"aux_loss", aux},
                           {"z_loss", zl},       {"lr", lr},     {"grad_norm", grad_norm}};
    if (hooks) {
      line["lm_loss"] = lm_loss;
      line["kd_loss"] = kd;
      hooks->add_metrics(state.step - 1, line);
    }
    if (root && (state.step % c.training.log_every == 0 || last)) {
      const double secs = std::chrono::duration<double>(Clock::now() - window_start).count();
      const double tps = window_tokens / std::max(secs, 1e-9);
      const double eta = (c.training.steps - state.step) * tokens_per_step / std::max(tps, 1e-9);
      std::fprintf(
          stderr,
          "step %6lld/%lld | loss %.4f | aux %.4f | lr %.2e | gnorm %.2f | %.0f tok/s | ETA %s\n",
          static_cast<long long>(state.step), static_cast<long long>(c.training.steps), loss, aux,
          lr, grad_norm, tps, format_duration(eta).c_str());
      line["tokens_per_second"] = tps;
      nlohmann::json load = nlohmann::json::object();
      for (const auto& [layer, stats] : model.moe_stats())
        load[std::to_string(layer)] = {
            {"load", stats.load}, {"kept", stats.counts}, {"dropped", stats.num_dropped}};
      line["expert_load"] = load;
      result.tokens_per_second = tps;
      window_start = Clock::now();
      window_tokens = 0;
    }
    // Under ep and tp every rank evaluates (the same sequences): the experts and the split
    // layers need all of them.
    if ((root || ep || tp) && c.training.eval_every > 0 &&
        (state.step % c.training.eval_every == 0 || last) && !eval_data.empty()) {
      const double eval_loss = evaluate(model, eval_data, c);
      line["eval_loss"] = eval_loss;
      result.final_eval_loss = eval_loss;
      if (root)
        std::fprintf(stderr, "step %6lld | eval loss %.4f | ppl %.2f\n",
                     static_cast<long long>(state.step), eval_loss, std::exp(eval_loss));
    }
    if (root) {
      // Made (or, resumed, cut after the checkpoint's step) with the first line: a run that fails
      // before its first step leaves no metrics.jsonl, which would count as an earlier run.
      if (!metrics.is_open()) {
        const std::string metrics_path = c.training.out_dir + "/metrics.jsonl";
        if (!resume_dir.empty()) cut_metrics_after(metrics_path, state.step - 1);
        metrics.open(metrics_path, resume_dir.empty() ? std::ios::trunc : std::ios::app);
        MOEX_CHECK(metrics.is_open(), metrics_path, ": cannot write the run's metrics");
      }
      metrics << line.dump() << "\n" << std::flush;
    }
    if ((root || collective_save) && c.training.checkpoint_every > 0 &&
        state.step % c.training.checkpoint_every == 0 && !last) {
      char name[32];
      std::snprintf(name, sizeof(name), "step-%06lld", static_cast<long long>(state.step));
      checkpoint(name);
      if (root && c.training.keep_checkpoints > 0)
        for (const std::string& old :
             remove_old_checkpoints(c.training.out_dir, state.step, c.training.keep_checkpoints))
          MOEX_INFO("removed ", old, " (training.keep_checkpoints ", c.training.keep_checkpoints,
                    ")");
    }
    const bool interrupted = comm.all_reduce_max(g_interrupted ? 1 : 0) != 0;  // Ctrl-C on any rank
    if (interrupted || (stop_after > 0 && steps_this_run >= stop_after)) {
      result.interrupted = interrupted;
      break;
    }
  }
  if (root || collective_save) checkpoint(state.step == c.training.steps ? "final" : "latest");
  if (root && result.interrupted)
    MOEX_INFO("stopped at step ", state.step, " of ", c.training.steps, "; continue with --resume ",
              c.training.out_dir, "/latest");
  if (root) {
    write_loss_plot(c.training.out_dir + "/metrics.jsonl", c.training.out_dir + "/loss.svg");
  }
  result.steps_done = state.step;
  result.exchange = model.exchange_stats();
  result.final_loss = state.last_loss;
  return result;
}

}  // namespace moex::train
