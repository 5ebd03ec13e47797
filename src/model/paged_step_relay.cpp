#include "model/paged_step_relay.h"

#include <cstring>

#include "core/error.h"

namespace moex::model {
namespace {

// Words of one SampleParams (its bytes, so any field layout travels).
constexpr int64_t kSampleWords =
    static_cast<int64_t>((sizeof(ops::SampleParams) + sizeof(int64_t) - 1) / sizeof(int64_t));

// The message: [kind (1 step, 0 end), ids_follow_last, S, rows, has_sampling], the ids [rows]
// unless they follow, then per sequence [start_pos, len, all_logits, num_blocks, blocks...], then
// S sampling records when has_sampling.
// The length goes first and the others may wait for it long (an idle server): they yield.
void broadcast_words(dist::Communicator& group, std::vector<int64_t>& words) {
  int64_t size = static_cast<int64_t>(words.size());
  group.broadcast_yielding(size, 0);
  words.resize(static_cast<size_t>(size));
  group.broadcast(words.data(), size, 0);
}

}  // namespace

void send_paged_step(dist::Communicator& group, const int32_t* ids,
                     const std::vector<SequenceSlice>& seqs, const ops::SampleParams* sampling,
                     bool ids_follow_last) {
  MOEX_CHECK(group.rank() == 0, "send_paged_step: tp rank 0 sends the steps");
  int64_t rows = 0;
  for (const SequenceSlice& s : seqs) rows += s.len;
  std::vector<int64_t> words{1, ids_follow_last, static_cast<int64_t>(seqs.size()), rows,
                             sampling != nullptr};
  if (!ids_follow_last) words.insert(words.end(), ids, ids + rows);
  for (const SequenceSlice& s : seqs) {
    words.insert(words.end(), {s.start_pos, s.len, s.all_logits, s.num_blocks});
    words.insert(words.end(), s.blocks, s.blocks + s.num_blocks);
  }
  for (size_t i = 0; sampling != nullptr && i < seqs.size(); ++i) {
    int64_t record[kSampleWords] = {};
    std::memcpy(record, &sampling[i], sizeof(ops::SampleParams));
    words.insert(words.end(), record, record + kSampleWords);
  }
  broadcast_words(group, words);
}

void send_paged_end(dist::Communicator& group) {
  MOEX_CHECK(group.rank() == 0, "send_paged_end: tp rank 0 sends the steps");
  std::vector<int64_t> words{0};
  broadcast_words(group, words);
}

bool receive_paged_step(dist::Communicator& group, PagedStepMessage& message) {
  MOEX_CHECK(group.rank() != 0, "receive_paged_step: tp rank 0 sends the steps");
  std::vector<int64_t> words;
  broadcast_words(group, words);
  MOEX_CHECK(!words.empty(), "receive_paged_step: an empty message");
  if (words[0] == 0) return false;
  size_t at = 0;
  auto next = [&]() {
    MOEX_CHECK(at < words.size(), "receive_paged_step: a message cut short at word ", at);
    return words[at++];
  };
  next();  // kind
  message.ids_follow_last = next() != 0;
  const int64_t num_seqs = next(), rows = next();
  const bool has_sampling = next() != 0;
  message.ids.clear();
  if (!message.ids_follow_last)
    for (int64_t r = 0; r < rows; ++r) message.ids.push_back(static_cast<int32_t>(next()));
  message.seqs.assign(static_cast<size_t>(num_seqs), SequenceSlice{});
  message.blocks.assign(static_cast<size_t>(num_seqs), {});
  for (int64_t i = 0; i < num_seqs; ++i) {
    SequenceSlice& s = message.seqs[static_cast<size_t>(i)];
    s.start_pos = next();
    s.len = next();
    s.all_logits = next() != 0;
    s.num_blocks = next();
    std::vector<int32_t>& blocks = message.blocks[static_cast<size_t>(i)];
    for (int64_t b = 0; b < s.num_blocks; ++b) blocks.push_back(static_cast<int32_t>(next()));
    s.blocks = blocks.data();
  }
  message.sampling.clear();
  for (int64_t i = 0; has_sampling && i < num_seqs; ++i) {
    int64_t record[kSampleWords];
    for (int64_t w = 0; w < kSampleWords; ++w) record[w] = next();
    ops::SampleParams p;
    std::memcpy(&p, record, sizeof(ops::SampleParams));
    message.sampling.push_back(p);
  }
  MOEX_CHECK(at == words.size(), "receive_paged_step: ", words.size() - at, " words left over");
  return true;
}

}  // namespace moex::model
