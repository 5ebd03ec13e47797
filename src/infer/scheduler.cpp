#include "infer/scheduler.h"

#include <algorithm>

#include "core/error.h"
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
  std::vector<int32_t> generated;
  int32_t pending = -1;  // the last sampled token, not yet in the cache
  bool done = false;
  int64_t length() const { return prefilled + static_cast<int64_t>(generated.size()); }
  bool prefilling() const { return prefilled < static_cast<int64_t>(request.prompt.size()); }
};

namespace {

SchedulerOptions resolved(const model::Model& model, SchedulerOptions o) {
  MOEX_CHECK(o.max_batch >= 1, "serving: max_batch must be >= 1, got ", o.max_batch);
  MOEX_CHECK(o.step_tokens >= o.max_batch, "serving: step_tokens (", o.step_tokens,
             ") must be at least max_batch (", o.max_batch, ")");
  MOEX_CHECK(o.block_size >= 1, "serving: block_size must be >= 1, got ", o.block_size);
  if (o.max_context <= 0) o.max_context = model.config().max_seq_len;
  if (model.config().positions == PositionType::kLearned)
    MOEX_CHECK(o.max_context <= model.config().max_seq_len, "serving: max_context (", o.max_context,
               ") exceeds the learned positions of the model (", model.config().max_seq_len, ")");
  if (o.num_blocks <= 0)
    o.num_blocks = o.max_batch * ((o.max_context + o.block_size - 1) / o.block_size);
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
  // Requests still known get their on_finish, so no client waits forever.
  for (auto& seq : running_) finish(*seq, FinishReason::kCancelled);
  for (auto& seq : waiting_)
    if (seq->request.on_finish) seq->request.on_finish(FinishReason::kCancelled, "");
}

uint64_t Scheduler::submit(Request request) {
  MOEX_CHECK(!request.prompt.empty(), "the prompt is empty (no tokens)");
  MOEX_CHECK(request.max_tokens >= 1, "max_tokens must be >= 1, got ", request.max_tokens);
  check_sampling_params(request.sampling);
  const int64_t vocab = model_.config().vocab_size;
  for (int32_t t : request.prompt)
    MOEX_CHECK(t >= 0 && t < vocab, "prompt token ", t, " is outside the vocabulary of ", vocab);
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  MOEX_CHECK(total <= options_.max_context, "the prompt (", request.prompt.size(),
             " tokens) plus max_tokens (", request.max_tokens, ") exceeds the context of ",
             options_.max_context, " tokens");
  MOEX_CHECK(pool_.blocks_for(total) <= pool_.num_blocks(), "the request needs ",
             pool_.blocks_for(total), " KV blocks, the pool holds ", pool_.num_blocks());
  auto seq = std::make_unique<Sequence>();
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
  std::unique_lock<std::mutex> lock(mutex_);
  // Cancellations first: waiting ones leave the queue, running ones end below.
  std::vector<uint64_t> cancelled;
  cancelled.swap(cancelled_);
  std::vector<std::unique_ptr<Sequence>> dropped;
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
  while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_batch) {
    Sequence& next = *waiting_.front();
    const int64_t total =
        static_cast<int64_t>(next.request.prompt.size()) + next.request.max_tokens;
    if (!pool_.reserve(next.blocks, total)) break;  // first come, first served: wait for blocks
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    --stats_.waiting;
    ++stats_.running;
  }
  lock.unlock();
  for (auto& seq : dropped)
    if (seq->request.on_finish) seq->request.on_finish(FinishReason::kCancelled, "");
  for (auto& seq : running_)
    if (std::find(cancelled.begin(), cancelled.end(), seq->id) != cancelled.end())
      finish(*seq, FinishReason::kCancelled);
}

bool Scheduler::step() {
  const auto ended = [](const std::unique_ptr<Sequence>& s) { return s->done; };
  running_.erase(std::remove_if(running_.begin(), running_.end(), ended), running_.end());
  admit();  // may end cancelled ones
  running_.erase(std::remove_if(running_.begin(), running_.end(), ended), running_.end());
  if (running_.empty()) {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.running = 0;
    stats_.free_blocks = pool_.free_blocks();
    return false;
  }

  // This step's tokens: one per decoding sequence, then prompt chunks within the token budget.
  std::vector<int32_t> ids;
  std::vector<model::SequenceSlice> slices;
  std::vector<Sequence*> in_step;
  int64_t budget = options_.step_tokens;
  for (auto& seq : running_) {
    if (seq->prefilling()) continue;
    model::SequenceSlice s;
    s.start_pos = seq->length();  // the pending token goes right after the cached ones
    s.len = 1;
    ids.push_back(seq->pending);
    slices.push_back(s);
    in_step.push_back(seq.get());
    --budget;
  }
  int64_t prompt_tokens = 0;
  for (auto& seq : running_) {
    if (!seq->prefilling() || budget <= 0) continue;
    const std::vector<int32_t>& prompt = seq->request.prompt;
    const int64_t len = std::min(budget, static_cast<int64_t>(prompt.size()) - seq->prefilled);
    model::SequenceSlice s;
    s.start_pos = seq->prefilled;
    s.len = len;
    ids.insert(ids.end(), prompt.begin() + seq->prefilled, prompt.begin() + seq->prefilled + len);
    slices.push_back(s);
    in_step.push_back(seq.get());
    budget -= len;
    prompt_tokens += len;
  }
  for (size_t i = 0; i < slices.size(); ++i) {
    slices[i].blocks = in_step[i]->blocks.data();
    slices[i].num_blocks = static_cast<int64_t>(in_step[i]->blocks.size());
  }

  // Each sequence's next token is drawn on the device (ops::sample_rows), so only [S] ids come
  // back, whatever the sampling. The draw counter is the number of tokens generated before this
  // one, as in infer::generate; a sequence still prefilling after this step draws nothing used.
  std::vector<ops::SampleParams> sampling(in_step.size());
  for (size_t i = 0; i < in_step.size(); ++i) {
    const Sequence& seq = *in_step[i];
    const bool prefill_left =
        seq.prefilling() &&
        seq.prefilled + slices[i].len < static_cast<int64_t>(seq.request.prompt.size());
    if (prefill_left) continue;  // greedy: the cheapest
    const SamplingParams& p = seq.request.sampling;
    sampling[i].temperature = p.temperature;
    sampling[i].top_p = p.top_p;
    sampling[i].top_k = p.top_k;
    sampling[i].seed = p.seed;
    // A decoding sequence adds its pending token to `generated` below.
    sampling[i].draw = seq.pending < 0 ? 0 : static_cast<uint64_t>(seq.generated.size()) + 1;
  }
  std::vector<int32_t> next_ids(in_step.size());
  try {
    model_.forward_paged(ids.data(), slices, kv_, nullptr, next_ids.data(), sampling.data());
  } catch (const Error& e) {  // the step's sequences end with the error; the others go on
    for (Sequence* seq : in_step) finish(*seq, FinishReason::kError, e.message());
    return true;
  }

  int64_t new_tokens = 0;
  for (size_t i = 0; i < in_step.size(); ++i) {
    Sequence& seq = *in_step[i];
    if (seq.prefilling()) {
      seq.prefilled += slices[i].len;
      if (seq.prefilling()) continue;  // more prompt next step; these logits are not used
    } else {
      seq.generated.push_back(seq.pending);  // its keys/values are in the cache now
    }
    const int32_t next = next_ids[i];
    seq.pending = next;
    ++new_tokens;
    const bool keep = !seq.request.on_token || seq.request.on_token(next);
    const int64_t emitted = static_cast<int64_t>(sampling[i].draw) + 1;  // tokens so far
    const auto& stops = seq.request.stop_tokens;
    if (!keep)
      finish(seq, FinishReason::kCancelled);
    else if (std::find(stops.begin(), stops.end(), next) != stops.end())
      finish(seq, FinishReason::kStop);
    else if (emitted >= seq.request.max_tokens)
      finish(seq, FinishReason::kLength);
  }
  running_.erase(std::remove_if(running_.begin(), running_.end(), ended), running_.end());
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.steps += 1;
  stats_.last_batch = static_cast<int64_t>(in_step.size());
  stats_.generated_tokens += new_tokens;
  stats_.prompt_tokens += prompt_tokens;
  stats_.running = static_cast<int64_t>(running_.size());
  stats_.free_blocks = pool_.free_blocks();
  return true;
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
