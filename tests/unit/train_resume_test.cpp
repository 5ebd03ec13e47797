// Training end to end on a synthetic corpus: the loss falls, N straight steps equal N/2 + resume
// N/2 exactly, a kill while saving leaves the previous checkpoint intact, config errors name
// fields.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "core/rng.h"
#include "cpu_kernel_checks.h"
#include "data/indexed_dataset.h"
#include "io/safetensors.h"
#include "model/model_io.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;
using testing::losses_of;
using testing::write_config;

TEST(Training, LossFallsAndResumeIsExact) {
  const fs::path corpus = testing::make_temp_corpus("moex_train");
  const std::string straight = (corpus / "straight").string(), split = (corpus / "split").string();
  const TrainResult full =
      run_training(TrainConfig::from_file(write_config(corpus, straight, "").string()), "");
  EXPECT_EQ(full.steps_done, 12);
  const std::vector<double> a = losses_of(straight + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 12u);
  EXPECT_LT(a.back(), a.front() - 0.3) << "the loss should fall on this easy corpus";
  EXPECT_TRUE(fs::exists(straight + "/final/model.safetensors"));
  EXPECT_TRUE(fs::exists(straight + "/loss.svg"));

  const TrainConfig split_config = TrainConfig::from_file(write_config(corpus, split, "").string());
  const TrainResult first = run_training(split_config, "", 6);
  EXPECT_EQ(first.steps_done, 6);
  const TrainResult second = run_training(split_config, split + "/latest");
  EXPECT_EQ(second.steps_done, 12);
  const std::vector<double> b = losses_of(split + "/metrics.jsonl");
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;
  // Resuming from the step-6 checkpoint again (the run went on to 12 after it) rewrites the steps
  // after it: metrics.jsonl holds each step once.
  EXPECT_EQ(run_training(split_config, split + "/latest", 2).steps_done, 8);
  EXPECT_EQ(losses_of(split + "/metrics.jsonl"), std::vector<double>(a.begin(), a.begin() + 8));

  // A fresh run into that directory is refused and touches nothing; with overwrite_out_dir it
  // deletes the earlier run (its `latest` too, which the new run would not replace) and starts
  // over, the straight run again.
  try {
    run_training(split_config, "");
    ADD_FAILURE() << "a fresh run replaced an earlier one";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("holds an earlier run (final, ...)"), std::string::npos)
        << e.message();
  }
  EXPECT_EQ(losses_of(split + "/metrics.jsonl").size(), 8u);
  ASSERT_TRUE(fs::exists(split + "/latest"));
  // What saves cut short by a kill leave (a checkpoint's temporary and replaced copies) belongs
  // to the earlier run too; a directory of the user's own is no part of it.
  for (const char* left : {"step-000004.tmp", "latest.old", "notes.tmp"})
    fs::create_directories(split + "/" + left);
  TrainConfig overwrite = split_config;
  overwrite.training.overwrite_out_dir = true;
  EXPECT_EQ(run_training(overwrite, "").steps_done, 12);
  EXPECT_FALSE(fs::exists(split + "/latest"));
  EXPECT_FALSE(fs::exists(split + "/step-000004.tmp"));
  EXPECT_FALSE(fs::exists(split + "/latest.old"));
  EXPECT_TRUE(fs::exists(split + "/notes.tmp"));
  EXPECT_EQ(losses_of(split + "/metrics.jsonl"), a);
  fs::remove_all(corpus);
}

// optimizer.moments_dtype "bf16": the moments take half the bytes, the losses follow the fp32
// moments' run (within 1e-3 relative over 12 steps; 1.1e-4 at most when written), the checkpoint
// holds them widened to fp32, a resumed run continues exactly, and a run of fp32 moments resumes
// with bf16 ones.
TEST(Training, Bf16MomentsFollowTheFp32RunAndResumeExactly) {
  const fs::path corpus = testing::make_temp_corpus("moex_bf16m");
  const std::string optimizer_bf16 =
      R"(, "optimizer": {"lr": 0.01, "grad_clip": 1.0, "moments_dtype": "bf16"})";
  auto config = [&](const std::string& dir, const std::string& root) {
    return TrainConfig::from_file(
        write_config(corpus, (corpus / dir).string(), "", nullptr, "", root).string());
  };
  const TrainResult f32 = run_training(config("f32", ""), "");
  const TrainResult bf16 = run_training(config("bf16", optimizer_bf16), "");
  EXPECT_EQ(bf16.optimizer_state_bytes * 2, f32.optimizer_state_bytes);
  const std::vector<double> a = losses_of((corpus / "f32" / "metrics.jsonl").string());
  const std::vector<double> b = losses_of((corpus / "bf16" / "metrics.jsonl").string());
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  EXPECT_NE(a, b) << "the moments were not stored in bf16";
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 1e-3 * a[i]) << "step " << i + 1;

  const io::SafetensorsFile saved =
      io::SafetensorsFile::open((corpus / "bf16" / "final" / "optimizer.safetensors").string());
  for (const std::string& name : saved.names())
    EXPECT_EQ(saved.entry(name).dtype, DType::kF32) << name;

  const TrainConfig split = config("split", optimizer_bf16);
  EXPECT_EQ(run_training(split, "", 6).steps_done, 6);
  EXPECT_EQ(run_training(split, (corpus / "split" / "latest").string()).steps_done, 12);
  EXPECT_EQ(losses_of((corpus / "split" / "metrics.jsonl").string()), b);

  // A checkpoint of fp32 moments resumes with bf16 ones (rounded once on loading).
  EXPECT_EQ(run_training(config("cross", ""), "", 6).steps_done, 6);
  TrainConfig cross = config("cross", optimizer_bf16);
  EXPECT_EQ(run_training(cross, (corpus / "cross" / "latest").string()).steps_done, 12);
  const std::vector<double> c = losses_of((corpus / "cross" / "metrics.jsonl").string());
  ASSERT_EQ(c.size(), 12u);
  for (size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(c[i], b[i], 1e-3 * b[i]) << "step " << i + 1;
  fs::remove_all(corpus);
}

// Without anything to gather, a checkpoint writes the model's and the optimizer's own buffers a
// tensor at a time (bf16 moments widened as they are written): the files are byte for byte those
// written from whole fp32 host copies (gather_moment, host_params), as before that change.
TEST(Training, CheckpointWritesStateInPlaceAsFromFp32Copies) {
  const fs::path corpus = testing::make_temp_corpus("moex_inplace");
  const TrainConfig config =
      TrainConfig::from_file(write_config(corpus, (corpus / "run").string(), "", nullptr, "",
                                          R"(, "optimizer": {"moments_dtype": "bf16"})")
                                 .string());
  model::Model model(config.model);
  model.init_weights(1);
  AdamW optimizer(model.params(), config.optimizer);
  for (const bool second : {false, true}) {  // moments that are not zeros (rounded to bf16)
    Tensor values = Tensor::empty(model.params().flat().shape(), DType::kF32);
    for (int64_t i = 0; i < values.numel(); ++i)
      values.data<float>()[i] = static_cast<float>(1e-3 * ((i * 37 + (second ? 11 : 5)) % 101));
    optimizer.load_moment(second, values);
  }
  TrainerState state;
  state.step = 3;
  state.data_state = "{}";
  const fs::path dir = corpus / "run" / "ckpt", ref = corpus / "ref";
  fs::create_directories(corpus / "run");
  fs::create_directories(ref);
  save_checkpoint(dir.string(), model, config.model_json, optimizer, state, {});
  std::map<std::string, Tensor> moments;
  for (const bool second : {false, true})
    for (auto& [name, t] : model::gather_named_tensors(model, optimizer.gather_moment(second)))
      moments[(second ? "exp_avg_sq." : "exp_avg.") + name] = t;
  io::save_safetensors((ref / "optimizer.safetensors").string(), moments);
  io::save_safetensors((ref / "model.safetensors").string(),
                       model::gather_named_tensors(model, model.host_params().flat()));
  auto file_bytes = [](const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  for (const char* file : {"optimizer.safetensors", "model.safetensors"})
    EXPECT_EQ(file_bytes(dir / file), file_bytes(ref / file)) << file;
  EXPECT_EQ(io::SafetensorsFile::open((dir / "optimizer.safetensors").string())
                .entry("exp_avg.lm_head.weight")
                .dtype,
            DType::kF32);
  fs::remove_all(corpus);
}

// The fixture's model, freshly initialised, with its optimizer, saved at `step` to corpus/run/ckpt.
struct SavedModel {
  SavedModel(const fs::path& corpus, int64_t step)
      : config(
            TrainConfig::from_file(write_config(corpus, (corpus / "run").string(), "").string())),
        model(config.model),
        optimizer(model.params(), config.optimizer),
        dir((corpus / "run" / "ckpt").string()) {
    model.init_weights(1);
    state.step = step;
    state.data_state = "{}";
    fs::create_directories(corpus / "run");
    save_checkpoint(dir, model, config.model_json, optimizer, state, {});
  }
  TrainConfig config;
  model::Model model;
  AdamW optimizer;
  TrainerState state;
  std::string dir;
};

TEST(Training, KillWhileSavingLeavesThePreviousCheckpoint) {
  const fs::path corpus = testing::make_temp_corpus("moex_kill");
  SavedModel saved(corpus, 7);
  const TrainConfig& config = saved.config;
  model::Model& model = saved.model;
  AdamW& optimizer = saved.optimizer;
  TrainerState& state = saved.state;
  const std::string& dir = saved.dir;
  const std::vector<float> before(
      model.params().flat().data<float>(),
      model.params().flat().data<float>() + model.params().flat().numel());

  // A child saves different weights and is killed as soon as its temporary directory exists.
  const pid_t child = fork();
  if (child == 0) {
    float* p = model.params().flat().data<float>();
    for (int64_t i = 0; i < model.params().flat().numel(); ++i) p[i] += 1.0f;
    state.step = 8;
    for (;;) save_checkpoint(dir, model, config.model_json, optimizer, state, {});
  }
  for (int i = 0; i < 2000 && !fs::exists(dir + ".tmp"); ++i)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);

  // Whatever moment the kill hit, `dir` holds one complete checkpoint: the old one, or a whole new
  // one.
  model::Model loaded(config.model);
  AdamW loaded_opt(loaded.params(), config.optimizer);
  const TrainerState got = load_checkpoint(dir, loaded, loaded_opt);
  const float* p0 = loaded.params().flat().data<float>();
  const float shift = got.step == 7 ? 0.0f : 1.0f;
  ASSERT_TRUE(got.step == 7 || got.step == 8);
  for (int e = 0; e < loaded.params().size(); ++e) {
    const Tensor& t = loaded.params().tensor(e);
    const int64_t offset = t.data<float>() - p0;
    for (int64_t i = 0; i < t.numel(); ++i)
      ASSERT_EQ(p0[offset + i], before[offset + i] + shift)
          << loaded.params().name(e) << " element " << i;
  }
  fs::remove_all(corpus);
}

// A resume refuses tensors of other shapes; a model change that keeps every shape loads, and the
// trainer names each changed field (model_config_changes) in a warning.
TEST(Training, ResumeNamesTheModelFieldsThatChanged) {
  const fs::path corpus = testing::make_temp_corpus("moex_config_changes");
  const SavedModel saved(corpus, 0);
  const TrainConfig& config = saved.config;
  const std::string& dir = saved.dir;
  EXPECT_TRUE(model_config_changes(dir, config.model_json).empty());
  nlohmann::json changed = nlohmann::json::parse(config.model_json);
  changed["moe"]["top_k"] = 1;
  changed["rope_theta"] = 500.0;
  changed["moe"].erase("jitter_eps");
  const std::vector<std::string> changes = model_config_changes(dir, changed.dump());
  EXPECT_EQ(changes,
            (std::vector<std::string>{"moe.jitter_eps: 0.01 -> (absent)", "moe.top_k: 2 -> 1",
                                      "rope_theta: (absent) -> 500.0"}));
  EXPECT_TRUE(model_config_changes((corpus / "nothing_here").string(), config.model_json).empty());
  fs::remove_all(corpus);
}

// A run whose loss is not finite stops at that step with one error naming the config, before
// the optimizer writes non-finite weights, and saves no checkpoint.
TEST(Training, ADivergedRunStopsWithAClearErrorAndNoCheckpoint) {
  const fs::path corpus = testing::make_temp_corpus("moex_diverged");
  const std::string out = (corpus / "run").string();
  const fs::path path = write_config(corpus, out, "", nullptr, "", "", R"(, "init_std": 1e30)");
  const TrainConfig config = TrainConfig::from_file(path.string());
  std::string message = "(no error)";
  try {
    run_training(config, "");
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find(path.string() + ": training diverged: the loss of step "),
            std::string::npos)
      << message;
  EXPECT_FALSE(fs::exists(out + "/final"));
  EXPECT_FALSE(fs::exists(out + "/latest"));
  fs::remove_all(corpus);
}

// The corpus tokenizer goes into every checkpoint: a missing one fails at start-up, naming the
// corpus file, instead of after the last step.
TEST(Training, AMissingCorpusTokenizerFailsBeforeTheFirstStep) {
  const fs::path corpus = testing::make_temp_corpus("moex_no_tokenizer");
  fs::remove(corpus / "tok.model");
  const std::string out = (corpus / "run").string();
  const TrainConfig config = TrainConfig::from_file(write_config(corpus, out, "").string());
  std::string message = "(no error)";
  try {
    run_training(config, "");
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(
      message.find("corpus.json: tokenizer: " + (corpus / "tok.model").string() + " is not a file"),
      std::string::npos)
      << message;
  EXPECT_FALSE(fs::exists(out + "/metrics.jsonl"));
  fs::remove_all(corpus);
}

// training.keep_checkpoints: the newest N step checkpoints stay, and the final one. A run resumed
// from an earlier step leaves the later checkpoints of the first run alone. (Each checkpoint
// carries the corpus tokenizer and its tokenizer_config.json.)
TEST(Training, KeepCheckpointsRemovesTheOldestStepCheckpoints) {
  const fs::path corpus = testing::make_temp_corpus("moex_keep_checkpoints");
  // A tokenizer_config.json beside the corpus tokenizer goes into every checkpoint with it.
  std::ofstream(corpus / "tokenizer_config.json") << R"({"chat_template": "{{ x }}"})";
  const std::string out = (corpus / "run").string();
  const TrainConfig config = TrainConfig::from_file(
      write_config(corpus, out, R"(, "checkpoint_every": 2, "keep_checkpoints": 2)").string());
  ASSERT_EQ(run_training(config, "").steps_done, 12);
  auto dirs = [&] {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(out))
      if (e.is_directory()) names.insert(e.path().filename().string());
    return names;
  };
  EXPECT_EQ(dirs(), (std::set<std::string>{"final", "step-000008", "step-000010"}));
  for (const char* file : {"final/tok.model", "final/tokenizer_config.json",
                           "step-000010/tokenizer_config.json"})
    EXPECT_TRUE(fs::is_regular_file(out + "/" + file)) << file;
  // Resumed from step 8: its next checkpoint (step 10) is rewritten and step 8 stays beside it.
  TrainConfig resumed = config;
  resumed.training.steps = 11;
  run_training(resumed, out + "/step-000008");
  EXPECT_EQ(dirs(), (std::set<std::string>{"final", "step-000008", "step-000010"}));
  // The function alone: a stray directory and the later step-* are not touched.
  fs::create_directories(out + "/step-000012");
  fs::create_directories(out + "/step-x");
  EXPECT_EQ(remove_old_checkpoints(out, 11, 1), (std::vector<std::string>{out + "/step-000008"}));
  EXPECT_EQ(dirs(), (std::set<std::string>{"final", "step-000010", "step-000012", "step-x"}));
  fs::remove_all(corpus);
}

// A resume that cannot continue fails before touching the run: a checkpoint at or past the
// config's training.steps, a negative step, or a data state from other data, each one error
// naming trainer_state.json; metrics.jsonl keeps every line (the later steps' lines are cut only
// when the resumed run writes its first one).
TEST(Training, ResumeThatCannotContinueNamesTheStateAndKeepsTheMetrics) {
  const fs::path corpus = testing::make_temp_corpus("moex_bad_resume");
  const std::string out = (corpus / "run").string();
  const TrainConfig config =
      TrainConfig::from_file(write_config(corpus, out, R"(, "checkpoint_every": 3)").string());
  ASSERT_EQ(run_training(config, "").steps_done, 12);
  const std::string metrics = out + "/metrics.jsonl";
  ASSERT_EQ(losses_of(metrics).size(), 12u);
  const std::string step3 = out + "/step-000003";
  auto error_of = [&](const TrainConfig& c, const std::string& dir) {
    try {
      run_training(c, dir);
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  auto expect_names = [&](const std::string& message, const std::vector<std::string>& parts) {
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' in: " << message;
    EXPECT_EQ(losses_of(metrics).size(), 12u) << message;
  };
  TrainConfig short_run = config;
  short_run.training.steps = 3;
  expect_names(error_of(short_run, step3),
               {step3 + "/trainer_state.json", "step 3", "training.steps 3", "nothing is left"});
  const std::string other = (corpus / "other").string();
  fs::copy(step3, other);
  nlohmann::json state = nlohmann::json::parse(std::ifstream(other + "/trainer_state.json"));
  ASSERT_EQ(state.at("step"), 3);
  state["step"] = -3;
  std::ofstream(other + "/trainer_state.json") << state.dump();
  expect_names(error_of(config, other), {other + "/trainer_state.json", "step", "-3"});
  TrainConfig longer_windows = config;
  longer_windows.data.seq_len = config.data.seq_len / 2;
  expect_names(error_of(longer_windows, step3),
               {step3 + "/trainer_state.json", "data_state", "data.seq_len"});
  fs::remove_all(corpus);
}

// Ctrl-C (SIGINT) and SIGTERM (what mpirun passes its ranks on Ctrl-C, and what job schedulers
// send before preempting) both end the run after its step, with a checkpoint; a second one (a
// user pressing Ctrl-C again) changes nothing.
TEST(Training, StopSignalsEndTheStepAndCheckpoint) {
  for (const int signal : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(signal == SIGINT ? "SIGINT" : "SIGTERM");
    const fs::path corpus = testing::make_temp_corpus("moex_stop_signal" + std::to_string(signal));
    const std::string out = (corpus / "run").string();
    const TrainConfig config =
        TrainConfig::from_file(write_config(corpus, out, R"(, "steps": 100000)").string());
    std::thread interrupter([&] {
      // The signal once the first step has been logged.
      while (!fs::exists(out + "/metrics.jsonl") || fs::file_size(out + "/metrics.jsonl") == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      std::raise(signal);
      std::raise(signal);
    });
    const TrainResult r = run_training(config, "");
    interrupter.join();
    EXPECT_TRUE(r.interrupted);
    EXPECT_LT(r.steps_done, 100000);
    EXPECT_EQ(r.last_checkpoint, out + "/latest");
    model::Model m(config.model);
    AdamW opt(m.params(), config.optimizer);
    EXPECT_EQ(load_checkpoint(out + "/latest", m, opt).step, r.steps_done);
    fs::remove_all(corpus);
  }
}

TEST(TrainConfig, ErrorsNameFileAndField) {
  const fs::path corpus = testing::make_temp_corpus("moex_cfg");
  auto error_of = [&](const std::string& extra) {
    try {
      TrainConfig::from_file(write_config(corpus, "x", extra).string());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of(R"(, "stepz": 3)").find("unknown field 'training.stepz'"), std::string::npos);
  EXPECT_NE(error_of(R"(, "steps": 0)").find("training.steps must be >= 1"), std::string::npos);
  EXPECT_NE(error_of(R"(, "grad_accum": "two")").find("training.grad_accum must be an integer"),
            std::string::npos);
  // An optimizer section's error, naming the field.
  for (const char* field : {"moments_dtype", "grads_dtype", "master_dtype"}) {
    const std::string section = std::string(R"(, "optimizer": {")") + field + R"(": "fp16"})";
    testing::expect_error_naming(
        [&] {
          TrainConfig::from_file(write_config(corpus, "x", "", nullptr, "", section).string());
        },
        {std::string("optimizer.") + field});
  }
  // bf16 gradients and master weights: parsed, then refused by name on the CPU before anything is
  // read or written.
  for (const char* field : {"grads_dtype", "master_dtype"}) {
    const std::string out = (corpus / field).string();
    const fs::path path =
        write_config(corpus, out, "", nullptr, "",
                     std::string(R"(, "optimizer": {")") + field + R"(": "bf16"})");
    const TrainConfig parsed = TrainConfig::from_file(path.string());
    EXPECT_EQ(std::string(field) == "grads_dtype" ? parsed.optimizer.grads_dtype
                                                  : parsed.optimizer.master_dtype,
              DType::kBF16);
    testing::expect_error_naming([&] { run_training(parsed, ""); },
                                 {std::string("optimizer.") + field});
    EXPECT_FALSE(fs::exists(out));
  }
  // On GPUs they run in every layout; a bf16 master with parallel.shard_master (an fp32 master
  // shard beside the bf16 weights) is refused by name before any GPU is touched.
  for (const auto& [field, parallel, names] :
       {std::tuple{"master_dtype", R"({"zero_stage": 1, "shard_master": true})",
                   std::vector<std::string>{"optimizer.master_dtype", "parallel.shard_master"}}}) {
    const std::string out = (corpus / (std::string(field) + "_zero")).string();
    const TrainConfig parsed = TrainConfig::from_file(
        write_config(corpus, out, R"(, "device": "cuda")", nullptr, "",
                     std::string(R"(, "parallel": )") + parallel + R"(, "optimizer": {")" + field +
                         R"(": "bf16"})")
            .string());
    testing::expect_error_naming([&] { run_training(parsed, ""); }, names);
    EXPECT_FALSE(fs::exists(out));
  }
  fs::remove_all(corpus);
}

}  // namespace
}  // namespace moex::train
