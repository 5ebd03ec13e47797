// The denoising task (decoder-only span corruption, after T5 and Kim et al.'s multitask MoE;
// docs/data.md §Denoising): a run of text tokens with some spans replaced by sentinel tokens,
// followed by the spans themselves, so a decoder-only model learns to fill them in:
//
//   <task:denoise> <lang:xx> a b <span:0> e f g <span:1> <denoise:targets> <span:0> c d <span:1> h
//   <eos>
//
// Spans are chosen as T5's random_spans_noise_mask does: round(L * noise_rate) noise tokens in
// round(noise / mean_span) spans, the text split alternately into kept and noise segments (kept
// first), segment lengths drawn at random. Deterministic in (seed, stream).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moex::data {

constexpr const char* kDenoiseTag = "<task:denoise>";
constexpr const char* kDenoiseTargetsTag = "<denoise:targets>";
std::string span_sentinel(int index);  // "<span:0>"

struct DenoiseOptions {
  double noise_rate = 0.15;    // fraction of the text tokens masked
  double mean_span = 3.0;      // mean noise span length
  int max_spans = 16;          // sentinel tokens in the vocabulary; spans per example at most
  int64_t chunk_tokens = 128;  // a document's text is cut into examples of at most this many
};

// The special token ids an example is written with.
struct DenoiseTokens {
  int32_t task = -1, lang = -1, targets = -1, eos = -1;
  std::vector<int32_t> sentinels;  // [max_spans]
};

// Errors name the field (noise_rate in (0, 1), mean_span >= 1, max_spans >= 1, chunk_tokens >= 4).
void check_denoise_options(const DenoiseOptions& options);

// One example from `count` text tokens (count >= 2): the layout above.
std::vector<int32_t> span_corrupt(const int32_t* text, size_t count, const DenoiseOptions& options,
                                  const DenoiseTokens& tokens, uint64_t seed, uint64_t stream);

// The examples of one document's text tokens: chunks of chunk_tokens (the last one shorter;
// chunks under 4 tokens are left out), chunk c corrupted with stream (stream * 65536 + c).
std::vector<std::vector<int32_t>> denoise_examples(const std::vector<int32_t>& text,
                                                   const DenoiseOptions& options,
                                                   const DenoiseTokens& tokens, uint64_t seed,
                                                   uint64_t stream);

}  // namespace moex::data
