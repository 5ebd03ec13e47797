// The public API (include/moex/moex.h) alone: load a Hugging Face Mixtral fixture, score it and
// generate greedily; the loss and the continuation must equal transformers' (recorded in the
// fixture).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "io/safetensors.h"
#include "moex/moex.h"

namespace {

TEST(Engine, LoadsScoresAndGeneratesLikeTransformers) {
  const std::string dir = std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/hf/mixtral";
  const auto fx = moex::io::SafetensorsFile::open(dir + "/fixture.safetensors");
  const moex::Tensor ids = fx.copy("input_ids");            // [B, T] int32
  const moex::Tensor greedy = fx.copy("greedy");            // [B, T + new] int32
  const moex::Tensor logits = fx.copy("logits");            // [B, T, V] f32, transformers' forward
  const double hf_loss = fx.copy("loss").data<float>()[0];  // mean cross-entropy over the batch
  const int64_t seq = ids.dim(1), total = greedy.dim(1);

  std::unique_ptr<moex::Engine> engine = moex::Engine::load(dir + "/model");
  EXPECT_EQ(engine->vocab_size(), logits.dim(2));
  const std::vector<int32_t> prompt(ids.data<int32_t>(), ids.data<int32_t>() + seq);

  // transformers' loss is the mean next-token cross-entropy over both rows (11 targets each), so
  // it is the mean of the two rows' scores; each row's score is also the cross-entropy of
  // transformers' logits for that row, computed here in double. Both sides compute in fp32 with
  // different summation orders; the loss is ~4.85, where one fp32 ulp is 4.8e-7 (the differences
  // measured here are below 1e-7). 1e-5, about 20 ulps, leaves room for another BLAS's order,
  // while a wrong target, shift or averaging moves the loss by 1e-2 or more.
  const float* hf_logits = logits.data<float>();
  const int64_t vocab = logits.dim(2);
  double mean_of_rows = 0;
  for (int64_t row = 0; row < ids.dim(0); ++row) {
    const int32_t* r = ids.data<int32_t>() + row * seq;
    const moex::Score s = engine->score(std::vector<int32_t>(r, r + seq));
    double ce = 0;
    for (int64_t t = 0; t + 1 < seq; ++t) {
      const float* l = hf_logits + (row * seq + t) * vocab;
      double max_l = l[0], sum = 0;
      for (int64_t v = 0; v < vocab; ++v) max_l = std::max(max_l, static_cast<double>(l[v]));
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(l[v] - max_l);
      ce += max_l + std::log(sum) - l[r[t + 1]];
    }
    ce /= static_cast<double>(seq - 1);
    EXPECT_NEAR(s.loss, ce, 1e-5) << "row " << row;
    mean_of_rows += s.loss / static_cast<double>(ids.dim(0));
  }
  EXPECT_NEAR(mean_of_rows, hf_loss, 1e-5);

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
