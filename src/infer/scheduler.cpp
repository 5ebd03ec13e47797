#include "infer/scheduler.h"

#include <algorithm>
#include <climits>
#include <optional>

#include "core/error.h"
#include "core/logging.h"
#include "dist/communicator.h"
#include "ops/sample.h"

namespace moex::infer {

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "error";
}

struct Scheduler::Sequence {
  uint64_t id = 0;
  Request request;
  std::vector<int32_t> blocks;  // block table
  int64_t prefilled = 0;        // prompt tokens whose keys/values are in the cache
  int64_t registered = 0;       // leading blocks offered to the prefix cache (KVBlockPool)
  std::vector<int32_t> generated;
  int32_t pending = -1;  // the last sampled token, not yet in the cache
  bool done = false;
  int64_t length() const { return prefilled + static_cast<int64_t>(generated.size()); }
  bool prefilling() const { return prefilled < static_cast<int64_t>(request.prompt.size()); }
  // Its steps need the logits on the host: they are changed before sampling, or reported.
  bool on_host() const {
    return request.logprobs >= 0 || !request.adjustments.empty() || json != nullptr;
  }
  std::unique_ptr<JsonConstraint> json;  // the request's format constraint, if any
  // The tokens generated so far, the one not yet in the cache included (what penalties count).
  std::vector<int32_t> output() const {
    std::vector<int32_t> out = generated;
    if (pending >= 0) out.push_back(pending);
    return out;
  }
};

namespace {

constexpr int64_t kMaxLogitBytes = int64_t{64} << 20;

SchedulerOptions resolved(const model::Model& model, SchedulerOptions o) {
  // Bounds far above any real setting, so that the products below cannot overflow; the memory
  // a setting asks for is checked when the pool is allocated.
  constexpr int64_t kMaxBatch = int64_t{1} << 16, kMaxBlockSize = int64_t{1} << 16;
  constexpr int64_t kMaxContext = INT32_MAX;
  MOEX_CHECK(o.max_batch >= 1 && o.max_batch <= kMaxBatch, "serving: max_batch must be in [1, ",
             kMaxBatch, "], got ", o.max_batch);
  MOEX_CHECK(o.step_tokens >= o.max_batch && o.step_tokens <= kMaxContext, "serving: step_tokens (",
             o.step_tokens, ") must be in [max_batch (", o.max_batch, "), ", kMaxContext, "]");
  MOEX_CHECK(o.block_size >= 1 && o.block_size <= kMaxBlockSize,
             "serving: block_size must be in [1, ", kMaxBlockSize, "], got ", o.block_size);
  MOEX_CHECK(o.max_context >= 0 && o.max_context <= kMaxContext,
             "serving: max_context must be in [0, ", kMaxContext,
             "] (0: the model's max_seq_len), got ", o.max_context);
  MOEX_CHECK(o.num_blocks >= 0 && o.num_blocks <= INT32_MAX, "serving: num_blocks (the KV cache's ",
             "blocks) must be in [0, ", INT32_MAX, "] (0: enough for max_batch sequences), got ",
             o.num_blocks);
  const ModelConfig& config = model.config();
  if (o.max_context == 0) o.max_context = config.max_seq_len;
  if (config.positions == PositionType::kLearned)
    MOEX_CHECK(o.max_context <= config.max_seq_len, "serving: max_context (", o.max_context,
               ") exceeds the learned positions of the model (", config.max_seq_len, ")");
  else if (o.max_context > config.max_seq_len)
    MOEX_WARN("serving: max_context (", o.max_context, ") runs past the model's max_seq_len (",
              config.max_seq_len, "): RoPE positions beyond the trained length");
  if (o.num_blocks == 0) {
    o.num_blocks = o.max_batch * ((o.max_context + o.block_size - 1) / o.block_size);
    MOEX_CHECK(o.num_blocks <= INT32_MAX, "serving: max_batch (", o.max_batch,
               ") sequences of max_context (", o.max_context, ") positions need ", o.num_blocks,
               " KV blocks of ", o.block_size, ", more than ", INT32_MAX,
               "; lower them or size the cache with num_blocks");
  }
  // The KV pool of a CPU model, all layers' keys and values, checked before any of it (or the
  // pool's block list) is allocated; one layer's tensor alone could fit where the pool cannot.
  if (model.device().is_cpu()) {
    const double bytes = model.paged_kv_bytes(o.num_blocks, o.block_size);
    const double memory = static_cast<double>(host_memory_bytes());
    constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
    MOEX_CHECK(bytes <= memory, "serving: a KV cache of ", o.num_blocks, " blocks of ",
               o.block_size, " positions (max_batch ", o.max_batch, " sequences of max_context ",
               o.max_context, ") needs ", bytes / kGiB, " GiB, more than this machine's ",
               memory / kGiB,
               " GiB of memory and swap; lower them (moex serve: --max-batch, --max-context, "
               "whose default is the model's max_seq_len, or --kv-blocks; moex generate: "
               "--max-new-tokens)");
  }
  return o;
}

}  // namespace

Scheduler::Scheduler(model::Model& model, const SchedulerOptions& options)
    : model_(model),
      options_(resolved(model, options)),
      pool_(options_.num_blocks, options_.block_size),
      kv_(model.make_paged_kv(options_.num_blocks, options_.block_size)) {
  stats_.total_blocks = options_.num_blocks;
  stats_.free_blocks = options_.num_blocks;
  if (options_.cuda_graphs) kv_.table_width = pool_.blocks_for(options_.max_context);
}

Scheduler::~Scheduler() {
  // A launched step is read first (the model holds it); then requests still known get their
  // on_finish, so no client waits forever.
  collect_launched();
  for (auto& seq : running_) finish(*seq, FinishReason::kCancelled);
  for (auto& seq : waiting_)
    if (seq->request.on_finish) seq->request.on_finish(FinishReason::kCancelled, "");
  // The mirroring tp ranks wait for the next step: tell them there is none.
  try {
    model_.end_mirrored_steps();
  } catch (const std::exception& e) {
    MOEX_LOG(kError, "ending the tensor-parallel serving steps: ", e.what());
    dist::Communicator::abort_job(1);
  }
}

void Scheduler::mirror() {
  model_.mirror_paged_steps(kv_);
}

uint64_t Scheduler::submit(Request request) {
  MOEX_CHECK(!request.prompt.empty(), "the prompt is empty (no tokens)");
  MOEX_CHECK(request.max_tokens >= 1, "max_tokens must be >= 1, got ", request.max_tokens);
  check_sampling_params(request.sampling);
  const int64_t vocab = model_.config().vocab_size;
  check_logit_adjustments(request.adjustments, vocab);
  MOEX_CHECK(request.logprobs >= -1 && request.logprobs <= kMaxTopLogprobs,
             "logprobs must be in [0, ", kMaxTopLogprobs, "] (or -1: none), got ",
             request.logprobs);
  MOEX_CHECK(!request.prompt_logprobs || request.logprobs >= 0,
             "prompt log-probabilities need logprobs >= 0");
  for (int32_t t : request.prompt)
    MOEX_CHECK(t >= 0 && t < vocab, "prompt token ", t, " is outside the vocabulary of ", vocab);
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  // Compared as a difference: prompt + max_tokens could overflow for a huge max_tokens.
  MOEX_CHECK(request.max_tokens <= options_.max_context - prompt_len, "the prompt (", prompt_len,
             " tokens) plus max_tokens (", request.max_tokens, ") exceeds the context of ",
             options_.max_context, " tokens");
  const int64_t total = prompt_len + request.max_tokens;
  MOEX_CHECK(pool_.blocks_for(total) <= pool_.num_blocks(), "the request needs ",
             pool_.blocks_for(total), " KV blocks, the pool holds ", pool_.num_blocks());
  auto seq = std::make_unique<Sequence>();
  if (request.format) {
    MOEX_CHECK(request.tokens != nullptr && request.tokens->size() == vocab,
               "format: ", request.tokens ? request.tokens->size() : 0,
               " token texts for a vocabulary of ", vocab);
    seq->json = std::make_unique<JsonConstraint>(request.format, request.tokens);
  }
  seq->request = std::move(request);
  std::lock_guard<std::mutex> lock(mutex_);
  MOEX_CHECK(!stopping_, "the server is shutting down");
  seq->id = next_id_++;
  const uint64_t id = seq->id;
  waiting_.push_back(std::move(seq));
  ++stats_.waiting;
  work_.notify_one();
  return id;
}

void Scheduler::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_.push_back(id);
  work_.notify_one();
}

void Scheduler::finish(Sequence& seq, FinishReason reason, const std::string& error) {
  if (seq.done) return;
  seq.done = true;
  pool_.release(seq.blocks);
  {
    // Counted before the client hears of the end, so /metrics read after a response agrees.
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.finished;
    --stats_.running;
    stats_.free_blocks = pool_.free_blocks();
  }
  if (seq.request.on_finish) seq.request.on_finish(reason, error);
}

// Moves waiting requests into the running set while there is room: a free batch slot and KV
// blocks for the whole request (prompt + max_tokens), so a running request never waits for memory.
void Scheduler::admit() {
  // Blocks freed by ended sequences are handed out here, so no launched step may still write them.
  MOEX_CHECK(launched_ == nullptr, "Scheduler::admit with a launched step not collected");
  // Cancellations first: waiting ones leave the queue and running ones end, so their batch slots
  // and blocks are free (and no one waits for prompt blocks they will not compute).
  std::vector<uint64_t> cancelled;
  std::vector<std::unique_ptr<Sequence>> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cancelled.swap(cancelled_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (std::find(cancelled.begin(), cancelled.end(), (*it)->id) != cancelled.end()) {
        dropped.push_back(std::move(*it));
        it = waiting_.erase(it);
        --stats_.waiting;
        ++stats_.finished;  // cancelled before it ran: ended all the same
      } else {
        ++it;
      }
    }
  }
  for (auto& seq : dropped)
    if (seq->request.on_finish) seq->request.on_finish(FinishReason::kCancelled, "");
  for (auto& seq : running_)
    if (std::find(cancelled.begin(), cancelled.end(), seq->id) != cancelled.end())
      finish(*seq, FinishReason::kCancelled);
  std::unique_lock<std::mutex> lock(mutex_);
  std::vector<Sequence*> admitted;
  while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_batch) {
    Sequence& next = *waiting_.front();
    const int64_t total =
        static_cast<int64_t>(next.request.prompt.size()) + next.request.max_tokens;
    // The prompt's whole blocks another prompt computed, up to its last token, whose logits
    // give the first new token (all of them when the request wants the prompt's logits).
    const std::vector<int32_t>& prompt = next.request.prompt;
    const bool cacheable = options_.prefix_caching && !next.request.prompt_logprobs;
    if (cacheable)
      next.prefilled =
          pool_.match_prefix(prompt, static_cast<int64_t>(prompt.size()) - 1, next.blocks);
    next.registered = static_cast<int64_t>(next.blocks.size());
    // First come, first served: wait for blocks, or for a running prompt's blocks this one
    // starts with (a step or two, instead of computing them alongside it).
    if ((cacheable && prefix_in_progress(next)) || !pool_.reserve(next.blocks, total)) {
      pool_.release(next.blocks);
      next.prefilled = next.registered = 0;
      break;
    }
    stats_.cached_prompt_tokens += next.prefilled;
    admitted.push_back(&next);
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    --stats_.waiting;
    ++stats_.running;
  }
  lock.unlock();
  for (Sequence* seq : admitted)
    if (seq->request.on_admitted) seq->request.on_admitted(seq->prefilled);
}

bool Scheduler::prefix_in_progress(const Sequence& next) const {
  const std::vector<int32_t>& prompt = next.request.prompt;
  const int64_t block = pool_.block_size();
  // The most a prompt takes from the cache: its whole blocks before its last token.
  const int64_t usable = (static_cast<int64_t>(prompt.size()) - 1) / block * block;
  for (const auto& running : running_) {
    if (running->done) continue;
    const std::vector<int32_t>& other = running->request.prompt;
    const size_t n = static_cast<size_t>(std::min<int64_t>(usable, other.size()));
    size_t same = 0;
    while (same < n && prompt[same] == other[same]) ++same;
    const int64_t shared = static_cast<int64_t>(same) / block * block;
    if (shared > next.prefilled && shared > running->registered * block) return true;
  }
  return false;
}

// A launched step whose tokens are not read yet: its sequences (kept alive until it is collected),
// their slices and sampling, and whether every row is one decode token.
struct Scheduler::Launched {
  std::vector<Sequence*> seqs;
  std::vector<model::SequenceSlice> slices;
  std::vector<ops::SampleParams> sampling;
  int64_t prompt_tokens = 0;
  bool decode_only = false;
  // Slices are built without their block tables: point each at its sequence's before a forward.
  void point_at_blocks() {
    for (size_t i = 0; i < slices.size(); ++i) {
      slices[i].blocks = seqs[i]->blocks.data();
      slices[i].num_blocks = static_cast<int64_t>(seqs[i]->blocks.size());
    }
  }
};

bool Scheduler::step() {
  // Steady decoding: the same sequences' next step goes out before the last step's tokens are
  // read (the device feeds them in as the ids), so the host's work between steps overlaps the
  // device's. The new step computes a token that is thrown away for a sequence the older step
  // ends; its key and value land inside the blocks that sequence held, which admit() hands out
  // only after this step is collected.
  if (launched_ && can_follow()) {
    std::unique_ptr<Launched> next = following(*launched_);
    // A following launch that fails ends nothing: step n is read as usual, and the next call
    // builds its step from scratch (and reports the error there if it repeats). Under tensor
    // parallelism a step that fails once the other ranks have it ends the job instead.
    const bool ok = launch(*next, /*follow=*/true, nullptr, /*finish_on_error=*/false);
    if (ok) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.followed_steps;
    }
    std::unique_ptr<Launched> older = std::move(launched_);
    launched_ = ok ? std::move(next) : nullptr;  // set before callbacks run in collect
    collect(*older);
    erase_ended();
    return true;
  }
  collect_launched();
  erase_ended();
  admit();  // may end cancelled ones
  erase_ended();
  if (running_.empty()) {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.running = 0;
    stats_.free_blocks = pool_.free_blocks();
    stats_.cached_blocks = pool_.cached_blocks();
    return false;
  }

  // This step's tokens: one per decoding sequence, then prompt chunks within the token budget.
  auto step = std::make_unique<Launched>();
  std::vector<int32_t> ids;
  int64_t budget = options_.step_tokens;
  for (auto& seq : running_) {
    if (seq->prefilling()) continue;
    model::SequenceSlice s;
    s.start_pos = seq->length();  // the pending token goes right after the cached ones
    s.len = 1;
    ids.push_back(seq->pending);
    step->slices.push_back(s);
    step->seqs.push_back(seq.get());
    --budget;
  }
  for (auto& seq : running_) {
    if (!seq->prefilling() || budget <= 0) continue;
    const std::vector<int32_t>& prompt = seq->request.prompt;
    int64_t len = std::min(budget, static_cast<int64_t>(prompt.size()) - seq->prefilled);
    // Prompt log-probabilities bring a [len, V] f32 block of logits to the host: at most
    // kMaxLogitBytes a step, so a long echo prompt does not grow the step's buffers for good.
    if (seq->request.prompt_logprobs)
      len = std::min(len, std::max<int64_t>(1, kMaxLogitBytes / (4 * model_.config().vocab_size)));
    model::SequenceSlice s;
    s.start_pos = seq->prefilled;
    s.len = len;
    ids.insert(ids.end(), prompt.begin() + seq->prefilled, prompt.begin() + seq->prefilled + len);
    step->slices.push_back(s);
    step->seqs.push_back(seq.get());
    budget -= len;
    step->prompt_tokens += len;
  }
  step->decode_only = step->prompt_tokens == 0;

  // Each sequence's next token is drawn on the device (ops::sample_rows), so only [S] ids come
  // back, whatever the sampling. The draw counter is the number of tokens generated before this
  // one, as in infer::generate; a sequence still prefilling after this step draws nothing used.
  step->sampling.resize(step->seqs.size());
  for (size_t i = 0; i < step->seqs.size(); ++i) {
    const Sequence& seq = *step->seqs[i];
    const bool prefill_left =
        seq.prefilling() &&
        seq.prefilled + step->slices[i].len < static_cast<int64_t>(seq.request.prompt.size());
    if (prefill_left) continue;  // greedy: the cheapest
    ops::SampleParams& sp = step->sampling[i];
    const SamplingParams& p = seq.request.sampling;
    sp.temperature = p.temperature;
    sp.top_p = p.top_p;
    sp.top_k = p.top_k;
    sp.seed = p.seed;
    // A decoding sequence adds its pending token to `generated` when the step is collected.
    sp.draw = seq.pending < 0 ? 0 : static_cast<uint64_t>(seq.generated.size()) + 1;
  }
  if (std::any_of(step->seqs.begin(), step->seqs.end(),
                  [](const Sequence* seq) { return seq->on_host(); })) {
    run_on_host(*step, ids);
    erase_ended();
    return true;
  }
  if (launch(*step, /*follow=*/false, ids.data())) {
    // A decode step stays in flight when the next call can follow it; any other is read now.
    launched_ = std::move(step);
    if (!can_follow()) collect_launched();
  }
  erase_ended();
  return true;
}

bool Scheduler::can_follow() const {
  if (!launched_ || !launched_->decode_only) return false;
  // Every running sequence is in the step and none has ended: the next step is the same rows.
  if (launched_->seqs.size() != running_.size()) return false;
  bool all_at_limit = true;  // then the next step would only make tokens to throw away
  for (size_t i = 0; i < launched_->seqs.size(); ++i) {
    const Sequence& seq = *launched_->seqs[i];
    if (seq.done) return false;
    all_at_limit = all_at_limit &&
                   static_cast<int64_t>(launched_->sampling[i].draw) + 1 >= seq.request.max_tokens;
  }
  if (all_at_limit) return false;
  // Nothing for admit() to do: no cancel, and no waiting request that a free slot could take.
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_.empty() &&
         (waiting_.empty() || static_cast<int64_t>(running_.size()) >= options_.max_batch);
}

std::unique_ptr<Scheduler::Launched> Scheduler::following(const Launched& last) const {
  auto next = std::make_unique<Launched>(last);
  next->prompt_tokens = 0;
  for (model::SequenceSlice& s : next->slices) ++s.start_pos;  // after the token now in flight
  for (ops::SampleParams& sp : next->sampling) ++sp.draw;
  return next;
}

bool Scheduler::launch(Launched& step, bool follow, const int32_t* ids, bool finish_on_error) {
  step.point_at_blocks();
  try {
    model_.launch_paged(ids, step.slices, kv_, step.sampling.data(), follow);
  } catch (const Error& e) {  // the step's sequences end with the error; the others go on
    // (under tensor parallelism only for an error before the step reached the other ranks)
    if (finish_on_error)
      for (Sequence* seq : step.seqs) finish(*seq, FinishReason::kError, e.message());
    return false;
  }
  return true;
}

void Scheduler::collect(Launched& step) {
  std::vector<int32_t> next_ids(step.seqs.size());
  try {
    model_.collect_paged(next_ids.data());
  } catch (const Error& e) {
    for (Sequence* seq : step.seqs) finish(*seq, FinishReason::kError, e.message());
    return;
  }
  deliver(step, next_ids, {});
}

// The step with its logits on the host: prompt log-probabilities of slices that ask for them,
// bias and penalties, sampling (what the device would draw from the same logits) and each new
// token's log-probability. Nothing is in flight (step() collected the last launched step).
void Scheduler::run_on_host(Launched& step, const std::vector<int32_t>& ids) {
  const int64_t vocab = model_.config().vocab_size;
  step.point_at_blocks();
  int64_t rows = 0;
  for (size_t i = 0; i < step.slices.size(); ++i) {
    const Sequence& seq = *step.seqs[i];
    model::SequenceSlice& s = step.slices[i];
    s.all_logits = seq.prefilling() && seq.request.prompt_logprobs;
    rows += s.all_logits ? s.len : 1;
  }
  std::vector<float> logits(static_cast<size_t>(rows * vocab));  // [rows, V]
  try {
    model_.forward_paged(ids.data(), step.slices, kv_, logits.data());
  } catch (const Error& e) {
    for (Sequence* seq : step.seqs) finish(*seq, FinishReason::kError, e.message());
    return;
  }
  std::vector<int32_t> next(step.seqs.size());
  std::vector<std::optional<TokenLogprob>> next_logprobs(step.seqs.size());
  std::vector<float> adjusted;
  const float* row = logits.data();
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    Sequence& seq = *step.seqs[i];
    const model::SequenceSlice& s = step.slices[i];
    const Request& r = seq.request;
    if (s.all_logits) {
      // Row t predicts the token at position start_pos + t + 1: a prompt token's, until the last.
      for (int64_t t = 0; t < s.len; ++t) {
        const auto pos = static_cast<size_t>(s.start_pos + t + 1);
        if (pos < r.prompt.size() && r.on_logprob && !seq.done)
          r.on_logprob(token_logprob(row, vocab, r.prompt[pos], r.logprobs));
        if (t + 1 < s.len) row += vocab;
      }
    }
    // Whether this row's token is the sequence's next (not a prompt still being prefilled).
    const bool emits =
        !seq.prefilling() || seq.prefilled + s.len >= static_cast<int64_t>(r.prompt.size());
    const float* sample_from = row;
    bool nothing_left = false;  // the JSON constraint left no token
    if (!r.adjustments.empty() || seq.json) {
      adjusted.assign(row, row + vocab);
      if (!r.adjustments.empty())
        apply_logit_adjustments(adjusted.data(), vocab, r.adjustments, r.prompt, seq.output());
      if (seq.json && emits)
        nothing_left = seq.json->mask(adjusted.data(), vocab, r.stop_tokens) == 0;
      sample_from = adjusted.data();
    }
    // The request's own sampling (step() gave a row still prefilling greedy, unused here).
    next[i] = sample_token(sample_from, vocab, r.sampling, step.sampling[i].draw);
    if (nothing_left) {
      // A whole object with no stop token to end it, or a vocabulary that cannot go on.
      if (seq.json->complete())
        finish(seq, FinishReason::kStop);
      else
        finish(seq, FinishReason::kError, "no token of the vocabulary continues the JSON");
    } else if (seq.json && emits) {
      seq.json->advance(next[i]);
    }
    if (r.logprobs >= 0) next_logprobs[i] = token_logprob(row, vocab, next[i], r.logprobs);
    row += vocab;
  }
  deliver(step, next, next_logprobs);
}

void Scheduler::deliver(Launched& step, const std::vector<int32_t>& next_ids,
                        const std::vector<std::optional<TokenLogprob>>& logprobs) {
  int64_t new_tokens = 0;
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    Sequence& seq = *step.seqs[i];
    if (seq.done) continue;  // ended by the step before (a following step's extra token)
    if (seq.prefilling()) {
      seq.prefilled += step.slices[i].len;
      if (options_.prefix_caching)
        pool_.register_prefix(seq.request.prompt, seq.prefilled, seq.blocks, seq.registered);
      if (seq.prefilling()) continue;  // more prompt next step; these logits are not used
    } else {
      seq.generated.push_back(seq.pending);  // its keys/values are in the cache now
      // A block this filled holds known tokens (prompt, then generated ones): cached too, for a
      // next chat turn that sends the conversation so far as its prompt.
      if (options_.prefix_caching && seq.length() % pool_.block_size() == 0) {
        std::vector<int32_t> tokens = seq.request.prompt;
        tokens.insert(tokens.end(), seq.generated.begin(), seq.generated.end());
        pool_.register_prefix(tokens, seq.length(), seq.blocks, seq.registered);
      }
    }
    const int32_t next = next_ids[i];
    seq.pending = next;
    ++new_tokens;
    if (i < logprobs.size() && logprobs[i] && seq.request.on_logprob)
      seq.request.on_logprob(*logprobs[i]);
    const bool keep = !seq.request.on_token || seq.request.on_token(next);
    const int64_t emitted = static_cast<int64_t>(step.sampling[i].draw) + 1;  // tokens so far
    const auto& stops = seq.request.stop_tokens;
    if (!keep)
      finish(seq, FinishReason::kCancelled);
    else if (std::find(stops.begin(), stops.end(), next) != stops.end())
      finish(seq, FinishReason::kStop);
    else if (emitted >= seq.request.max_tokens)
      finish(seq, FinishReason::kLength);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.steps += 1;
  stats_.last_batch = static_cast<int64_t>(step.seqs.size());
  stats_.generated_tokens += new_tokens;
  stats_.prompt_tokens += step.prompt_tokens;
}

void Scheduler::collect_launched() {
  if (!launched_) return;
  const std::unique_ptr<Launched> step = std::move(launched_);  // none launched while callbacks run
  collect(*step);
}

// Drops ended sequences, except those a launched step still holds (collect skips them).
void Scheduler::erase_ended() {
  const auto ended = [this](const std::unique_ptr<Sequence>& s) {
    return s->done && !(launched_ && std::find(launched_->seqs.begin(), launched_->seqs.end(),
                                               s.get()) != launched_->seqs.end());
  };
  running_.erase(std::remove_if(running_.begin(), running_.end(), ended), running_.end());
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.running = static_cast<int64_t>(
      std::count_if(running_.begin(), running_.end(), [](const auto& s) { return !s->done; }));
  stats_.free_blocks = pool_.free_blocks();
  stats_.cached_blocks = pool_.cached_blocks();
}

void Scheduler::run() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (stopping_ && !drain_) break;
      if (stopping_ && drain_ && waiting_.empty() && running_.empty()) break;
      // Sleep only when nothing runs; a cancel or a new request wakes the loop.
      work_.wait(lock, [&] {
        return stopping_ || !waiting_.empty() || !cancelled_.empty() || !running_.empty();
      });
    }
    step();
  }
  collect_launched();
  for (auto& seq : running_) finish(*seq, FinishReason::kCancelled);
  running_.clear();
  std::deque<std::unique_ptr<Sequence>> left;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    left.swap(waiting_);
    stats_.waiting = 0;
  }
  for (auto& seq : left)
    if (seq->request.on_finish) seq->request.on_finish(FinishReason::kCancelled, "");
}

void Scheduler::stop(bool drain) {
  std::lock_guard<std::mutex> lock(mutex_);
  stopping_ = true;
  drain_ = drain;
  work_.notify_all();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace moex::infer
