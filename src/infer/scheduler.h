// Continuous batching over a paged KV cache: requests join and leave between steps; each step is
// one forward of the model over a chunk of every prefilling request's prompt (so a long prompt
// does not stall the running decodes) and the next token of every decoding request.
//
// Threads: submit() and cancel() may be called from any thread; step() (or run(), which loops
// over it on the calling thread) drives the model from one thread, which is also the one that
// calls the requests' callbacks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "infer/json_constraint.h"
#include "infer/kv_block_pool.h"
#include "infer/sampler.h"
#include "model/model.h"

namespace moex::infer {

enum class FinishReason { kStop, kLength, kCancelled, kError };
const char* finish_reason_name(FinishReason reason);  // "stop", "length", "cancelled", "error"

struct Request {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;  // new tokens at most (>= 1)
  SamplingParams sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after emitting one of these
  // Bias and penalties on the logits before sampling. A request with any, one that asks for
  // log-probabilities or one held to a format makes its steps run with the logits on the host.
  LogitAdjustments adjustments;
  // Not null: the new tokens must write this format, then a stop token, each token's text read
  // from `tokens` (infer/json_constraint.h).
  std::shared_ptr<const OutputFormat> format;
  std::shared_ptr<const TokenTable> tokens;
  // >= 0: each new token's log-probability with this many alternatives (<= kMaxTopLogprobs).
  int64_t logprobs = -1;
  // With logprobs >= 0: also each prompt token's from the second on (the first has no context).
  bool prompt_logprobs = false;
  // Each token's log-probabilities: the prompt's (positions 1 .. in order) while it is prefilled,
  // then each new token's just before on_token sees it.
  std::function<void(const TokenLogprob& logprob)> on_logprob;
  // Each new token as it is sampled; returning false cancels the request (a client went away).
  std::function<bool(int32_t token)> on_token;
  // Called once when the request gets its batch slot and KV blocks, with the prompt tokens taken
  // from the prefix cache (not computed).
  std::function<void(int64_t cached_tokens)> on_admitted;
  // Called once when the request ends, with the reason (and a message for kError).
  std::function<void(FinishReason reason, const std::string& error)> on_finish;
};

struct SchedulerOptions {
  int64_t max_batch = 8;      // sequences in one step
  int64_t step_tokens = 512;  // tokens in one step: decodes take one, prefills share the rest
  int64_t block_size = 16;    // positions per KV block
  int64_t num_blocks = 0;     // KV pool size; 0: enough for max_batch sequences of max_context
  int64_t max_context = 0;    // prompt + max_tokens limit; 0: the model's max_seq_len
  // On a GPU, decode steps replay one captured CUDA graph per batch size (model/paged_kv.h).
  bool cuda_graphs = true;
  // A prompt that starts with whole KV blocks an earlier prompt computed takes them instead of
  // computing them again (infer/kv_block_pool.h; docs/architecture.md, "Prefix caching").
  bool prefix_caching = true;
};

struct SchedulerStats {
  int64_t waiting = 0, running = 0;
  int64_t finished = 0, generated_tokens = 0, prompt_tokens = 0, steps = 0;
  int64_t last_batch = 0;  // sequences in the last step
  // Decode steps launched before the previous step's tokens were read (their ids taken on the
  // device): the host's work between steps overlapped the device's.
  int64_t followed_steps = 0;
  int64_t free_blocks = 0, total_blocks = 0;
  // Prompt tokens whose keys and values came from the prefix cache (not computed; not in
  // prompt_tokens), and the blocks the cache holds.
  int64_t cached_prompt_tokens = 0, cached_blocks = 0;
};

class Scheduler {
 public:
  Scheduler(model::Model& model, const SchedulerOptions& options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Checks the request (empty prompt, max_tokens, sampling, the context limit, whether it could
  // ever fit the KV pool) and queues it; a bad request throws and is not queued. Returns its id.
  uint64_t submit(Request request);
  // Ends a request at the next step (its on_finish sees kCancelled); unknown ids are ignored.
  void cancel(uint64_t id);

  // One step. Returns false when there was nothing to do. In steady decoding a step is launched
  // before the previous one's tokens are read, so a call may deliver the tokens (on_token,
  // on_finish) of the step launched by the call before it.
  bool step();
  // Steps until stop() (waiting for work when idle), then finishes what is left as cancelled
  // when `drain` is false, or serves it to the end when true.
  void run();
  void stop(bool drain);
  // Tensor-parallel serving (docs/parallelism.md §Serving under tensor parallelism): on the tp
  // ranks other than 0, runs the steps tp rank 0's scheduler launches, on this scheduler's KV
  // pool, until that scheduler is destroyed. Rank 0 takes the requests; this one takes none.
  void mirror();

  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return options_; }
  int64_t max_context() const { return options_.max_context; }

 private:
  struct Sequence;
  struct Launched;
  void admit();
  // Whether a running sequence is still to register whole blocks that `next`'s prompt starts with,
  // beyond the next.prefilled tokens it took from the cache.
  bool prefix_in_progress(const Sequence& next) const;
  void finish(Sequence& seq, FinishReason reason, const std::string& error = "");
  // Launched steps (docs/gpu-model.md §Decoding): whether the next step can be the same decode
  // rows with their ids taken on the device; that step; queueing one (false: it failed and its
  // sequences ended); reading one's tokens and applying them; dropping ended sequences.
  bool can_follow() const;
  std::unique_ptr<Launched> following(const Launched& last) const;
  bool launch(Launched& step, bool follow, const int32_t* ids = nullptr,
              bool finish_on_error = true);
  void collect(Launched& step);
  // A step whose sequences need their logits on the host (Sequence::on_host), run to the end.
  void run_on_host(Launched& step, const std::vector<int32_t>& ids);
  // Hands a read step's tokens to their sequences (logprobs[i]: row i's, when it has one) and ends
  // those that stop.
  void deliver(Launched& step, const std::vector<int32_t>& next_ids,
               const std::vector<std::optional<TokenLogprob>>& logprobs);
  void collect_launched();  // collect(launched_), if any, leaving launched_ empty
  void erase_ended();

  model::Model& model_;
  SchedulerOptions options_;
  KVBlockPool pool_;
  model::PagedKV kv_;
  std::vector<std::unique_ptr<Sequence>> running_;  // engine thread only
  std::unique_ptr<Launched> launched_;              // a step not collected yet, or null

  mutable std::mutex mutex_;  // guards waiting_, cancelled_, stats_, stop flags
  std::condition_variable work_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<uint64_t> cancelled_;
  SchedulerStats stats_;
  uint64_t next_id_ = 1;
  bool stopping_ = false, drain_ = false;
};

}  // namespace moex::infer
