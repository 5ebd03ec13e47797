#include "data/denoise.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "data/indexed_dataset.h"

namespace moex::data {
namespace {

// Lengths of `parts` non-empty segments that add up to n (1 <= parts <= n): parts - 1 distinct
// cut points drawn from the n - 1 gaps.
std::vector<int64_t> random_segmentation(int64_t n, int64_t parts, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> cuts = seeded_permutation(n - 1, seed, stream);
  cuts.resize(static_cast<size_t>(parts - 1));
  for (int64_t& c : cuts) c += 1;  // gap g lies before token g
  std::sort(cuts.begin(), cuts.end());
  std::vector<int64_t> lengths;
  int64_t prev = 0;
  for (int64_t c : cuts) {
    lengths.push_back(c - prev);
    prev = c;
  }
  lengths.push_back(n - prev);
  return lengths;
}

}  // namespace

std::string span_sentinel(int index) {
  return "<span:" + std::to_string(index) + ">";
}

void check_denoise_options(const DenoiseOptions& o) {
  MOEX_CHECK(o.noise_rate > 0 && o.noise_rate < 1, "denoise: noise_rate must be in (0, 1), got ",
             o.noise_rate);
  MOEX_CHECK(o.mean_span >= 1, "denoise: mean_span must be >= 1, got ", o.mean_span);
  MOEX_CHECK(o.max_spans >= 1 && o.max_spans <= 1000,
             "denoise: max_spans must be in [1, 1000], got ", o.max_spans);
  MOEX_CHECK(o.chunk_tokens >= 4, "denoise: chunk_tokens must be >= 4, got ", o.chunk_tokens);
}

std::vector<int32_t> span_corrupt(const int32_t* text, size_t count, const DenoiseOptions& o,
                                  const DenoiseTokens& tokens, uint64_t seed, uint64_t stream) {
  const int64_t n = static_cast<int64_t>(count);
  MOEX_CHECK(n >= 2, "denoise: an example needs at least 2 tokens, got ", n);
  MOEX_CHECK(static_cast<int>(tokens.sentinels.size()) >= o.max_spans,
             "denoise: ", tokens.sentinels.size(), " sentinel ids for max_spans ", o.max_spans);
  const int64_t noise =
      std::clamp<int64_t>(std::llround(static_cast<double>(n) * o.noise_rate), 1, n - 1);
  const int64_t spans =
      std::clamp<int64_t>(std::llround(static_cast<double>(noise) / o.mean_span), 1,
                          std::min<int64_t>({noise, n - noise, static_cast<int64_t>(o.max_spans)}));
  const std::vector<int64_t> noise_len = random_segmentation(noise, spans, seed, 2 * stream);
  const std::vector<int64_t> keep_len = random_segmentation(n - noise, spans, seed, 2 * stream + 1);

  std::vector<int32_t> inputs = {tokens.task, tokens.lang}, targets = {tokens.targets};
  int64_t pos = 0;
  for (int64_t s = 0; s < spans; ++s) {
    inputs.insert(inputs.end(), text + pos, text + pos + keep_len[s]);
    pos += keep_len[s];
    inputs.push_back(tokens.sentinels[static_cast<size_t>(s)]);
    targets.push_back(tokens.sentinels[static_cast<size_t>(s)]);
    targets.insert(targets.end(), text + pos, text + pos + noise_len[s]);
    pos += noise_len[s];
  }
  inputs.insert(inputs.end(), targets.begin(), targets.end());
  inputs.push_back(tokens.eos);
  return inputs;
}

std::vector<std::vector<int32_t>> denoise_examples(const std::vector<int32_t>& text,
                                                   const DenoiseOptions& o,
                                                   const DenoiseTokens& tokens, uint64_t seed,
                                                   uint64_t stream) {
  std::vector<std::vector<int32_t>> out;
  for (size_t start = 0, c = 0; start < text.size(); start += o.chunk_tokens, ++c) {
    const size_t len = std::min(text.size() - start, static_cast<size_t>(o.chunk_tokens));
    if (len < 4) continue;
    out.push_back(span_corrupt(text.data() + start, len, o, tokens, seed, stream * 65536 + c));
  }
  return out;
}

}  // namespace moex::data
