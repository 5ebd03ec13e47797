// Run under mpirun with 2 and 4 ranks: training.init_from under tensor and expert parallelism
// (tp 2 x ep 2 where 4 ranks allow it) starts from the Hugging Face fixture's weights, each rank
// holding its parts: the losses equal the single process's on the same global batch (grad_accum
// = dp), the first one before any update.
#include <gtest/gtest.h>

#include <filesystem>

#include "train/trainer.h"
#include "train_compare.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

// The Qwen3-MoE fixture: 4 heads, 2 kv heads, 8 experts, vocab 128; tp 2 and ep 2 divide them.
const fs::path kFixture =
    fs::path(__FILE__).parent_path().parent_path() / "fixtures/hf/qwen3_moe/model";

std::string init_config(const fs::path& corpus, const std::string& out, int grad_accum,
                        const std::string& parallel, dist::Communicator* group) {
  const fs::path path = corpus / ("init_" + fs::path(out).filename().string() + ".json");
  if (group == nullptr || group->is_root())
    std::ofstream(path) << R"({"data": {"path": ")" + corpus.string() + R"(", "seq_len": 16},
      "optimizer": {"lr": 0.003},
      "training": {"steps": 3, "micro_batch_size": 4, "grad_accum": )" +
                               std::to_string(grad_accum) + R"(, "log_every": 1,
                   "eval_every": 0, "out_dir": ")" + out + R"(", "init_from": ")" +
                               kFixture.string() + R"("})" + parallel + "}";
  if (group) group->barrier();
  return path.string();
}

TEST(InitFromParallel, StartsFromTheSingleProcessLoss) {
  dist::Communicator& world = dist::Communicator::world();
  const int tp = 2, ep = world.size() >= 4 ? 2 : 1;
  const int dp = world.size() / tp;
  const fs::path corpus = fs::current_path() / ("init_from_np" + std::to_string(world.size()));
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();
  const std::string par_out = (corpus / "par").string(), ref_out = (corpus / "ref").string();
  const std::string parallel = R"(, "parallel": {"tp": )" + std::to_string(tp) + R"(, "ep": )" +
                               std::to_string(ep) + "}";
  run_training(TrainConfig::from_file(init_config(corpus, par_out, 1, parallel, &world)), "", 0,
               &world);
  if (world.is_root()) {
    run_training(TrainConfig::from_file(init_config(corpus, ref_out, dp, "", nullptr)), "", 0,
                 &dist::Communicator::local());
    const testing::Metrics a = testing::read_metrics(par_out + "/metrics.jsonl");
    const testing::Metrics b = testing::read_metrics(ref_out + "/metrics.jsonl");
    ASSERT_EQ(b.loss.size(), 3u);
    testing::expect_near_rel(a.loss, b.loss, "loss");
    testing::expect_same_checkpoint(par_out + "/final", ref_out + "/final", 1e-4, 1e-3);
  }
  world.barrier();
}

}  // namespace
}  // namespace moex::train
