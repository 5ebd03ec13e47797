// Collectives on tensors of the model's device through the GPU communicator (dist/
// nccl_communicator.h): queued on the device's stream like any op, so the ops before it have
// written the tensor and the ops after it read the sum; the host does not wait.
#pragma once

#include "core/tensor.h"
#include "dist/nccl_communicator.h"

namespace moex::ops {

// t = the sum over the communicator's ranks of every rank's t, in place (f32 or bf16 on a GPU).
void all_reduce_sum(const Tensor& t, dist::NcclCommunicator& comm);

}  // namespace moex::ops
