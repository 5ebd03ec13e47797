// Serving under tensor parallelism (docs/parallelism.md §Serving under tensor parallelism): tp
// rank 0 runs the scheduler, and each serving step it launches is sent to the group's other
// ranks, which launch the same step on their parts of the model (Model::mirror_paged_steps).
// A step travels as its inputs to Model::launch_paged: the new tokens' ids, the sequences'
// slices with their block tables, the sampling parameters and whether the ids follow the last
// step. Two broadcasts a step over the tp group's host communicator: the length, then the words.
#pragma once

#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "model/paged_kv.h"
#include "ops/sample.h"

namespace moex::model {

// One received step; seqs[i].blocks points into blocks[i].
struct PagedStepMessage {
  bool ids_follow_last = false;
  std::vector<int32_t> ids;  // [rows], empty when the ids follow the last step
  std::vector<SequenceSlice> seqs;
  std::vector<std::vector<int32_t>> blocks;
  std::vector<ops::SampleParams> sampling;  // [S], or empty: greedy
};

// Root (rank 0 of `group`) side: one step, or the end of the steps.
void send_paged_step(dist::Communicator& group, const int32_t* ids,
                     const std::vector<SequenceSlice>& seqs, const ops::SampleParams* sampling,
                     bool ids_follow_last);
void send_paged_end(dist::Communicator& group);
// The other ranks: the next step into `message`; false when the root sent the end.
bool receive_paged_step(dist::Communicator& group, PagedStepMessage& message);

}  // namespace moex::model
