// Collectives on device buffers among the ranks of one group (docs/parallelism.md §Communicators):
// what a GPU module needs from its process group, without knowing how the bytes travel. The
// NCCL communicator (dist/nccl_communicator.h) is the one a run uses, one rank per GPU; the
// host-staged group (dist/host_staged_group.h) goes through MPI in host memory, so ranks may share
// a GPU; the GPU tests also run ranks as threads of one process on one GPU
// (tests/gpu/thread_device_group.h).
//
// Each collective is ordered after the work queued so far on `stream`, and work queued on `stream`
// afterwards sees its result; no host synchronization. Every rank of the group must call the same
// collectives in the same order. The returned event is recorded when the collective has finished
// (for host waits or other streams) and may be recorded again by a later collective.
#pragma once

#include <cstdint>
#include <memory>

#include "core/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*
struct CUevent_st;   // cudaEvent_t is CUevent_st*

namespace moex::dist {

class DeviceGroup {
 public:
  using Stream = CUstream_st*;
  using Event = CUevent_st*;
  virtual ~DeviceGroup() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: data[i] = the sum over ranks of data[i] (f32; NCCL takes more types).
  virtual Event all_reduce_sum(void* data, int64_t n, DType dtype, Stream stream) = 0;
  // send [size, n]: recv [n] = the sum over ranks of their send block [rank(), n] (f32).
  virtual Event reduce_scatter_sum(const void* send, void* recv, int64_t n, DType dtype,
                                   Stream stream) = 0;
  // recv [size, n] = every rank's send [n], in rank order.
  virtual Event all_gather(const void* send, void* recv, int64_t n, DType dtype, Stream stream) = 0;
  // send_counts[p] elements go to rank p (blocks back to back in send) and recv_counts[p] come
  // from rank p (back to back in recv); the counts are host arrays of size() entries, and rank p's
  // send_counts[q] must equal rank q's recv_counts[p].
  virtual Event all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                             const int64_t* recv_counts, DType dtype, Stream stream) = 0;

  // Detached forms (docs/parallelism.md §Overlapped gradient reductions): ordered after the work
  // queued so far on `stream`, like the ones above, but work queued on `stream` afterwards does
  // not wait for them, so it runs beside the collective. Until `stream` waits for the returned
  // event (ops::wait), nothing on it may read or write the buffers. These defaults are the
  // ordered forms, for groups whose collectives cannot run beside the caller's work (the
  // host-staged group, the test groups); NCCL overrides them.
  virtual Event all_reduce_sum_detached(void* data, int64_t n, DType dtype, Stream stream) {
    return all_reduce_sum(data, n, dtype, stream);
  }
  virtual Event reduce_scatter_sum_detached(const void* send, void* recv, int64_t n, DType dtype,
                                            Stream stream) {
    return reduce_scatter_sum(send, recv, n, dtype, stream);
  }
};

class Communicator;
struct NcclOptions;

// The GPU group of `group`'s ranks for a run: NCCL (one rank per GPU), or the host-staged group
// when the environment sets MOEX_GPU_COLLECTIVES=host (ranks sharing a GPU, or no NCCL). Every
// rank of `group` must call it; an unknown MOEX_GPU_COLLECTIVES is an error naming it.
std::unique_ptr<DeviceGroup> make_device_group(Communicator& group, const NcclOptions& options);

}  // namespace moex::dist
