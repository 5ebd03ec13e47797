// The GPU communicator (docs/parallelism.md §Communicators): NCCL collectives on device buffers,
// one rank per GPU. Its ranks are those of a Communicator group, and in an MPI job the NCCL unique
// id is broadcast over that group; without MPI, rank 0 publishes the id in a file that the other
// ranks read (dist/file_store.h).
//
// Every collective waits for the work already queued on the caller's stream, runs on the
// communicator's own stream and makes the caller's stream wait for it, so work queued on the
// caller's stream afterwards sees the result; no host synchronization. A watchdog thread ends the
// whole job (ncclCommAbort, then Communicator::abort_job) when NCCL reports an asynchronous error
// or a collective has not finished within the timeout, so a rank that fails never leaves the
// others waiting in a kernel forever.
//
// This header needs no CUDA headers (a CPU build includes it); a build without CUDA or NCCL throws
// a clear error from the constructors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "dist/device_group.h"

namespace moex::dist {

class Communicator;

struct NcclOptions {
  // File bootstrap: rank 0 writes the unique id here and the other ranks read it. Empty: the
  // environment's MOEX_NCCL_ID_FILE. Ignored in an MPI group of several ranks (MPI broadcasts it).
  // One file per communicator; rank 0 removes it when its init ends (joined or failed).
  std::string id_file;
  // How long a rank waits for the id file and for the communicator to come up.
  double bootstrap_timeout_s = 120;
  // A collective unfinished this long after it was queued ends the job. Negative: the
  // environment's MOEX_NCCL_TIMEOUT_S, else 600 (a peer may legitimately be slow, e.g. writing a
  // checkpoint; a peer that died usually shows as an NCCL error within seconds instead).
  double op_timeout_s = -1;
  // CUDA device of this rank (made current by the constructor); -1: the current device.
  int device = -1;
};

class NcclCommunicator : public DeviceGroup {
 public:
  // Stream (cudaStream_t; nullptr is the default stream) and Event come from DeviceGroup.

  // True when this build has NCCL (the constructors throw otherwise).
  static bool built();

  // The ranks of `group`; every rank of the group must call it. In an MPI group of several ranks
  // the id is broadcast over it, otherwise the file bootstrap of `options` is used (a group of one
  // needs no file, but rank 0 still publishes the id when a file is named).
  explicit NcclCommunicator(Communicator& group, NcclOptions options = {});
  // Without MPI: `size` processes, each told its `rank`, bootstrapped through the id file
  // (required when size > 1).
  NcclCommunicator(int rank, int size, NcclOptions options = {});
  // Waits for the queued collectives, then tears the NCCL communicator down.
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int size() const override;
  // The communicator's own stream (collectives run there).
  Stream stream() const;

  // The collectives take device pointers and T = kF32, kBF16, kF64, kI32 or kI64 (sums in that
  // type); sizes and layouts are Communicator's (dist/communicator.h). Each returns an event
  // recorded when it finishes, for host waits or other streams. The event belongs to the
  // communicator and may be recorded again by a later collective, which only makes a wait on it
  // longer. Buffers must stay allocated until the collective has finished.
  Event all_reduce_sum(void* data, int64_t n, DType dtype, Stream stream) override;
  Event all_gather(const void* send, void* recv, int64_t n, DType dtype, Stream stream) override;
  Event reduce_scatter_sum(const void* send, void* recv, int64_t n, DType dtype,
                           Stream stream) override;
  // The caller's stream does not wait for these (DeviceGroup's detached forms).
  Event all_reduce_sum_detached(void* data, int64_t n, DType dtype, Stream stream) override;
  Event reduce_scatter_sum_detached(const void* send, void* recv, int64_t n, DType dtype,
                                    Stream stream) override;
  Event broadcast(void* data, int64_t n, DType dtype, int root, Stream stream);
  Event all_to_all(const void* send, void* recv, int64_t n, DType dtype, Stream stream);
  // send_counts / recv_counts: host arrays of size() element counts (grouped ncclSend/ncclRecv).
  Event all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                     const int64_t* recv_counts, DType dtype, Stream stream) override;

  // Blocks the host until every queued collective has finished.
  void synchronize();

  struct Impl;  // NCCL communicator, streams, events, watchdog (nccl_communicator.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moex::dist
