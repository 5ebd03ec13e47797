// Run under mpirun with several ranks (see CMakeLists.txt): data-parallel training must equal the
// single-process run on the same global batch. With W ranks and grad_accum A, every step covers
// A x W micro-batches; the reference is one process with grad_accum A x W (same micro-batches, same
// router RNG streams, same loss scaling), so losses and final weights agree up to the rounding of
// the gradient sum's order.
#include <gtest/gtest.h>

#include <cmath>

#include "model/model_io.h"
#include "train/trainer.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

TEST(DataParallel, EqualsTheSingleProcessRunOnTheSameGlobalBatch) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  // One directory per world size: the np 2 and np 4 runs of this test may run at once.
  const fs::path corpus = fs::current_path() / ("dp_test_corpus_np" + std::to_string(world.size()));
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();

  const int64_t ranks = world.size();
  const std::string dp_out = (corpus / "dp").string(), ref_out = (corpus / "ref").string();
  const TrainConfig dp = TrainConfig::from_file(
      testing::write_config(corpus, dp_out, R"(, "grad_accum": 1, "steps": 6, "eval_every": 0)",
                            &world)
          .string());
  run_training(dp, "", 0, &world);

  if (world.is_root()) {
    const TrainConfig ref =
        TrainConfig::from_file(testing::write_config(corpus, ref_out,
                                                     R"(, "grad_accum": )" + std::to_string(ranks) +
                                                         R"(, "steps": 6, "eval_every": 0)")
                                   .string());
    run_training(ref, "", 0, &dist::Communicator::local());

    const std::vector<double> a = testing::losses_of(dp_out + "/metrics.jsonl");
    const std::vector<double> b = testing::losses_of(ref_out + "/metrics.jsonl");
    ASSERT_EQ(a.size(), 6u);
    ASSERT_EQ(b.size(), 6u);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(a[i], b[i], 1e-5 * std::fabs(b[i])) << "step " << i + 1;

    auto dp_model = model::load_model(dp_out + "/final");
    auto ref_model = model::load_model(ref_out + "/final");
    const float* p = dp_model->params().flat().data<float>();
    const float* q = ref_model->params().flat().data<float>();
    double num = 0, den = 0;
    for (int64_t i = 0; i < dp_model->params().flat().numel(); ++i) {
      num += (p[i] - q[i]) * static_cast<double>(p[i] - q[i]);
      den += static_cast<double>(q[i]) * q[i];
    }
    EXPECT_LT(std::sqrt(num / den), 1e-5) << "final weights differ";
    fs::remove_all(corpus);
  }
  world.barrier();
}

}  // namespace
}  // namespace moex::train
