// The "parallel" object of a training config: defaults, and one clear error naming the file and
// field for every size the model cannot be split by (experts per MoE layer for ep, heads and FFN
// widths for tp) and for unknown fields.
#include <gtest/gtest.h>

#include <fstream>
#include <optional>

#include "core/error.h"
#include "train/train_config.h"
#include "train/trainer.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

class ParallelConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("moex_parallel_config_" +
            std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The fixture's config (4 experts in layer 1, 4 heads, 2 kv heads, ffn 48, expert ffn 24)
  // with `parallel` as the "parallel" object and `training` added to the "training" object.
  fs::path config_with(const std::string& parallel, const std::string& training = "") {
    return testing::write_config(dir_, (dir_ / "out").string(), training, nullptr, "",
                                 R"(, "parallel": )" + parallel);
  }
  // The error of loading `path`, or "" when it loads.
  static std::string error_of(const fs::path& path) {
    try {
      TrainConfig::from_file(path.string());
    } catch (const Error& e) {
      return e.message();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(ParallelConfigTest, AbsentMeansOneReplicaPerRank) {
  const fs::path path = testing::write_config(dir_, (dir_ / "out").string(), "");
  const TrainConfig c = TrainConfig::from_file(path.string());
  EXPECT_EQ(c.parallel.tp, 1);
  EXPECT_EQ(c.parallel.ep, 1);
  EXPECT_EQ(c.parallel.zero_stage, 0);
  EXPECT_EQ(c.parallel.tile_elements, int64_t{1} << 24);
  EXPECT_FALSE(c.parallel.offload || c.parallel.dtd || c.parallel.cac ||
               c.parallel.expert_slicing || c.parallel.shard_master.has_value());
  EXPECT_FALSE(shards_master(c));
}

// parallel.shard_master unset: on for GPU ranks under ZeRO (training.device or --device), off on
// the CPU, without ZeRO and with a bf16 master (no fp32 master to shard); a given value stands.
TEST_F(ParallelConfigTest, MasterIsShardedByDefaultOnGpuRanksUnderZero) {
  TrainConfig c = TrainConfig::from_file(config_with(R"({"zero_stage": 2})").string());
  EXPECT_FALSE(shards_master(c));  // the CPU
  c.training.device = Device::cuda();
  EXPECT_TRUE(shards_master(c));
  c.optimizer.master_dtype = DType::kBF16;
  EXPECT_FALSE(shards_master(c));
  c.optimizer.master_dtype = DType::kF32;
  c.parallel.zero_stage = 0;
  EXPECT_FALSE(shards_master(c));
  TrainConfig off =
      TrainConfig::from_file(config_with(R"({"zero_stage": 1, "shard_master": false})").string());
  off.training.device = Device::cuda();
  EXPECT_FALSE(shards_master(off));
}

TEST_F(ParallelConfigTest, ReadsEveryField) {
  const TrainConfig c = TrainConfig::from_file(
      config_with(R"({"tp": 2, "ep": 4, "zero_stage": 2, "tile_elements": 1000,
                      "offload": true, "dtd": true, "cac": true, "expert_slicing": true})",
                  R"(, "activation_checkpointing": true)")
          .string());
  EXPECT_EQ(c.parallel.tp, 2);
  EXPECT_EQ(c.parallel.ep, 4);
  EXPECT_EQ(c.parallel.zero_stage, 2);
  EXPECT_EQ(c.parallel.tile_elements, 1000);
  EXPECT_TRUE(c.parallel.offload && c.parallel.dtd && c.parallel.cac && c.parallel.expert_slicing);
  const TrainConfig sharded =
      TrainConfig::from_file(config_with(R"({"zero_stage": 1, "shard_master": true})").string());
  EXPECT_EQ(sharded.parallel.shard_master, std::optional<bool>(true));
}

TEST_F(ParallelConfigTest, ExpertsNotDivisibleByEpIsAnError) {
  const fs::path path = config_with(R"({"ep": 3})");
  EXPECT_EQ(error_of(path), path.string() +
                                ": parallel.ep is 3, which does not divide the number of experts "
                                "of layer 1 (4)");
}

TEST_F(ParallelConfigTest, EveryMoELayerOfAPyramidIsChecked) {
  const fs::path path = dir_ / "pyramid.json";
  std::ofstream(path) << R"({
    "model": {"vocab_size": 40, "hidden_size": 32, "num_layers": 4, "num_heads": 4,
              "max_seq_len": 32, "ffn_size": 48,
              "moe": {"layer_freq": 2, "num_experts": [4, 6], "top_k": 1, "ffn_size": 24}},
    "data": {"path": "corpus", "seq_len": 16},
    "parallel": {"ep": 4}})";
  EXPECT_EQ(error_of(path), path.string() +
                                ": parallel.ep is 4, which does not divide the number of experts "
                                "of layer 3 (6)");
}

TEST_F(ParallelConfigTest, TensorParallelMustDivideHeadsAndWidths) {
  fs::path path = config_with(R"({"tp": 3})");
  EXPECT_EQ(error_of(path),
            path.string() + ": parallel.tp is 3, which does not divide model.num_heads (4)");
  path = config_with(R"({"tp": 4})");  // 4 heads, but 2 kv heads
  EXPECT_EQ(error_of(path),
            path.string() + ": parallel.tp is 4, which does not divide model.num_kv_heads (2)");
  // Vocabulary 40 splits over 2, not 3 (a model with 6 heads and 3 kv heads allows tp 3 there).
  path = testing::write_config(dir_, (dir_ / "out").string(), "", nullptr, "",
                               R"(, "parallel": {"tp": 3})",
                               R"(, "num_heads": 6, "num_kv_heads": 3, "hidden_size": 36)");
  EXPECT_EQ(error_of(path),
            path.string() + ": parallel.tp is 3, which does not divide model.vocab_size (40)");
  path = testing::write_config(dir_, (dir_ / "out").string(), "", nullptr, "",
                               R"(, "parallel": {"tp": 2})", R"(, "qk_norm": "full")");
  EXPECT_NE(error_of(path).find(path.string() + ": parallel.tp must be 1 for a q/k norm over the "
                                                "whole projection"),
            std::string::npos)
      << error_of(path);
  // The MoE layers stay whole: an expert width that tp does not divide is fine, unless the
  // experts are sliced over tp.
  path = testing::write_config(dir_, (dir_ / "out").string(), "", nullptr, R"(, "ffn_size": 25)",
                               R"(, "parallel": {"tp": 2})");
  EXPECT_EQ(error_of(path), "");
  path = testing::write_config(dir_, (dir_ / "out").string(), "", nullptr, R"(, "ffn_size": 25)",
                               R"(, "parallel": {"tp": 2, "expert_slicing": true})");
  EXPECT_EQ(error_of(path), path.string() +
                                ": parallel.expert_slicing splits each expert's ffn_size over tp "
                                "= 2, which does not divide layer 1's (25)");
}

TEST_F(ParallelConfigTest, ExpertSlicingNeedsTensorParallelism) {
  fs::path path = config_with(R"({"expert_slicing": true})");
  EXPECT_EQ(error_of(path), path.string() +
                                ": parallel.expert_slicing needs parallel.tp > 1 (it "
                                "splits each expert over the tp ranks)");
  path = config_with(R"({"tp": 2, "expert_slicing": true})");
  EXPECT_EQ(error_of(path), "");
}

// CAC changes only what a checkpointed recompute exchanges under ep: set where it cannot act, it
// is an error rather than a silent no-op.
TEST_F(ParallelConfigTest, CacNeedsCheckpointingAndExpertParallelism) {
  fs::path path = config_with(R"({"ep": 2, "cac": true})");
  EXPECT_EQ(error_of(path),
            path.string() + ": parallel.cac needs training.activation_checkpointing");
  path = config_with(R"({"cac": true})", R"(, "activation_checkpointing": true)");
  EXPECT_EQ(error_of(path), path.string() +
                                ": parallel.cac needs parallel.ep > 1 (without expert parallelism "
                                "there is no all-to-all)");
  path = config_with(R"({"ep": 2, "cac": true})", R"(, "activation_checkpointing": true)");
  EXPECT_EQ(error_of(path), "");
}

TEST_F(ParallelConfigTest, BadValuesAndUnknownFieldsAreErrors) {
  fs::path path = config_with(R"({"ep": 0})");
  EXPECT_EQ(error_of(path), path.string() + ": parallel.ep must be >= 1");
  path = config_with(R"({"zero_stage": 3})");
  EXPECT_EQ(error_of(path),
            path.string() + ": parallel.zero_stage must be 0, 1 or 2 (stage 3 is not built)");
  path = config_with(R"({"zero_stage": 1, "tile_elements": 0})");
  EXPECT_EQ(error_of(path), path.string() + ": parallel.tile_elements must be >= 1");
  // shard_master shards ZeRO's master: without ZeRO there is none.
  path = config_with(R"({"shard_master": true})");
  EXPECT_EQ(error_of(path), path.string() +
                                ": parallel.shard_master needs parallel.zero_stage 1 or 2 (it "
                                "shards ZeRO's fp32 master, on the GPUs or with offload on the "
                                "hosts)");
  path = config_with(R"({"pp": 2})");
  EXPECT_NE(error_of(path).find("parallel.pp"), std::string::npos) << error_of(path);
}

}  // namespace
}  // namespace moex::train
