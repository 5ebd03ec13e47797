// Run under mpirun with 2 and 4 ranks: parallel.overlap_comm hands each block's gradients to the
// data-parallel sums as soon as the block's backward has made them (the step's last backward, or
// every micro-batch under ZeRO stage 2) instead of after backward. Every layout with it on must
// equal the single-process run on the same global batch (losses and eval losses within 1e-5
// relative, final weights and Adam moments within 1e-5 relative L2), with two micro-batches per
// rank on an 8-layer model, so the blocks' sums start while earlier micro-batches' gradients sit
// in the buffer (no ZeRO, stage 1) or the window (stage 2). Stage 2 holds one bucket's staging
// more for it: exactly the partitions' staging_bytes over the run without overlap.
#include <gtest/gtest.h>

#include "train/trainer.h"
#include "train_compare.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

using testing::expect_near_rel;
using testing::expect_same_checkpoint;
using testing::read_metrics;

// A deeper fixture model, and the variant whose q/k norm weights hold tp-partial gradients (summed
// over tp as their block is handed over), with tied embeddings and learned positions in the edge
// buckets.
constexpr const char* kDeep = R"(, "num_layers": 8)";
constexpr const char* kVariant =
    R"(, "num_layers": 8, "qk_norm": "per_head", "qkv_bias": true, "tie_embeddings": true,
       "positions": "learned")";
// Adam's eps is 1e-12 in every run, not the default 1e-8: Adam moves an element by
// lr * g / (|g| + eps), so one whose gradient is near eps moves by lr times about its gradient's
// relative error, and fp32 rounding of the split sums is a large relative error of a near-zero
// gradient. At 1e-8 the variant's last attention layer ended its moments 3e-4 relative L2 off
// under tp 2 (np 2 and 4): one k_proj element's step-1 gradient, 1.7e-8 of the tensor's 3.7e-3
// at most, was 2% (3e-10) larger, the step's gradients agreeing to 1e-6; the weight it moved by
// 2.4e-5 changed the layer's later gradients. At 1e-12 every tensor agrees to 3e-6.
const std::string kOptimizer = R"(, "optimizer": {"lr": 0.01, "grad_clip": 1.0, "eps": 1e-12})";

struct Layout {
  int tp = 1, ep = 1, zero_stage = 0;
  const char* model = kDeep;
  std::string name() const {
    return "tp" + std::to_string(tp) + "_ep" + std::to_string(ep) + "_zero" +
           std::to_string(zero_stage) + (model == kDeep ? "" : "_variant");
  }
};

std::string parallel(const Layout& l, bool overlap) {
  return R"(, "parallel": {"tp": )" + std::to_string(l.tp) + R"(, "ep": )" + std::to_string(l.ep) +
         R"(, "zero_stage": )" + std::to_string(l.zero_stage) +
         R"(, "tile_elements": 1000, "overlap_comm": )" + (overlap ? "true" : "false") + "}";
}

// The layouts the world size allows, each with overlap on (and stage 2 also off, for its memory).
TEST(OverlappedReductions, EveryLayoutEqualsTheSingleProcessRun) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_TRUE(world.size() == 2 || world.size() == 4) << "run this test with mpirun -np 2 or 4";
  const int n = world.size();
  // Named by the world size: the np 2 and np 4 runs of this test may run at once.
  const fs::path corpus = fs::current_path() / ("overlap_test_np" + std::to_string(n));
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();

  std::vector<Layout> layouts = {{1, 1, 0}, {1, 1, 1}, {1, 1, 2}, {1, 2, 0}, {1, 2, 2}};
  if (n == 4) {
    layouts.push_back({2, 1, 0, kVariant});  // tp 2 x dp 2
    layouts.push_back({2, 1, 2, kVariant});
    layouts.push_back({1, 2, 1});  // ep 2 x edp 2
  }
  // The references: one process with the same micro-batches, grad_accum = 2 x dp, per model and
  // dp (the deep model's at dp = world size, the variant's under tp 2).
  const std::string training = R"(, "grad_accum": 2, "steps": 3, "eval_every": 3)";
  auto reference = [&](const Layout& l) {
    return (corpus / ("ref_dp" + std::to_string(n / l.tp) + (l.model == kDeep ? "" : "_variant")))
        .string();
  };
  for (const Layout& layout : layouts) {
    const std::string out = reference(layout);
    if (!world.is_root() || fs::exists(out)) continue;
    const std::string ref_training = R"(, "grad_accum": )" + std::to_string(2 * n / layout.tp) +
                                     R"(, "steps": 3, "eval_every": 3)";
    run_training(TrainConfig::from_file(testing::write_config(corpus, out, ref_training, nullptr,
                                                              "", kOptimizer, layout.model)
                                            .string()),
                 "", 0, &dist::Communicator::local());
  }
  world.barrier();

  for (const Layout& layout : layouts) {
    SCOPED_TRACE(layout.name());
    const std::string out = (corpus / layout.name()).string(), plain_out = out + "_plain";
    auto run = [&](const std::string& dir, bool overlap) {
      return run_training(
          TrainConfig::from_file(testing::write_config(corpus, dir, training, &world, "",
                                                       parallel(layout, overlap) + kOptimizer,
                                                       layout.model)
                                     .string()),
          "", 0, &world);
    };
    const TrainResult overlapped = run(out, true), plain = run(plain_out, false);
    if (layout.zero_stage == 2) {
      // Each kind's partition keeps [g * s] + [s] floats for its largest slice s (g its group's
      // size; exact in ZeroPartition's own test).
      EXPECT_GT(overlapped.gradient_bytes, plain.gradient_bytes);
    } else {
      EXPECT_EQ(overlapped.gradient_bytes, plain.gradient_bytes);
    }
    if (world.is_root()) {
      const std::string ref = reference(layout);
      const testing::Metrics a = read_metrics(out + "/metrics.jsonl");
      const testing::Metrics b = read_metrics(ref + "/metrics.jsonl");
      ASSERT_EQ(b.loss.size(), 3u);
      expect_near_rel(a.loss, b.loss, "loss");
      expect_near_rel(a.aux, b.aux, "aux loss");
      expect_near_rel(a.eval, b.eval, "eval loss");
      expect_same_checkpoint(out + "/final", ref + "/final");
      // Groups of two sum a + b whichever way: the same numbers as without overlap.
      if (n / layout.tp == 2) {
        expect_near_rel(a.loss, read_metrics(plain_out + "/metrics.jsonl").loss, "loss", 0);
        expect_same_checkpoint(out + "/final", plain_out + "/final", 0);
      }
    }
    world.barrier();
  }
  if (world.is_root()) fs::remove_all(corpus);
  world.barrier();
}

}  // namespace
}  // namespace moex::train
