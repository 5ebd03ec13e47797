// Run under mpirun with 2 and 4 ranks (see CMakeLists.txt): tensor-parallel training must equal
// the single-process run on the same global batch. With W ranks and parallel.tp = tp, dp = W / tp
// data-parallel groups each run one micro-batch per step (grad_accum 1); the reference is one
// process with grad_accum dp. Attention heads, the dense FFN's width and the vocabulary (embedding,
// LM head, vocabulary-parallel cross-entropy) are split over the tp ranks, so every product is
// summed in another order. Losses and eval losses agree to 1e-5 relative, the final weights and
// Adam moments to 1e-5 relative L2. Every run (distributed and reference) uses Adam eps 1e-12,
// not the default 1e-8, as train_overlap_test.cpp does: Adam moves an element by
// lr * g / (|g| + eps), so an element whose gradient is near eps moves by lr times about its
// gradient's relative error, and the split sums' fp32 rounding is a large relative error of a
// near-zero gradient; later steps spread it. Worst weights or moments measured at eps 1e-8:
// 1.2e-5 (np 2), 3.9e-5 (np 4), 1e-3 for the teacher with one kv head at np 4; at 1e-12:
// 3.4e-6 (np 2), 1.8e-6 (np 4), as at 1e-16 (3.7e-6, 1.7e-6), so what is left is rounding.
// Layouts: tp 2 (np 2); tp 2 x dp 2 and tp 2 x ep 2 (np 4), each with the fixture's model and
// with a variant that has q/k norms per head, q/k/v biases, tied embeddings and learned
// positions; and the same with expert tensor-slicing (each expert's hidden width split over tp as
// well), whose only difference from the single process is again the order of the split sums.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <random>

#include "dist/parallel_layout.h"
#include "infer/generator.h"
#include "infer/scheduler.h"
#include "model/model_io.h"
#include "train/distill.h"
#include "train/trainer.h"
#include "train_compare.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

constexpr double kTrainedTolerance = 1e-5;  // relative L2 of trained weights and moments
// Adam's eps in every run (the header comment says why).
const std::string kSmallAdamEps = R"(, "optimizer": {"lr": 0.01, "grad_clip": 1.0, "eps": 1e-12})";

// A model with every split that the fixture's model leaves out.
constexpr const char* kVariantModel =
    R"(, "qk_norm": "per_head", "qkv_bias": true, "tie_embeddings": true, "positions": "learned")";

// The layout's parallel fields beyond tp, ep and ZeRO (e.g. expert slicing); `result` (if not
// null) gets the distributed run's result on this rank. With `distill` (a "distill" section's
// fields) both runs are distillations (moex distill) from one random teacher of the student's
// shape, or of that shape with `teacher_model` (a JSON merge patch of the "model" object, e.g.
// {"num_kv_heads": 1}) applied.
void check_equals_single_process(int tp, int ep, const std::string& extra_model,
                                 const std::string& extra_training = "", int zero_stage = 0,
                                 const std::string& extra_parallel = "",
                                 TrainResult* result = nullptr, const std::string& distill = "",
                                 const std::string& teacher_model = "") {
  dist::Communicator& world = dist::Communicator::world();
  const int dp = world.size() / tp;
  const std::string name =
      "tp_test_np" + std::to_string(world.size()) + "_tp" + std::to_string(tp) + "_ep" +
      std::to_string(ep) + (extra_model.empty() ? "" : "_variant") +
      (extra_training.empty() ? "" : "_extra") + "_zero" + std::to_string(zero_stage) +
      (extra_parallel.empty() ? ""
                              : "_" + std::to_string(std::hash<std::string>()(extra_parallel))) +
      (distill.empty() ? "" : "_distill") +
      (teacher_model.empty()
           ? ""
           : "_teacher" + std::to_string(std::hash<std::string>()(teacher_model)));
  const fs::path corpus = fs::current_path() / name;
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();

  const std::string training = R"(, "grad_accum": 1, "steps": 4, "eval_every": 2)" + extra_training;
  const std::string out = (corpus / "tp").string(), ref_out = (corpus / "ref").string();
  const std::string parallel = R"(, "parallel": {"tp": )" + std::to_string(tp) + R"(, "ep": )" +
                               std::to_string(ep) + R"(, "zero_stage": )" +
                               std::to_string(zero_stage) + R"(, "tile_elements": 1000)" +
                               extra_parallel + "}";
  const std::string distill_section = distill.empty() ? "" : R"(, "distill": {)" + distill + "}";
  const fs::path config_path = testing::write_config(
      corpus, out, training, &world, "", parallel + kSmallAdamEps + distill_section, extra_model);
  const std::string teacher = (corpus / "teacher").string();
  if (!distill.empty() && world.is_root()) {
    nlohmann::json model_json = nlohmann::json::parse(std::ifstream(config_path)).at("model");
    if (!teacher_model.empty()) model_json.merge_patch(nlohmann::json::parse(teacher_model));
    const ModelConfig teacher_config =
        ModelConfig::from_json(JsonReader::from_string(model_json.dump(), "teacher"));
    model::Model t(teacher_config);
    t.init_weights(77);
    fs::create_directories(teacher);
    model::save_model(t, model_json.dump(2), teacher);
  }
  world.barrier();
  // One run of the config at `path`: moex train, or moex distill from the teacher.
  auto run_config = [&](const fs::path& path, dist::Communicator* group) {
    if (distill.empty()) return run_training(TrainConfig::from_file(path.string()), "", 0, group);
    return run_distillation(DistillRunConfig::from_file(path.string()), teacher, "", 0, group);
  };
  const TrainResult run = run_config(config_path, &world);
  if (result != nullptr) *result = run;

  if (world.is_root()) {
    const std::string ref_training = R"(, "grad_accum": )" + std::to_string(dp) +
                                     R"(, "steps": 4, "eval_every": 2)" + extra_training;
    run_config(testing::write_config(corpus, ref_out, ref_training, nullptr, "",
                                     kSmallAdamEps + distill_section, extra_model),
               &dist::Communicator::local());

    const testing::Metrics a = testing::read_metrics(out + "/metrics.jsonl");
    const testing::Metrics b = testing::read_metrics(ref_out + "/metrics.jsonl");
    ASSERT_EQ(b.loss.size(), 4u);
    ASSERT_EQ(b.eval.size(), 2u);
    testing::expect_near_rel(a.loss, b.loss, "loss");
    testing::expect_near_rel(a.aux, b.aux, "aux loss");
    testing::expect_near_rel(a.eval, b.eval, "eval loss");
    // The tp checkpoint holds every tensor whole under its Hugging Face name.
    testing::expect_same_checkpoint(out + "/final", ref_out + "/final", kTrainedTolerance);
    fs::remove_all(corpus);
  }
  world.barrier();
}

// tp 2 over the world (np 2: one group; np 4: two, on the same inputs) and a corpus for the
// fixture's configs, for the tests that compare one split model with one whole model directly.
// Every rank makes it; the corpus is removed when it goes.
struct SplitAgainstWhole {
  explicit SplitAgainstWhole(const std::string& name)
      : world(dist::Communicator::world()),
        groups(dist::ProcessGroups::make(
            world, dist::ParallelLayout::map(world.size(), world.rank(), 2, 1))),
        corpus(fs::current_path() / (name + "_np" + std::to_string(world.size()))) {
    if (world.is_root()) testing::make_corpus(corpus);
    world.barrier();
  }
  ~SplitAgainstWhole() {
    world.barrier();
    if (world.is_root()) fs::remove_all(corpus);
  }
  // The fixture's config with `variant`'s model fields.
  TrainConfig config(const std::string& variant) const {
    return TrainConfig::from_file(
        testing::write_config(corpus, (corpus / "unused").string(), "", &world, "", "", variant)
            .string());
  }

  dist::Communicator& world;
  dist::ProcessGroups groups;
  fs::path corpus;
};

// One forward and backward of a tp 2 model against one process on the same batch: the initial
// weights are the same bits (each part draws its elements' numbers of the whole tensor), and the
// loss and every gradient, gathered into the whole tensors, agree to fp32 rounding of the split
// sums' order. This checks the splits' arithmetic directly; the training runs below check the
// whole loop.
TEST(TensorParallel, GradientsEqualTheSingleProcess) {
  const int np = dist::Communicator::world().size();
  ASSERT_TRUE(np == 2 || np == 4) << "run with mpirun -np 2 or 4";
  const SplitAgainstWhole fixture("tp_grads");
  for (const auto& [variant, with_teacher] :
       {std::pair{std::string(), false}, std::pair{std::string(kVariantModel), false},
        std::pair{std::string(), true}, std::pair{std::string(kVariantModel), true}}) {
    SCOPED_TRACE((variant.empty() ? "fixture model" : "variant model") +
                 std::string(with_teacher ? ", distilled" : ""));
    const TrainConfig c = fixture.config(variant);
    model::Model split(c.model, Device::cpu(), nullptr, {fixture.groups.tp.get()});
    model::Model whole(c.model);
    split.init_weights(7);
    whole.init_weights(7);
    const int64_t batch = 2, seq = 16, n = batch * seq;
    std::mt19937 gen(11);  // the same batch on every rank
    std::vector<int32_t> ids(n), targets(n);
    for (int64_t i = 0; i < n; ++i) {
      ids[i] = static_cast<int32_t>(gen() % 40);
      targets[i] = i % 7 == 3 ? -100 : static_cast<int32_t>(gen() % 40);
    }
    model::ForwardOptions opt;
    opt.training = true;
    opt.for_backward = true;
    opt.seed = 5;
    // Knowledge distillation's soft targets from a whole teacher (hidden 24) on every rank: the
    // KD term's vocabulary-parallel statistics must give the single process's loss and gradients.
    const int64_t vocab = c.model.vocab_size, teacher_d = 24;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const Tensor teacher_hidden = Tensor::empty(Shape{n, teacher_d}, DType::kF32);
    const Tensor teacher_head = Tensor::empty(Shape{vocab, teacher_d}, DType::kF32);
    for (const Tensor* t : {&teacher_hidden, &teacher_head})
      for (int64_t i = 0; i < t->numel(); ++i) t->data<float>()[i] = normal(gen);
    const model::SoftTargets soft{teacher_hidden, teacher_head, 2.0, 0.7};
    if (with_teacher) opt.soft_targets = &soft;
    split.zero_grad();
    whole.zero_grad();
    const model::LossResult a = split.forward(ids.data(), targets.data(), batch, seq, opt);
    split.backward();
    split.finish_gradients();
    const model::LossResult b = whole.forward(ids.data(), targets.data(), batch, seq, opt);
    whole.backward();
    EXPECT_NEAR(a.loss, b.loss, 1e-6 * b.loss);
    EXPECT_NEAR(a.aux_loss, b.aux_loss, 1e-6 * b.aux_loss);
    EXPECT_NEAR(a.kd_loss, b.kd_loss, 1e-6 * b.kd_loss);
    if (with_teacher) {
      EXPECT_GT(b.kd_loss, 1e-3);
    }

    const std::map<std::string, Tensor> weights =
        model::gather_named_tensors(split, split.params().flat());
    const std::map<std::string, Tensor> grads =
        model::gather_named_tensors(split, split.grads().flat());
    ASSERT_EQ(static_cast<int>(grads.size()), whole.params().size());
    for (const auto& [name, g] : grads) {
      const int i = whole.params().index_of(name);
      ASSERT_GE(i, 0) << name;
      const Tensor& w_ref = whole.params().tensor(i);
      const Tensor& g_ref = whole.grads().tensor(i);
      ASSERT_EQ(g.shape(), g_ref.shape()) << name;
      EXPECT_EQ(testing::rel_l2(weights.at(name).data<float>(), w_ref.data<float>(), g.numel()),
                0.0)
          << "initial weights of " << name;
      EXPECT_LT(testing::rel_l2(g.data<float>(), g_ref.data<float>(), g.numel()), 1e-5)
          << "gradient of " << name;
    }
  }
}

// Decoding with a KV cache under tp 2 (every rank of the world's first tp group; the others of
// np 4 decode in their own group): Model::logits, the cached step's logits and greedy tokens
// (infer::generate) against one process holding the whole model with the same initial weights.
TEST(TensorParallel, CachedDecodingEqualsTheSingleProcess) {
  const int np = dist::Communicator::world().size();
  ASSERT_TRUE(np == 2 || np == 4) << "run with mpirun -np 2 or 4";
  const SplitAgainstWhole fixture("tp_decode");
  for (const std::string& variant : {std::string(), std::string(kVariantModel)}) {
    SCOPED_TRACE(variant.empty() ? "fixture model" : "variant model");
    const TrainConfig c = fixture.config(variant);
    model::Model split(c.model, Device::cpu(), nullptr, {fixture.groups.tp.get()});
    model::Model whole(c.model);
    split.init_weights(9);
    whole.init_weights(9);
    const int64_t vocab = c.model.vocab_size, batch = 2, seq = 8;
    std::mt19937 gen(13);  // the same ids on every rank
    std::vector<int32_t> ids(batch * seq);
    for (int32_t& id : ids) id = static_cast<int32_t>(gen() % vocab);
    std::vector<float> a(batch * seq * vocab), b(a.size());
    split.logits(ids.data(), batch, seq, a.data());
    whole.logits(ids.data(), batch, seq, b.data());
    EXPECT_LT(testing::rel_l2(a.data(), b.data(), static_cast<int64_t>(a.size())), 1e-5)
        << "Model::logits";

    // A prompt prefilled, then one token at a time through the cache.
    model::KVCache cs = split.make_cache(1, 32), cw = whole.make_cache(1, 32);
    std::vector<float> la(vocab), lb(vocab);
    split.forward_cached(ids.data(), 1, seq, cs, la.data());
    whole.forward_cached(ids.data(), 1, seq, cw, lb.data());
    for (int step = 0; step < 6; ++step) {
      EXPECT_LT(testing::rel_l2(la.data(), lb.data(), vocab), 1e-5) << "cached step " << step;
      const int32_t next = ids[static_cast<size_t>(step)];
      split.forward_cached(&next, 1, 1, cs, la.data());
      whole.forward_cached(&next, 1, 1, cw, lb.data());
    }
    infer::GenerateOptions greedy;
    greedy.max_new_tokens = 12;
    const std::vector<int32_t> prompt(ids.begin(), ids.begin() + seq);
    EXPECT_EQ(infer::generate(split, prompt, greedy), infer::generate(whole, prompt, greedy));
  }
}

// Serving requests under tp: the scheduler on tp rank 0 while the group's other rank mirrors its
// steps (the paged KV cache, chunked prefill, batched decode steps whose ids follow the last step
// on the device, sampling on the device, and a request with log-probabilities, whose steps bring
// the logits to the host). Returns rank 0's tokens and log-probabilities, nothing elsewhere.
struct Served {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<float>> logprobs;
  int64_t followed_steps = 0;  // decode steps that took their ids from the last step on the device
};
Served serve_requests(model::Model& model, const std::vector<std::vector<int32_t>>& prompts) {
  infer::SchedulerOptions options;
  options.max_batch = 3;    // the fourth request waits for a free slot
  options.step_tokens = 8;  // prompts longer than that are prefilled in chunks
  options.block_size = 4;
  options.max_context = 32;  // the variant model's learned positions
  infer::Scheduler scheduler(model, options);
  if (model.tensor_parallel().rank() != 0) {
    scheduler.mirror();
    return {};
  }
  Served out;
  out.tokens.resize(prompts.size());
  out.logprobs.resize(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    infer::Request r;
    r.prompt = prompts[i];
    r.max_tokens = 10;
    if (i % 2 == 1) r.sampling = {0.8, 0, 0.9, 100 + i};  // temperature, top_k, top_p, seed
    if (i == 2) {
      r.logprobs = 2;
      r.on_logprob = [&out, i](const infer::TokenLogprob& p) {
        out.logprobs[i].push_back(p.logprob);
      };
    }
    r.on_token = [&out, i](int32_t t) {
      out.tokens[i].push_back(t);
      return true;
    };
    scheduler.submit(std::move(r));
  }
  while (scheduler.step()) {
  }
  out.followed_steps = scheduler.stats().followed_steps;
  return out;
}

// Serving under tp 2 (moex serve / generate --tp; np 4: each tp group on its own), with whole
// experts and with each expert's width sliced over tp (--expert-slicing): one paged step's logits,
// then a scheduler serving four requests, against one process holding the whole model with the
// same initial weights: logits to 1e-5, tokens exactly, log-probabilities to 1e-4.
TEST(TensorParallel, PagedServingEqualsTheSingleProcess) {
  const int np = dist::Communicator::world().size();
  ASSERT_TRUE(np == 2 || np == 4) << "run with mpirun -np 2 or 4";
  const SplitAgainstWhole fixture("tp_serve");
  for (const auto& [variant, slicing] :
       {std::pair{std::string(), false}, std::pair{std::string(kVariantModel), false},
        std::pair{std::string(), true}, std::pair{std::string(kVariantModel), true}}) {
    SCOPED_TRACE((variant.empty() ? "fixture model" : "variant model") +
                 std::string(slicing ? ", experts sliced" : ""));
    const TrainConfig c = fixture.config(variant);
    model::TensorParallel tp{fixture.groups.tp.get()};
    tp.slice_experts = slicing;
    model::Model split(c.model, Device::cpu(), nullptr, tp);
    model::Model whole(c.model);
    split.init_weights(21);
    whole.init_weights(21);
    const bool root = split.tensor_parallel().rank() == 0;
    const int64_t vocab = c.model.vocab_size;
    std::mt19937 gen(17);  // the same prompts on every rank
    std::vector<std::vector<int32_t>> prompts;
    for (const int len : {5, 13, 3, 21}) {
      std::vector<int32_t> p(static_cast<size_t>(len));
      for (int32_t& id : p) id = static_cast<int32_t>(gen() % vocab);
      prompts.push_back(p);
    }

    // Two prompts in one step, then a decode step of both: every row's logits.
    model::PagedKV kv_split = split.make_paged_kv(8, 4), kv_whole = whole.make_paged_kv(8, 4);
    const std::vector<int32_t> blocks0{0, 1}, blocks1{5, 2};
    std::vector<model::SequenceSlice> prefill{{0, 5, blocks0.data(), 2, false},
                                              {0, 3, blocks1.data(), 2, false}};
    std::vector<int32_t> ids(prompts[0]);
    ids.insert(ids.end(), prompts[2].begin(), prompts[2].end());
    const std::vector<model::SequenceSlice> decode{{5, 1, blocks0.data(), 2, false},
                                                   {3, 1, blocks1.data(), 2, false}};
    const std::vector<int32_t> decode_ids{7, 11};
    if (root) {
      std::vector<float> a(2 * vocab), b(a.size());
      std::vector<int32_t> next_a(2), next_b(2);
      split.forward_paged(ids.data(), prefill, kv_split, a.data(), next_a.data());
      whole.forward_paged(ids.data(), prefill, kv_whole, b.data(), next_b.data());
      EXPECT_LT(testing::rel_l2(a.data(), b.data(), 2 * vocab), 1e-5) << "prefill step";
      EXPECT_EQ(next_a, next_b);
      split.forward_paged(decode_ids.data(), decode, kv_split, a.data());
      whole.forward_paged(decode_ids.data(), decode, kv_whole, b.data());
      EXPECT_LT(testing::rel_l2(a.data(), b.data(), 2 * vocab), 1e-5) << "decode step";
      split.end_mirrored_steps();
    } else {
      split.mirror_paged_steps(kv_split);
    }

    const Served a = serve_requests(split, prompts);
    if (!root) continue;
    const Served b = serve_requests(whole, prompts);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(a.tokens[i].size(), 10u) << "request " << i;
      EXPECT_EQ(a.tokens[i], b.tokens[i]) << "request " << i;
    }
    EXPECT_GT(a.followed_steps, 0);
    ASSERT_EQ(a.logprobs[2].size(), 10u);
    ASSERT_EQ(b.logprobs[2].size(), 10u);
    for (size_t t = 0; t < 10; ++t) EXPECT_NEAR(a.logprobs[2][t], b.logprobs[2][t], 1e-4);
  }
}

// Distillation (moex distill) under tp 2 (np 2) and tp 2 x dp 2 (np 4), on both models: the
// student's vocabulary-parallel KD term against the single process's, with ZeRO 1 on the variant.
// The teacher (the student's shape) is split over the tp ranks like the student: each holds less
// than all of it, and the split layers' parts sum to the whole.
TEST(TensorParallel, DistillationEqualsTheSingleProcessRun) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_TRUE(world.size() == 2 || world.size() == 4) << "run this test with mpirun -np 2 or 4";
  const std::string kd = R"("alpha": 0.5, "temperature": 2.0)";
  TrainResult runs[2], whole;
  check_equals_single_process(2, 1, "", "", 0, "", &runs[0], kd);
  check_equals_single_process(2, 1, kVariantModel, "", 1, "", &runs[1], kd);
  // Student blocks started from the teacher's layers while the student's experts are sliced
  // over tp and the teacher's are whole: each rank copies its part of the gathered teacher.
  check_equals_single_process(2, 1, "", "", 0, R"(, "expert_slicing": true)", nullptr,
                              kd + R"(, "init_from_teacher_layers": [0, 1])");
  // A teacher with one kv head cannot be split over 2 ranks: it stays whole on each. (Under
  // tp 2 x dp 2 its run ended 1e-3 off at Adam eps 1e-8: the eps effect of the header comment.)
  check_equals_single_process(2, 1, "", "", 0, "", &whole, kd, R"({"num_kv_heads": 1})");
  if (!world.is_root()) return;  // rank 0's part (the tp parts are alike in size)
  // Named by the world size: the np 2 and np 4 runs of this test may run at once.
  const fs::path corpus =
      fs::current_path() / ("tp_teacher_size_np" + std::to_string(world.size()));
  testing::make_corpus(corpus);
  for (int variant = 0; variant < 2; ++variant) {
    TrainConfig c =
        TrainConfig::from_file(testing::write_config(corpus, (corpus / "x").string(), "", nullptr,
                                                     "", "", variant ? kVariantModel : "")
                                   .string());
    const int64_t all = model::Model(c.model).params().num_elements();
    EXPECT_GT(runs[variant].teacher_parameters, all / 2) << "variant " << variant;
    EXPECT_LT(runs[variant].teacher_parameters, all) << "variant " << variant;
    if (variant == 0) {
      c.model.num_kv_heads = 1;
      EXPECT_EQ(whole.teacher_parameters, model::Model(c.model).params().num_elements());
    }
  }
  fs::remove_all(corpus);
}

// Distillation under expert parallelism: the teacher's MoE layers hold only this rank's E/ep
// experts, on the student's expert group, and exchange tokens over it in the teacher's forward.
// np 2: ep 2; np 4: ep 2 x edp 2, ep 4, and tp 2 x ep 2 (the teacher split over tp as well). Each
// run equals the single process, and every rank holds exactly what a model of the teacher's shape
// built on its groups holds: less than the whole teacher (under tp 2 x ep 2, less than its tp
// split alone). Student blocks started from a spread teacher's layers take its experts gathered
// over ep (and its parts over tp); that run also stops KD after step 2. A teacher whose expert
// count ep does not divide (3 experts) and one without MoE layers stay whole on every rank, equal
// to the single process too.
TEST(TensorParallel, DistillationUnderExpertParallelismEqualsTheSingleProcessRun) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_TRUE(world.size() == 2 || world.size() == 4) << "run this test with mpirun -np 2 or 4";
  const std::string kd = R"("alpha": 0.5, "temperature": 2.0)";
  // Staged KD too: every rank stops running the teacher after the same step.
  const std::string from_layers =
      kd + R"(, "init_from_teacher_layers": [0, 1], "stop_kd_at_step": 2)";
  const std::string three_experts = R"({"moe": {"num_experts": 3}})";
  const std::string dense = R"({"moe": null})";
  TrainResult ep2, odd, no_moe, ep4, tp_ep;
  check_equals_single_process(1, 2, "", "", 0, "", &ep2, kd);
  check_equals_single_process(1, 2, "", "", 0, "", nullptr, from_layers);
  check_equals_single_process(1, 2, "", "", 0, "", &odd, kd, three_experts);
  check_equals_single_process(1, 2, "", "", 0, "", &no_moe, kd, dense);
  if (world.size() == 4) {
    check_equals_single_process(1, 4, "", "", 0, "", &ep4, kd);
    check_equals_single_process(2, 2, kVariantModel, "", 1, "", &tp_ep, kd);
    check_equals_single_process(2, 2, "", "", 0, "", nullptr, from_layers);
  }

  // What each rank should hold. Named by the world size: the np 2 and np 4 runs of this test may
  // run at once.
  const fs::path corpus =
      fs::current_path() / ("tp_ep_teacher_size_np" + std::to_string(world.size()));
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();
  // (Each model its own out_dir, so its own config file: ranks may still read the first.)
  auto fixture_model = [&](const std::string& variant) {
    const std::string out = (corpus / (variant.empty() ? "fixture" : "variant")).string();
    return TrainConfig::from_file(
        testing::write_config(corpus, out, "", &world, "", "", variant).string());
  };
  // A teacher's model: the fixture's with a merge patch.
  auto patched = [](const TrainConfig& c, const std::string& patch) {
    nlohmann::json j = nlohmann::json::parse(c.model_json);
    j.merge_patch(nlohmann::json::parse(patch));
    return ModelConfig::from_json(JsonReader::from_string(j.dump(), "teacher"));
  };
  // The parameters this rank holds of a model built on the groups of tp x ep (every rank calls it).
  auto held = [&](const ModelConfig& m, int tp, int ep) {
    const dist::ProcessGroups g = dist::ProcessGroups::make(
        world, dist::ParallelLayout::map(world.size(), world.rank(), tp, ep));
    const model::TensorParallel split =
        tp > 1 ? model::TensorParallel{g.tp.get()} : model::TensorParallel{};
    return model::Model(m, Device::cpu(), ep > 1 ? g.ep.get() : nullptr, split)
        .params()
        .num_elements();
  };
  const TrainConfig fixture = fixture_model("");
  const int64_t all = model::Model(fixture.model).params().num_elements();
  EXPECT_EQ(ep2.teacher_parameters, held(fixture.model, 1, 2));
  EXPECT_LT(ep2.teacher_parameters, all);
  EXPECT_EQ(odd.teacher_parameters,
            model::Model(patched(fixture, three_experts)).params().num_elements());
  EXPECT_EQ(no_moe.teacher_parameters,
            model::Model(patched(fixture, dense)).params().num_elements());
  if (world.size() == 4) {
    EXPECT_EQ(ep4.teacher_parameters, held(fixture.model, 1, 4));
    EXPECT_LT(ep4.teacher_parameters, ep2.teacher_parameters);
    const TrainConfig variant = fixture_model(kVariantModel);
    EXPECT_EQ(tp_ep.teacher_parameters, held(variant.model, 2, 2));
    EXPECT_LT(tp_ep.teacher_parameters, held(variant.model, 2, 1));
  }
  world.barrier();
  if (world.is_root()) fs::remove_all(corpus);
}

// The layouts the world size allows: tp 2 alone at np 2; tp 2 x dp 2 and tp 2 x ep 2 at np 4.
TEST(TensorParallel, LayoutsEqualTheSingleProcessRun) {
  const int world = dist::Communicator::world().size();
  ASSERT_TRUE(world == 2 || world == 4) << "run this test with mpirun -np 2 or 4";
  const std::string checkpointing = R"(, "activation_checkpointing": true)";
  for (const std::string& model : {std::string(), std::string(kVariantModel)}) {
    SCOPED_TRACE(model.empty() ? "fixture model" : "variant model");
    // np 4: tp 2 x dp 2. Whole experts: nothing is all-reduced in the MoE layer.
    TrainResult whole;
    check_equals_single_process(2, 1, model, "", 0, "", &whole);
    EXPECT_EQ(whole.exchange.slice_reduce_bytes, 0);
    if (world == 4) check_equals_single_process(2, 2, model);  // tp 2 x ep 2
  }
  SCOPED_TRACE("activation checkpointing");
  check_equals_single_process(2, world == 4 ? 2 : 1, "", checkpointing);
  // ZeRO over the dp group of each tp rank (np 2: dp 1, one shard), 1,000-element tiles.
  for (const int stage : {1, 2}) {
    SCOPED_TRACE("ZeRO stage " + std::to_string(stage));
    check_equals_single_process(2, 1, kVariantModel, "", stage);
  }
}

// Expert tensor-slicing: each expert's hidden width split over the tp ranks too (np 2: tp 2;
// np 4: tp 2 x dp 2, tp 2 x ep 2 with and without DTD, with checkpointing and CAC, and ZeRO 2).
TEST(TensorParallel, ExpertSlicingEqualsTheSingleProcessRun) {
  const int world = dist::Communicator::world().size();
  ASSERT_TRUE(world == 2 || world == 4) << "run this test with mpirun -np 2 or 4";
  const std::string slicing = R"(, "expert_slicing": true)";
  // The all-reduced expert rows: none without slicing (the figure in docs/parallelism.md).
  TrainResult sliced;
  check_equals_single_process(2, 1, "", "", 0, slicing, &sliced);
  EXPECT_GT(sliced.exchange.slice_reduce_bytes, 0);
  if (dist::Communicator::world().is_root())
    std::printf("[slicing] np %d tp 2: expert rows all-reduced over tp, rank 0: %lld bytes\n",
                world, static_cast<long long>(sliced.exchange.slice_reduce_bytes));
  check_equals_single_process(2, 1, kVariantModel, "", 2, slicing);
  if (world != 4) return;
  check_equals_single_process(2, 2, "", "", 0, slicing);
  check_equals_single_process(2, 2, kVariantModel, "", 0, slicing + R"(, "dtd": true)");
  check_equals_single_process(2, 2, "", R"(, "activation_checkpointing": true)", 0,
                              slicing + R"(, "dtd": true, "cac": true)");
}

// Duplicate Token Dropping (tp 2 x ep 2, np 4) only changes how the expert rows travel: the runs
// with it on and off give the same losses and the same final weights and moments (tolerance 0),
// with activation checkpointing and CAC too, while each rank sends fewer all-to-all bytes (about
// half; the rest goes through the all-gather over tp). At np 2 no layout has tp and ep > 1.
TEST(TensorParallel, DuplicateTokenDroppingChangesNoNumber) {
  dist::Communicator& world = dist::Communicator::world();
  if (world.size() != 4) {
    ASSERT_EQ(world.size(), 2) << "run with mpirun -np 2 or 4";
    return;
  }
  const fs::path corpus = fs::current_path() / "tp_dtd_np4";
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();
  for (const bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "activation checkpointing and CAC" : "plain");
    // No evaluation: its forwards exchange too.
    const std::string training = std::string(R"(, "grad_accum": 1, "steps": 3, "eval_every": 0)") +
                                 (checkpointing ? R"(, "activation_checkpointing": true)" : "");
    const std::string extra = checkpointing ? R"(, "cac": true)" : "";
    TrainResult runs[2];
    for (const bool dtd : {false, true}) {
      const std::string out =
          (corpus / (std::string(dtd ? "on" : "off") + (checkpointing ? "_ckpt" : ""))).string();
      const std::string parallel = std::string(R"(, "parallel": {"tp": 2, "ep": 2, "dtd": )") +
                                   (dtd ? "true" : "false") + extra + "}";
      runs[dtd] = run_training(
          TrainConfig::from_file(
              testing::write_config(corpus, out, training, &world, "", parallel).string()),
          "", 0, &world);
    }
    const moe::ExchangeStats& off = runs[0].exchange;
    const moe::ExchangeStats& on = runs[1].exchange;
    EXPECT_EQ(on.exchanges, off.exchanges);
    EXPECT_EQ(off.gather_bytes_sent, 0);
    EXPECT_GT(on.gather_bytes_sent, 0);
    EXPECT_LT(on.bytes_sent, off.bytes_sent);
    EXPECT_GT(2 * on.bytes_sent + 64 * 32 * 4, off.bytes_sent);  // half, up to a row per block
    if (checkpointing) {  // CAC saves the recompute's two exchanges, as many bytes as the
                          // backward's
      EXPECT_EQ(off.bytes_sent, 2 * off.bytes_saved);
      EXPECT_EQ(on.bytes_sent, 2 * on.bytes_saved) << "under DTD the saved bytes are shares too";
    }
    if (world.is_root())  // the figures in docs/parallelism.md
      std::printf("[dtd]%s rank 0: all-to-all bytes %lld off, %lld on; all-gather bytes %lld\n",
                  checkpointing ? " checkpointing+cac" : "", static_cast<long long>(off.bytes_sent),
                  static_cast<long long>(on.bytes_sent),
                  static_cast<long long>(on.gather_bytes_sent));
    if (world.is_root()) {
      const std::string suffix = checkpointing ? "_ckpt" : "";
      const testing::Metrics a =
          testing::read_metrics((corpus / ("on" + suffix)).string() + "/metrics.jsonl");
      const testing::Metrics b =
          testing::read_metrics((corpus / ("off" + suffix)).string() + "/metrics.jsonl");
      testing::expect_near_rel(a.loss, b.loss, "loss", 0.0);
      testing::expect_near_rel(a.aux, b.aux, "aux loss", 0.0);
      testing::expect_same_checkpoint((corpus / ("on" + suffix)).string() + "/final",
                                      (corpus / ("off" + suffix)).string() + "/final", 0.0);
    }
    world.barrier();
  }
  if (world.is_root()) fs::remove_all(corpus);
  world.barrier();
}

// A checkpoint written under tp 2 holds whole tensors: it resumes single-process and under
// another layout (np 4: tp 2 x ep 2) with the same result, also with the experts sliced over tp
// in the resumed run (which loads its slices and saves them whole again).
TEST(TensorParallel, CheckpointMovesBetweenLayouts) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  for (const bool slicing : {false, true}) {
    SCOPED_TRACE(slicing ? "resumed with expert slicing" : "plain");
    const fs::path corpus = fs::current_path() / ("tp_resume_np" + std::to_string(world.size()) +
                                                  (slicing ? "_sliced" : ""));
    if (world.is_root()) testing::make_corpus(corpus);
    world.barrier();
    // Both layouts keep dp = world / 2, so the single-process reference has grad_accum dp.
    const int dp = world.size() / 2, resume_ep = world.size() >= 4 ? 2 : 1;
    const std::string training = R"(, "grad_accum": 1, "steps": 4, "eval_every": 0)";
    auto parallel = [](int ep, bool sliced) {
      return R"(, "parallel": {"tp": 2, "ep": )" + std::to_string(ep) +
             (sliced ? R"(, "expert_slicing": true})" : "}");
    };
    const std::string first_out = (corpus / "first").string(), tp_out = (corpus / "tp").string(),
                      ref_out = (corpus / "ref").string();
    const TrainConfig first = TrainConfig::from_file(
        testing::write_config(corpus, first_out, training, &world, "",
                              parallel(1, false) + kSmallAdamEps, kVariantModel)
            .string());
    run_training(first, "", 2, &world);  // two steps, then a "latest" checkpoint
    const std::string saved = first_out + "/latest";

    const TrainConfig resumed = TrainConfig::from_file(
        testing::write_config(corpus, tp_out, training, &world, "",
                              parallel(resume_ep, slicing) + kSmallAdamEps, kVariantModel)
            .string());
    run_training(resumed, saved, 0, &world);

    if (world.is_root()) {
      const TrainConfig ref =
          TrainConfig::from_file(testing::write_config(corpus, ref_out,
                                                       R"(, "grad_accum": )" + std::to_string(dp) +
                                                           R"(, "steps": 4, "eval_every": 0)",
                                                       nullptr, "", kSmallAdamEps, kVariantModel)
                                     .string());
      run_training(ref, saved, 0, &dist::Communicator::local());
      const testing::Metrics a = testing::read_metrics(tp_out + "/metrics.jsonl");
      const testing::Metrics b = testing::read_metrics(ref_out + "/metrics.jsonl");
      ASSERT_EQ(b.loss.size(), 2u);  // steps 3 and 4
      testing::expect_near_rel(a.loss, b.loss, "loss after resuming");
      testing::expect_same_checkpoint(tp_out + "/final", ref_out + "/final", kTrainedTolerance);
      fs::remove_all(corpus);
    }
    world.barrier();
  }
}

// A checkpoint is checked against the whole tensors, not this rank's parts: a model with half the
// expert width has exactly the shape of a sliced rank's experts, and must still be refused.
// On the GPU every slice must be a multiple of 8 wide: the fixture's experts (24) over tp 2 give
// 12, an error naming the field before any GPU work (so it holds on a build without CUDA too).
TEST(TensorParallel, GpuExpertSlicesNarrowerThanTheKernelsAreRefused) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const fs::path corpus = fs::current_path() / ("tp_gpu_slice_np" + std::to_string(world.size()));
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();
  const fs::path config = testing::write_config(
      corpus, (corpus / "out").string(), R"(, "device": "cuda", "grad_accum": 1, "steps": 1)",
      &world, "", R"(, "parallel": {"tp": 2, "expert_slicing": true})");
  std::string error;
  try {
    run_training(TrainConfig::from_file(config.string()), "", 0, &world);
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("parallel.expert_slicing on the GPU needs each rank's slice of an expert "
                       "a multiple of 8 wide; layer 1's ffn_size 24 / tp 2 is 12"),
            std::string::npos)
      << error;
  world.barrier();
  if (world.is_root()) fs::remove_all(corpus);
}

TEST(TensorParallel, ACheckpointOfHalfTheExpertWidthIsRefusedUnderSlicing) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const fs::path corpus = fs::current_path() / ("tp_width_np" + std::to_string(world.size()));
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();
  const std::string training = R"(, "grad_accum": 1, "steps": 2, "eval_every": 0)";
  const std::string small_out = (corpus / "small").string();
  if (world.is_root())  // experts of width 24 (the fixture's), one process
    run_training(TrainConfig::from_file(
                     testing::write_config(corpus, small_out, training, nullptr).string()),
                 "", 0, &dist::Communicator::local());
  world.barrier();
  // The same model with experts of width 48, sliced over tp 2: 24 columns a rank.
  const fs::path config =
      testing::write_config(corpus, (corpus / "wide").string(), training, &world, "",
                            R"(, "parallel": {"tp": 2, "expert_slicing": true})");
  if (world.is_root()) {
    std::ifstream in(config);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string from = R"("ffn_size": 24)", to = R"("ffn_size": 48)";
    ASSERT_NE(text.find(from), std::string::npos);
    text.replace(text.find(from), from.size(), to);
    std::ofstream(config.string() + ".tmp") << text;
    fs::rename(config.string() + ".tmp", config);
  }
  world.barrier();
  std::string error;
  try {
    run_training(TrainConfig::from_file(config.string()), small_out + "/final", 0, &world);
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("tensor 'model.layers.1.mlp.experts.gate_up_proj' has shape [4, 48, 32], "
                       "the model expects [4, 96, 32]"),
            std::string::npos)
      << error;
  world.barrier();
  if (world.is_root()) fs::remove_all(corpus);
}

}  // namespace
}  // namespace moex::train
