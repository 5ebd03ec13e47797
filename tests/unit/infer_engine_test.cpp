// The public API (include/moex/moex.h) alone: load a Hugging Face Mixtral fixture, score it and
// generate greedily; the continuation must equal transformers' (recorded in the fixture).
#include <gtest/gtest.h>

#include "io/safetensors.h"
#include "moex/moex.h"

namespace {

TEST(Engine, LoadsScoresAndGeneratesLikeTransformers) {
  const std::string dir = std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/hf/mixtral";
  const auto fx = moex::io::SafetensorsFile::open(dir + "/fixture.safetensors");
  const moex::Tensor ids = fx.copy("input_ids");  // [B, T] int32
  const moex::Tensor greedy = fx.copy("greedy");  // [B, T + new] int32
  const int64_t seq = ids.dim(1), total = greedy.dim(1);

  std::unique_ptr<moex::Engine> engine = moex::Engine::load(dir + "/model");
  EXPECT_GT(engine->vocab_size(), 0);
  const std::vector<int32_t> prompt(ids.data<int32_t>(), ids.data<int32_t>() + seq);
  const moex::Score s = engine->score(prompt);
  EXPECT_GT(s.loss, 0.0);

  moex::GenerateParams params;
  params.max_new_tokens = total - seq;
  params.stop_at_eos = false;
  std::vector<int32_t> streamed;
  const std::vector<int32_t> got =
      engine->generate(prompt, params, [&](int32_t id) { streamed.push_back(id); });
  const std::vector<int32_t> want(greedy.data<int32_t>() + seq, greedy.data<int32_t>() + total);
  EXPECT_EQ(got, want);
  EXPECT_EQ(streamed, got);
  EXPECT_THROW(moex::Engine::load(dir + "/no-such-model"), std::runtime_error);
}

}  // namespace
