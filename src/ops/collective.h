// Collectives on tensors of the model's device through a GPU group (dist/device_group.h): queued
// on the device's stream like any op, so the ops before it have written the tensor and the ops
// after it read the sum (the host does not wait, except on the host-staged group).
#pragma once

#include "core/tensor.h"
#include "dist/device_group.h"

namespace moex::ops {

// t = the sum over the communicator's ranks of every rank's t, in place (f32 or bf16 on a GPU).
void all_reduce_sum(const Tensor& t, dist::DeviceGroup& comm);
// send [size * n]: recv [n] = the sum over ranks of their send block [rank * n, n) (f32).
void reduce_scatter_sum(const Tensor& send, const Tensor& recv, dist::DeviceGroup& comm);
// recv [size * n] = every rank's send [n], in rank order.
void all_gather(const Tensor& send, const Tensor& recv, dist::DeviceGroup& comm);

// Detached forms (dist/device_group.h): queued after the ops before them, but the ops queued after
// them do not wait, so they run beside the collective. Until wait() has queued the wait for it,
// no op may read or write the collective's tensors.
struct PendingCollective {
  Device device;
  dist::DeviceGroup::Event done = nullptr;  // null: nothing to wait for
};
PendingCollective all_reduce_sum_detached(const Tensor& t, dist::DeviceGroup& comm);
PendingCollective reduce_scatter_sum_detached(const Tensor& send, const Tensor& recv,
                                              dist::DeviceGroup& comm);
// The ops queued from now on run after the collective.
void wait(const PendingCollective& pending);

}  // namespace moex::ops
