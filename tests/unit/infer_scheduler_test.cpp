// Continuous batching over the paged KV cache (infer/scheduler.h) against one-at-a-time decoding
// (infer::generate over the dense KV cache): the same tokens for every request, whatever the
// batch, the prefill chunking, the block size and the order requests arrive in; and the block
// pool's bookkeeping (nothing leaks, a request that can never fit is refused at submit).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "core/json_reader.h"
#include "core/rng.h"
#include "infer/generator.h"
#include "infer/scheduler.h"

namespace moex::infer {
namespace {

// A capacity-mode MoE (tokens would be dropped under batching if serving dropped them) with
// RoPE and GQA, and one with learned positions and LayerNorm.
// eval_capacity_factor 8: evaluation keeps every route too, so Model::logits over a whole sequence
// is a reference for what serving computes.
ModelConfig config(bool learned, double eval_capacity_factor = 1.0) {
  const std::string text = std::string(R"({
    "vocab_size": 97, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
    "max_seq_len": 64, "ffn_size": 48, "init_std": 0.3, "positions": ")") +
                           (learned ? "learned" : "rope") + R"(", "norm": ")" +
                           (learned ? "layernorm" : "rmsnorm") + R"(",
    "moe": {"layer_freq": 1, "num_experts": 4, "top_k": 2, "ffn_size": 24,
            "capacity_factor": 1.0, "eval_capacity_factor": )" +
                           std::to_string(eval_capacity_factor) + R"(, "min_capacity": 1}})";
  return ModelConfig::from_json(JsonReader::from_string(text, "scheduler_test.json"));
}

std::vector<std::vector<int32_t>> prompts(int64_t vocab) {
  std::vector<std::vector<int32_t>> out;
  const int lengths[] = {1, 7, 3, 19, 11, 5};
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p;
    for (int t = 0; t < lengths[i]; ++t) p.push_back(philox_u32(21, i, t) % vocab);
    out.push_back(p);
  }
  return out;
}

// n tokens drawn from the vocabulary by (seed, stream).
std::vector<int32_t> random_tokens(uint64_t seed, uint64_t stream, int n, int64_t vocab) {
  std::vector<int32_t> out;
  for (int t = 0; t < n; ++t)
    out.push_back(static_cast<int32_t>(philox_u32(seed, stream, t) % vocab));
  return out;
}

Request request(std::vector<int32_t> prompt, int64_t max_tokens) {
  Request r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  return r;
}

// The same, with each new token appended to *tokens.
Request collecting(std::vector<int32_t> prompt, int64_t max_tokens, std::vector<int32_t>* tokens) {
  Request r = request(std::move(prompt), max_tokens);
  r.on_token = [tokens](int32_t t) {
    tokens->push_back(t);
    return true;
  };
  return r;
}

struct Outcome {
  std::vector<int32_t> tokens;
  FinishReason reason = FinishReason::kError;
  bool finished = false;
};

// Runs every prompt through a scheduler, all submitted before the first step (or one more after
// every `stagger` steps), and returns each request's tokens.
std::vector<Outcome> serve(model::Model& m, const std::vector<std::vector<int32_t>>& ps,
                           const SchedulerOptions& opt, int64_t max_tokens, int stagger,
                           const SamplingParams& sampling = {}, SchedulerStats* stats = nullptr) {
  Scheduler s(m, opt);
  std::vector<Outcome> out(ps.size());
  size_t submitted = 0;
  auto submit_next = [&] {
    Request r;
    r.prompt = ps[submitted];
    r.max_tokens = max_tokens;
    r.sampling = sampling;
    Outcome* o = &out[submitted];
    r.on_token = [o](int32_t t) {
      o->tokens.push_back(t);
      return true;
    };
    r.on_finish = [o](FinishReason reason, const std::string&) {
      o->reason = reason;
      o->finished = true;
    };
    s.submit(std::move(r));
    ++submitted;
  };
  if (stagger == 0)
    while (submitted < ps.size()) submit_next();
  for (int step = 0; step < 10000; ++step) {
    if (stagger > 0 && submitted < ps.size() && step % stagger == 0) submit_next();
    if (!s.step() && submitted == ps.size()) break;
  }
  const SchedulerStats st = s.stats();
  if (stats != nullptr) *stats = st;
  EXPECT_EQ(st.free_blocks, st.total_blocks) << "blocks leaked";
  EXPECT_EQ(st.finished, static_cast<int64_t>(ps.size()));
  // Steady decoding launched steps ahead of reading the last one's tokens (ids on the device),
  // and the tokens above are still those of one-at-a-time decoding.
  if (stagger == 0) {
    EXPECT_GT(st.followed_steps, 0);
  }
  return out;
}

TEST(Scheduler, BatchedPagedDecodingEqualsOneAtATime) {
  for (const bool learned : {false, true}) {
    const ModelConfig c = config(learned);
    model::Model m(c);
    m.init_weights(3);
    const auto ps = prompts(c.vocab_size);
    std::vector<std::vector<int32_t>> want;
    for (const auto& p : ps) {
      GenerateOptions g;
      g.max_new_tokens = 9;
      want.push_back(generate(m, p, g));
    }
    struct Layout {
      int64_t max_batch, step_tokens, block_size;
      int stagger;
    };
    for (const Layout& l : {Layout{1, 64, 16, 0}, Layout{6, 64, 4, 0}, Layout{3, 5, 3, 0},
                            Layout{4, 8, 1, 2}, Layout{2, 3, 5, 1}}) {
      SchedulerOptions opt;
      opt.max_batch = l.max_batch;
      opt.step_tokens = l.step_tokens;
      opt.block_size = l.block_size;
      const auto got = serve(m, ps, opt, 9, l.stagger);
      for (size_t i = 0; i < ps.size(); ++i) {
        EXPECT_TRUE(got[i].finished);
        EXPECT_EQ(got[i].reason, FinishReason::kLength);
        EXPECT_EQ(got[i].tokens, want[i])
            << "prompt " << i << " learned=" << learned << " batch " << l.max_batch << " chunk "
            << l.step_tokens << " block " << l.block_size << " stagger " << l.stagger;
      }
    }
  }
}

// generate_paged (what `moex generate` runs) against the dense-cache generate: greedy and sampled,
// a stop token that ends it early, a run past max_seq_len with RoPE, and no tokens asked for.
TEST(Scheduler, GeneratePagedEqualsGenerate) {
  for (const bool learned : {false, true}) {
    const ModelConfig c = config(learned);
    model::Model m(c);
    m.init_weights(5);
    const auto ps = prompts(c.vocab_size);
    for (size_t i = 0; i < ps.size(); ++i) {
      GenerateOptions g;
      g.max_new_tokens = learned ? 12 : 64 - static_cast<int64_t>(ps[i].size()) + 3;
      if (i % 2 == 1) {
        g.sampling.temperature = 0.9;
        g.sampling.top_p = 0.8;
        g.sampling.seed = 40 + i;
      }
      const std::vector<int32_t> want = generate(m, ps[i], g);
      std::vector<int32_t> streamed;
      EXPECT_EQ(generate_paged(m, ps[i], g, [&](int32_t t) { streamed.push_back(t); }), want)
          << "prompt " << i << " learned=" << learned;
      EXPECT_EQ(streamed, want);
      g.stop_tokens = {want[want.size() / 2]};
      const std::vector<int32_t> stopped = generate(m, ps[i], g);
      EXPECT_LE(stopped.size(), want.size() / 2 + 1);
      EXPECT_EQ(stopped.back(), g.stop_tokens[0]);
      EXPECT_EQ(generate_paged(m, ps[i], g), stopped) << "prompt " << i << " with a stop token";
    }
    GenerateOptions none;
    none.max_new_tokens = 0;
    EXPECT_TRUE(generate_paged(m, ps[0], none).empty());
  }
}

TEST(Scheduler, SampledTokensRepeatTheSingleSequenceDraws) {
  const ModelConfig c = config(false);
  model::Model m(c);
  m.init_weights(5);
  const auto ps = prompts(c.vocab_size);
  SamplingParams sp;
  sp.temperature = 0.9;
  sp.top_k = 20;
  sp.top_p = 0.9;
  sp.seed = 77;
  SchedulerOptions opt;
  opt.max_batch = 4;
  opt.step_tokens = 6;
  opt.block_size = 2;
  const auto got = serve(m, ps, opt, 7, 0, sp);
  for (size_t i = 0; i < ps.size(); ++i) {
    GenerateOptions g;
    g.max_new_tokens = 7;
    g.sampling = sp;
    EXPECT_EQ(got[i].tokens, generate(m, ps[i], g)) << "prompt " << i;
  }
}

// What one request received: its tokens, and its log-probabilities in the order they came.
struct Received {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  bool finished = false;
};

void receive(Request& r, Received* out) {
  r.on_token = [out](int32_t t) {
    out->tokens.push_back(t);
    return true;
  };
  r.on_logprob = [out](const TokenLogprob& lp) { out->logprobs.push_back(lp); };
  r.on_finish = [out](FinishReason, const std::string&) { out->finished = true; };
}

void run_to_end(Scheduler& s) {
  for (int step = 0; step < 10000 && s.step(); ++step) {
  }
}

// The logits after every position of `ids` from one forward over the whole sequence [T, V].
std::vector<float> whole_sequence_logits(model::Model& m, const std::vector<int32_t>& ids) {
  std::vector<float> out(ids.size() * static_cast<size_t>(m.config().vocab_size));
  m.logits(ids.data(), 1, static_cast<int64_t>(ids.size()), out.data());
  return out;
}

double log_softmax_at(const float* row, int64_t vocab, int32_t token) {
  double max = row[0], sum = 0;
  for (int64_t v = 1; v < vocab; ++v) max = std::max(max, static_cast<double>(row[v]));
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
  return row[token] - max - std::log(sum);
}

// The log-probabilities of the prompt (chunked prefill) and of sampled and greedy tokens, next to
// requests that want none, against a forward over each whole sequence; the requests that want
// none still get one-at-a-time decoding's tokens.
TEST(Scheduler, LogprobsAreTheLogSoftmaxOfAWholeSequenceForward) {
  const ModelConfig c = config(false, 8.0);
  const int64_t vocab = c.vocab_size;
  model::Model m(c);
  m.init_weights(5);
  const auto ps = prompts(vocab);
  SchedulerOptions opt;
  opt.max_batch = 3;
  opt.step_tokens = 8;  // the 19-token prompt is prefilled in pieces
  opt.block_size = 4;
  Scheduler s(m, opt);
  Received with_prompt, sampled, plain;
  Request a = request(ps[3], 6);
  a.logprobs = 5;
  a.prompt_logprobs = true;
  receive(a, &with_prompt);
  Request b = request(ps[4], 5);
  b.logprobs = 0;
  b.sampling.temperature = 0.9;
  b.sampling.seed = 3;
  receive(b, &sampled);
  Request p = request(ps[1], 6);
  receive(p, &plain);
  const SamplingParams b_sampling = b.sampling;
  s.submit(std::move(a));
  s.submit(std::move(b));
  s.submit(std::move(p));
  run_to_end(s);
  ASSERT_TRUE(with_prompt.finished && sampled.finished && plain.finished);
  GenerateOptions g;
  g.max_new_tokens = 6;
  EXPECT_EQ(plain.tokens, generate(m, ps[1], g));
  EXPECT_TRUE(plain.logprobs.empty());
  EXPECT_EQ(with_prompt.tokens, generate(m, ps[3], g));
  g.max_new_tokens = 5;
  g.sampling = b_sampling;
  EXPECT_EQ(sampled.tokens, generate(m, ps[4], g));

  // Entry k is the token at position k + 1 (prompt tokens from the second on, then the new ones)
  // or, without prompt log-probabilities, new token k.
  auto check = [&](const std::vector<int32_t>& prompt, const Received& got, bool with_prompt_lps,
                   int64_t top_n) {
    std::vector<int32_t> seq = prompt;
    seq.insert(seq.end(), got.tokens.begin(), got.tokens.end());
    const std::vector<float> logits = whole_sequence_logits(m, seq);
    const size_t first = with_prompt_lps ? 1 : prompt.size();
    ASSERT_EQ(got.logprobs.size(), seq.size() - first);
    for (size_t k = 0; k < got.logprobs.size(); ++k) {
      const size_t pos = first + k;
      const float* row = logits.data() + (pos - 1) * vocab;
      const TokenLogprob& lp = got.logprobs[k];
      EXPECT_EQ(lp.token, seq[pos]) << "position " << pos;
      EXPECT_NEAR(lp.logprob, log_softmax_at(row, vocab, seq[pos]), 1e-4) << "position " << pos;
      ASSERT_EQ(static_cast<int64_t>(lp.top.size()), top_n);
      for (int64_t i = 0; i < top_n; ++i) {
        EXPECT_NEAR(lp.top[i].second, log_softmax_at(row, vocab, lp.top[i].first), 1e-4);
        if (i > 0) {
          EXPECT_GE(lp.top[i - 1].second, lp.top[i].second);
        }
      }
      // The most likely alternative is the row's largest logit (greedy picks it).
      if (top_n > 0) {
        EXPECT_EQ(lp.top[0].first, std::max_element(row, row + vocab) - row) << "position " << pos;
      }
    }
  };
  check(ps[3], with_prompt, true, 5);
  check(ps[4], sampled, false, 0);
}

// Greedy decoding with a bias and the three penalties, against the formulas applied by hand to a
// forward over the sequence so far, step by step (compared while the top two adjusted logits are
// further apart than the two forwards' rounding); and a large bias that decides every token.
TEST(Scheduler, BiasAndPenaltiesChangeTheLogitsAsOpenAIDefinesThem) {
  const ModelConfig c = config(false, 8.0);
  const int64_t vocab = c.vocab_size;
  model::Model m(c);
  m.init_weights(7);
  const auto ps = prompts(vocab);
  SchedulerOptions opt;
  opt.max_batch = 2;
  opt.block_size = 4;
  Scheduler s(m, opt);
  Received adjusted, forced;
  Request a = request(ps[2], 16);
  a.adjustments.bias = {{5, 1.5f}, {11, -2.0f}};
  a.adjustments.presence_penalty = 0.6;
  a.adjustments.frequency_penalty = 0.4;
  a.adjustments.repetition_penalty = 1.25;
  receive(a, &adjusted);
  const LogitAdjustments adj = a.adjustments;
  Request f = request(ps[0], 5);
  f.adjustments.bias = {{42, 100.0f}};
  receive(f, &forced);
  s.submit(std::move(a));
  s.submit(std::move(f));
  run_to_end(s);
  EXPECT_EQ(forced.tokens, std::vector<int32_t>(5, 42));
  ASSERT_EQ(adjusted.tokens.size(), 16u);
  int compared = 0;
  for (size_t j = 0; j < adjusted.tokens.size(); ++j) {
    std::vector<int32_t> seq = ps[2];
    seq.insert(seq.end(), adjusted.tokens.begin(), adjusted.tokens.begin() + j);
    const std::vector<float> logits = whole_sequence_logits(m, seq);
    std::vector<double> row(logits.end() - vocab, logits.end());
    for (int64_t v = 0; v < vocab; ++v)  // seen in the prompt or the output so far
      if (std::count(seq.begin(), seq.end(), v) > 0)
        row[v] = row[v] > 0 ? row[v] / adj.repetition_penalty : row[v] * adj.repetition_penalty;
    for (const auto& [t, bias] : adj.bias) row[t] += bias;
    for (int64_t v = 0; v < vocab; ++v) {
      const auto count = std::count(adjusted.tokens.begin(), adjusted.tokens.begin() + j, v);
      row[v] -= (count > 0 ? adj.presence_penalty : 0.0) + adj.frequency_penalty * count;
    }
    std::vector<double> sorted = row;
    std::sort(sorted.rbegin(), sorted.rend());
    if (sorted[0] - sorted[1] < 1e-3) break;  // a near tie: the forwards' rounding may decide it
    EXPECT_EQ(adjusted.tokens[j], std::max_element(row.begin(), row.end()) - row.begin())
        << "token " << j;
    ++compared;
  }
  EXPECT_GE(compared, 8);
  // Checked at submit: a bias token outside the vocabulary, logprobs out of range.
  Request bad = request(ps[0], 2);
  bad.adjustments.bias = {{static_cast<int32_t>(vocab), 1.0f}};
  EXPECT_THROW(s.submit(std::move(bad)), Error);
  Request too_many = request(ps[0], 2);
  too_many.logprobs = kMaxTopLogprobs + 1;
  EXPECT_THROW(s.submit(std::move(too_many)), Error);
  Request prompt_only = request(ps[0], 2);
  prompt_only.prompt_logprobs = true;
  EXPECT_THROW(s.submit(std::move(prompt_only)), Error);
}

// Requests held to one JSON object (a vocabulary of JSON fragments, token 0 the stop token):
// greedy and sampled text is always a JSON prefix, and whole JSON when it stopped; with a bias
// towards "}" the object closes at once and the stop token is forced after it.
TEST(Scheduler, JsonObjectRequestsWriteJson) {
  const ModelConfig c = config(false);
  const int64_t vocab = c.vocab_size;
  model::Model m(c);
  m.init_weights(9);
  const std::vector<std::string> fragments = {"{", "}",    "\"a\"", ":",   "1", ",",   " ", "[",
                                              "]", "true", "\"b",   "c\"", "x", "0.5", "\n"};
  TokenTexts fragment_of(vocab);
  for (int64_t v = 1; v < vocab; ++v) fragment_of[v] = fragments[v % fragments.size()];
  auto tokens = std::make_shared<TokenTable>(fragment_of);
  const TokenTexts* texts = &tokens->texts();
  SchedulerOptions opt;
  opt.max_batch = 3;
  opt.block_size = 4;
  Scheduler s(m, opt);
  const auto ps = prompts(vocab);
  std::vector<Received> got(3);
  for (int i = 0; i < 3; ++i) {
    Request r = request(ps[i + 1], 40);
    r.format =
        std::make_shared<OutputFormat>(OutputFormat{"", JsonSchema::any_object(), "", 1, ""});
    r.tokens = tokens;
    r.stop_tokens = {0};
    if (i == 1) {
      r.sampling.temperature = 1.0;
      r.sampling.seed = 4;
    }
    if (i == 2)
      for (int64_t v = 0; v < vocab; ++v)
        if ((*texts)[v] == "}") r.adjustments.bias.emplace_back(static_cast<int32_t>(v), 50.0f);
    receive(r, &got[i]);
    s.submit(std::move(r));
  }
  run_to_end(s);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(got[i].finished);
    std::string text;
    bool stopped = false;
    for (int32_t t : got[i].tokens) {
      ASSERT_FALSE(stopped) << "a token after the stop token";
      stopped = t == 0;
      text += (*texts)[t];
    }
    JsonPrefix json(/*object_only=*/true);
    EXPECT_TRUE(json.feed(text)) << "request " << i << ": " << text;
    if (stopped) {
      EXPECT_TRUE(json.complete()) << text;
      EXPECT_TRUE(nlohmann::json::parse(text).is_object()) << text;
    } else {
      EXPECT_EQ(got[i].tokens.size(), 40u);
    }
  }
  ASSERT_EQ(got[2].tokens.size(), 3u);
  EXPECT_EQ((*texts)[got[2].tokens[0]] + (*texts)[got[2].tokens[1]], "{}");
  EXPECT_EQ(got[2].tokens[2], 0);
}

TEST(Scheduler, StopTokensCancelAndLimits) {
  const ModelConfig c = config(false);
  model::Model m(c);
  m.init_weights(3);
  const auto ps = prompts(c.vocab_size);
  GenerateOptions g;
  g.max_new_tokens = 9;
  const std::vector<int32_t> free_run = generate(m, ps[3], g);

  SchedulerOptions opt;
  opt.max_batch = 2;
  opt.block_size = 4;
  opt.num_blocks = 12;  // 48 positions: two requests of up to 24
  opt.max_context = 32;
  Scheduler s(m, opt);
  // Refused at submit, nothing queued: empty prompt, bad max_tokens, too long, larger than the
  // pool, a token outside the vocabulary.
  EXPECT_THROW(s.submit(request({}, 4)), Error);
  EXPECT_THROW(s.submit(request(ps[0], 0)), Error);
  EXPECT_THROW(s.submit(request(std::vector<int32_t>(30, 1), 5)), Error);
  EXPECT_THROW(s.submit(request({200}, 1)), Error);
  // Settings beyond what any cache can hold are refused when the scheduler is made, naming them.
  for (auto [field, value] : std::vector<std::pair<int64_t SchedulerOptions::*, int64_t>>{
           {&SchedulerOptions::num_blocks, int64_t{100000000000}},
           {&SchedulerOptions::block_size, int64_t{1000000000}},
           {&SchedulerOptions::max_batch, int64_t{1} << 40},
           {&SchedulerOptions::max_context, -1}}) {
    SchedulerOptions bad = opt;
    bad.*field = value;
    bad.step_tokens = std::max(bad.step_tokens, std::min<int64_t>(bad.max_batch, 1 << 20));
    EXPECT_THROW(Scheduler(m, bad), Error) << value;
  }
  SchedulerOptions tiny = opt;
  tiny.num_blocks = 2;
  Scheduler small(m, tiny);
  EXPECT_THROW(small.submit(request(ps[3], 4)), Error);  // 23 positions > 2 blocks of 4

  // A stop token ends the request after emitting it.
  Outcome stopped, cancelled, tail;
  Request r = collecting(ps[3], 9, &stopped.tokens);
  r.stop_tokens = {free_run[2]};
  r.on_finish = [&](FinishReason reason, const std::string&) { stopped.reason = reason; };
  s.submit(std::move(r));
  // A client that goes away after two tokens.
  r = request(ps[1], 9);
  r.on_token = [&](int32_t t) {
    cancelled.tokens.push_back(t);
    return cancelled.tokens.size() < 2;
  };
  r.on_finish = [&](FinishReason reason, const std::string&) { cancelled.reason = reason; };
  s.submit(std::move(r));
  // Cancelled by id while it waits for a batch slot.
  r = request(ps[2], 9);
  r.on_finish = [&](FinishReason reason, const std::string&) { tail.reason = reason; };
  const uint64_t id = s.submit(std::move(r));
  s.cancel(id);
  while (s.step()) {
  }
  const std::vector<int32_t> want_stop(free_run.begin(), free_run.begin() + 3);
  auto first_stop = std::find(free_run.begin(), free_run.end(), free_run[2]);
  const std::vector<int32_t> expected(free_run.begin(), first_stop + 1);
  EXPECT_EQ(stopped.tokens, expected);
  EXPECT_EQ(stopped.reason, FinishReason::kStop);
  EXPECT_EQ(cancelled.tokens.size(), 2u);
  EXPECT_EQ(cancelled.reason, FinishReason::kCancelled);
  EXPECT_EQ(tail.reason, FinishReason::kCancelled);
  EXPECT_EQ(s.stats().free_blocks, opt.num_blocks);
}

// Requests arriving at random steps with random prompts and limits, stop tokens, clients that go
// away after a few tokens and a cancel by id, over random batch sizes, prefill chunks, block sizes
// and tight pools: every request ends once, its tokens are the start of what one-at-a-time
// decoding gives (all of them, up to the stop token, the client's cut or max_tokens), and every
// block comes back. Steady decoding runs steps launched ahead, so a sequence ended by one step
// still has a token in flight; it must never reach the client. The reference decoding runs on the
// same model between steps, as a second user of the model would (it rewrites the model's
// activation memory while a step is launched).
TEST(Scheduler, RandomArrivalsStopsAndCancelsMatchOneAtATime) {
  const ModelConfig c = config(true);
  model::Model m(c);
  m.init_weights(3);
  constexpr int kRequests = 8;
  int64_t followed = 0;
  for (int trial = 0; trial < 24; ++trial) {
    SchedulerOptions opt;
    opt.max_batch = 1 + trial % 4;
    opt.step_tokens = std::max<int64_t>(opt.max_batch, 3 + trial % 7);
    opt.block_size = 1 + trial % 5;
    opt.max_context = 40;
    // Every third trial: a pool with room for little more than one full request.
    if (trial % 3 == 0) opt.num_blocks = (40 + opt.block_size - 1) / opt.block_size + 2;
    Scheduler s(m, opt);
    std::vector<Outcome> out(kRequests);
    std::vector<std::vector<int32_t>> want(kRequests);
    std::vector<size_t> expect_len(kRequests);
    std::vector<uint64_t> ids(kRequests);
    int submitted = 0;
    auto submit_next = [&] {
      const int i = submitted++;
      auto draw = [&](uint64_t what, uint32_t n) { return philox_u32(trial, i, 1000 + what) % n; };
      std::vector<int32_t> prompt(1 + draw(0, 12));
      for (size_t t = 0; t < prompt.size(); ++t) prompt[t] = philox_u32(trial, i, t) % 97;
      GenerateOptions g;
      g.max_new_tokens = 1 + draw(1, 20);
      want[i] = generate(m, prompt, g);
      Request r = request(prompt, g.max_new_tokens);
      expect_len[i] = want[i].size();
      if (draw(2, 3) == 0 && want[i].size() > 2) {  // a stop token: its first occurrence ends it
        r.stop_tokens = {want[i][2]};
        const auto at = std::find(want[i].begin(), want[i].end(), want[i][2]);
        expect_len[i] = std::min<size_t>(expect_len[i], at - want[i].begin() + 1);
      }
      const size_t cut = draw(3, 25);  // the client goes away after `cut` tokens (0: never)
      if (cut > 0) expect_len[i] = std::min(expect_len[i], cut);
      Outcome* o = &out[i];
      r.on_token = [o, cut](int32_t t) {
        o->tokens.push_back(t);
        return cut == 0 || o->tokens.size() < cut;
      };
      r.on_finish = [o](FinishReason reason, const std::string&) {
        EXPECT_FALSE(o->finished) << "a second on_finish";
        o->reason = reason;
        o->finished = true;
      };
      ids[i] = s.submit(std::move(r));
    };
    for (int step = 0; step < 2000; ++step) {
      if (submitted < kRequests && step % (1 + trial % 3) == 0) submit_next();
      if (step == 7 && submitted > 3) s.cancel(ids[3]);
      const bool more = s.step();
      EXPECT_LE(s.stats().running, opt.max_batch);
      if (!more && submitted == kRequests) break;
    }
    const SchedulerStats st = s.stats();
    followed += st.followed_steps;
    EXPECT_EQ(st.free_blocks, st.total_blocks) << "trial " << trial;
    EXPECT_EQ(st.finished, kRequests) << "trial " << trial;
    EXPECT_EQ(st.running, 0) << "trial " << trial;
    for (int i = 0; i < kRequests; ++i) {
      const std::string what = "trial " + std::to_string(trial) + " request " + std::to_string(i);
      EXPECT_TRUE(out[i].finished) << what;
      ASSERT_LE(out[i].tokens.size(), want[i].size()) << what;
      EXPECT_TRUE(std::equal(out[i].tokens.begin(), out[i].tokens.end(), want[i].begin())) << what;
      if (i != 3) {  // 3: cancelled by id, at whatever point it had reached
        EXPECT_EQ(out[i].tokens.size(), expect_len[i]) << what;
      }
    }
  }
  EXPECT_GT(followed, 0);
}

// The pool's prefix cache: registered whole blocks are found again by the same leading tokens
// (and only those: the same block of tokens after another prefix is not a match), shared while
// held, kept once released, and evicted leaves first, the one released longest ago first.
TEST(KVBlockPool, PrefixCacheSharesWholeBlocksAndEvictsTheOldest) {
  KVBlockPool pool(6, 2);
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7};
  std::vector<int32_t> first;
  ASSERT_TRUE(pool.reserve(first, 7));  // 4 blocks
  int64_t registered = 0;
  pool.register_prefix(a, 3, first, registered);  // positions 0..2 written: block 0 whole
  EXPECT_EQ(registered, 1);
  EXPECT_EQ(pool.cached_blocks(), 1);
  pool.register_prefix(a, 7, first, registered);  // blocks 1 and 2; block 3 holds one token
  EXPECT_EQ(registered, 3);
  EXPECT_EQ(pool.cached_blocks(), 3);

  std::vector<int32_t> same, shares_two, other_start;
  EXPECT_EQ(pool.match_prefix(a, 6, same), 6);
  EXPECT_EQ(same, std::vector<int32_t>(first.begin(), first.begin() + 3));
  EXPECT_EQ(pool.match_prefix({1, 2, 3, 4, 9, 9, 7}, 6, shares_two), 4);
  EXPECT_EQ(pool.match_prefix({9, 9, 3, 4, 5, 6}, 6, other_start), 0);  // blocks 1, 2 follow 0
  std::vector<int32_t> skips_one;
  EXPECT_EQ(pool.match_prefix({1, 2, 5, 6}, 4, skips_one), 2);  // {5, 6} follows {3, 4}
  pool.release(skips_one);
  std::vector<int32_t> limited;
  EXPECT_EQ(pool.match_prefix(a, 5, limited), 4);  // whole blocks within max_tokens only
  pool.release(limited);
  EXPECT_EQ(pool.free_blocks(), 2);

  pool.release(first);  // block 3 is free again; 0-2 are still held
  EXPECT_EQ(pool.free_blocks(), 3);
  pool.release(same);  // block 2 nobody holds: cached, evictable
  pool.release(shares_two);
  pool.release(other_start);
  EXPECT_EQ(pool.free_blocks(), 6);
  EXPECT_EQ(pool.cached_blocks(), 3);

  std::vector<int32_t> big;
  ASSERT_TRUE(pool.reserve(big, 8));  // the 3 free blocks, then block 2 (released first)
  EXPECT_EQ(pool.cached_blocks(), 2);
  std::vector<int32_t> again;
  EXPECT_EQ(pool.match_prefix(a, 6, again), 4);
  pool.release(again);
  EXPECT_FALSE(pool.reserve(big, 14));  // 7 blocks of 6
  ASSERT_TRUE(pool.reserve(big, 12));
  EXPECT_EQ(pool.cached_blocks(), 0);
  EXPECT_EQ(pool.match_prefix(a, 6, again), 0);
  pool.release(big);
  EXPECT_EQ(pool.free_blocks(), 6);
}

// Prompts that share leading blocks take them from the prefix cache instead of computing them,
// and every token is still that of one-at-a-time decoding: with the cache and without it, a
// roomy pool and one so tight that cached blocks are evicted for new requests, one request at a
// time and several at once. The cache's count of prompt tokens is what the shared blocks hold.
TEST(Scheduler, PrefixCachingGivesTheTokensOfOneAtATime) {
  const ModelConfig c = config(false);
  model::Model m(c);
  m.init_weights(3);
  const std::vector<int32_t> shared = random_tokens(5, 0, 13, c.vocab_size);
  std::vector<std::vector<int32_t>> ps;
  for (int i = 0; i < 5; ++i) {
    std::vector<int32_t> p(shared.begin(), shared.begin() + (i == 4 ? 6 : 13));
    const std::vector<int32_t> own = random_tokens(5, 1 + i, i, c.vocab_size);
    p.insert(p.end(), own.begin(), own.end());
    ps.push_back(p);
  }
  ps.push_back(ps[1]);  // the same prompt again: all but its last token's block
  std::vector<std::vector<int32_t>> want;
  for (const auto& p : ps) {
    GenerateOptions g;
    g.max_new_tokens = 6;
    want.push_back(generate(m, p, g));
  }
  for (const bool caching : {true, false}) {
    for (const int64_t num_blocks : {int64_t{0}, int64_t{10}}) {
      for (const int stagger : {4, 0}) {
        SchedulerOptions opt;
        opt.max_batch = 3;
        opt.step_tokens = 8;
        opt.block_size = 4;
        opt.num_blocks = num_blocks;
        opt.prefix_caching = caching;
        SchedulerStats st;
        const auto got = serve(m, ps, opt, 6, stagger, {}, &st);
        const std::string what = std::string("caching ") + (caching ? "on" : "off") + " blocks " +
                                 std::to_string(num_blocks) + " stagger " + std::to_string(stagger);
        for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(got[i].tokens, want[i]) << what;
        int64_t prompt_tokens = 0;
        for (const auto& p : ps) prompt_tokens += static_cast<int64_t>(p.size());
        EXPECT_EQ(st.prompt_tokens + st.cached_prompt_tokens, prompt_tokens) << what;
        EXPECT_EQ(st.cached_prompt_tokens % opt.block_size, 0) << what;
        if (!caching) {
          EXPECT_EQ(st.cached_prompt_tokens, 0) << what;
          EXPECT_EQ(st.cached_blocks, 0) << what;
        } else if (num_blocks == 0) {
          // Requests 1-3 take the shared 12 tokens, 4 its 4, the repeat of 1 its first 12 too:
          // also when all arrive at once, since a request whose prompt starts with blocks a
          // running one is still computing waits for them instead of computing them too.
          EXPECT_EQ(st.cached_prompt_tokens, 3 * 12 + 4 + 12) << what;
        } else {
          EXPECT_GT(st.cached_prompt_tokens, 0) << what;
        }
      }
    }
  }
}

// Only blocks whose keys and values were written are offered to the cache: a request cancelled
// after the first 8-token chunk of its 21-token prompt leaves its first two blocks of 4 cached,
// not the three more its prompt would fill, and a later request with the same prompt takes those
// two and computes the rest (its tokens those of one-at-a-time decoding).
TEST(Scheduler, APromptCancelledWhilePrefillingLeavesOnlyItsWrittenBlocksCached) {
  const ModelConfig c = config(false);
  model::Model m(c);
  m.init_weights(3);
  const std::vector<int32_t> prompt = random_tokens(6, 0, 21, c.vocab_size);
  SchedulerOptions opt;
  opt.max_batch = 2;
  opt.step_tokens = 8;
  opt.block_size = 4;
  Scheduler s(m, opt);
  const uint64_t first = s.submit(request(prompt, 4));
  ASSERT_TRUE(s.step());  // the first chunk, read at once (a prefill step is not followed)
  s.cancel(first);
  std::vector<int32_t> tokens;
  int64_t admitted_cached = -1;
  Request again = collecting(prompt, 6, &tokens);
  again.on_admitted = [&](int64_t cached) { admitted_cached = cached; };
  s.submit(std::move(again));
  run_to_end(s);
  GenerateOptions g;
  g.max_new_tokens = 6;
  EXPECT_EQ(tokens, generate(m, prompt, g));
  EXPECT_EQ(s.stats().cached_prompt_tokens, 8);
  EXPECT_EQ(admitted_cached, 8);  // what the request itself hears
  EXPECT_EQ(s.stats().free_blocks, s.stats().total_blocks);
}

// A chat's next turn sends the conversation so far as its prompt: the blocks the first turn's
// generated tokens filled are cached too, so the second turn computes only what follows them
// (with blocks of 4: a 10-token prompt and 14 new tokens write the keys and values of 23
// positions, the last new token's never: 5 whole blocks), and its tokens are those of
// one-at-a-time decoding.
TEST(Scheduler, ANextChatTurnReusesTheBlocksOfTheAnswerBeforeIt) {
  const ModelConfig c = config(false);
  model::Model m(c);
  m.init_weights(3);
  SchedulerOptions opt;
  opt.max_batch = 2;
  opt.block_size = 4;
  Scheduler s(m, opt);
  auto turn = [&](const std::vector<int32_t>& prompt, int64_t max_tokens) {
    std::vector<int32_t> tokens;
    s.submit(collecting(prompt, max_tokens, &tokens));
    run_to_end(s);
    GenerateOptions g;
    g.max_new_tokens = max_tokens;
    EXPECT_EQ(tokens, generate(m, prompt, g));
    return tokens;
  };
  std::vector<int32_t> conversation = random_tokens(7, 0, 10, c.vocab_size);
  const std::vector<int32_t> answer = turn(conversation, 14);
  ASSERT_EQ(answer.size(), 14u);
  EXPECT_EQ(s.stats().cached_prompt_tokens, 0);
  conversation.insert(conversation.end(), answer.begin(), answer.end());
  const std::vector<int32_t> question = random_tokens(7, 1, 5, c.vocab_size);
  conversation.insert(conversation.end(), question.begin(), question.end());
  turn(conversation, 6);
  EXPECT_EQ(s.stats().cached_prompt_tokens, 20);
  EXPECT_EQ(s.stats().free_blocks, s.stats().total_blocks);
}

// A request queued behind a full batch leaves admission nothing to do, so the running batch still
// launches its steps ahead: two requests of 20 tokens (a prefill step, then 19 decode steps, of
// which the first is built from scratch and the other 18 follow) while a third waits for a slot,
// then the third alone the same way. Not following while anything waits would give 18.
TEST(Scheduler, AQueuedRequestWithoutASlotKeepsStepsLaunchedAhead) {
  const ModelConfig c = config(false);
  model::Model m(c);
  m.init_weights(3);
  SchedulerOptions opt;
  opt.max_batch = 2;
  opt.block_size = 4;
  Scheduler s(m, opt);
  for (int i = 0; i < 3; ++i) s.submit(request({1, 2, 3}, 20));
  while (s.step()) {
  }
  EXPECT_EQ(s.stats().followed_steps, 2 * 18);
}

// run() on its own thread serves requests submitted from others; stop(drain) finishes them.
TEST(Scheduler, EngineThreadServesConcurrentSubmitters) {
  const ModelConfig c = config(false);
  model::Model m(c);
  m.init_weights(3);
  const auto ps = prompts(c.vocab_size);
  SchedulerOptions opt;
  opt.max_batch = 3;
  opt.step_tokens = 8;
  opt.block_size = 4;
  Scheduler s(m, opt);
  std::thread engine([&] { s.run(); });
  std::vector<Outcome> out(ps.size());
  std::vector<std::thread> clients;
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    clients.emplace_back([&, i] {
      Request r;
      r.prompt = ps[i];
      r.max_tokens = 6;
      r.on_token = [&, i](int32_t t) {
        out[i].tokens.push_back(t);
        return true;
      };
      r.on_finish = [&, i](FinishReason reason, const std::string&) {
        std::lock_guard<std::mutex> lock(mu);
        out[i].reason = reason;
        ++done;
        cv.notify_all();
      };
      s.submit(std::move(r));
    });
  }
  for (auto& t : clients) t.join();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done == static_cast<int>(ps.size()); });
  }
  s.stop(/*drain=*/true);
  engine.join();
  for (size_t i = 0; i < ps.size(); ++i) {
    GenerateOptions g;
    g.max_new_tokens = 6;
    EXPECT_EQ(out[i].tokens, generate(m, ps[i], g)) << "prompt " << i;
    EXPECT_EQ(out[i].reason, FinishReason::kLength);
  }
}

}  // namespace
}  // namespace moex::infer
