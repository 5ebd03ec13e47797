// A GPU group whose collectives go through host memory and MPI (docs/parallelism.md
// §Communicators): each one waits for the caller's stream, copies the device buffer to the host,
// runs the MPI collective of the Communicator group and copies the result back. Slower than NCCL
// and it blocks the host, but any number of ranks may share one GPU (NCCL refuses that), so a
// one-GPU machine can run a multi-rank GPU job end to end. MOEX_GPU_COLLECTIVES=host picks it
// (dist::make_device_group).
//
// This header needs no CUDA headers; a build without CUDA throws a clear error from the
// constructor.
#pragma once

#include <cstdint>
#include <vector>

#include "dist/device_group.h"

namespace moex::dist {

class HostStagedGroup final : public DeviceGroup {
 public:
  // The ranks of `group` (which must outlive this object); device: the CUDA device of this rank.
  HostStagedGroup(Communicator& group, int device);
  ~HostStagedGroup() override;
  HostStagedGroup(const HostStagedGroup&) = delete;
  HostStagedGroup& operator=(const HostStagedGroup&) = delete;

  int rank() const override;
  int size() const override;
  Event all_reduce_sum(void* data, int64_t n, DType dtype, Stream stream) override;
  Event reduce_scatter_sum(const void* send, void* recv, int64_t n, DType dtype,
                           Stream stream) override;
  Event all_gather(const void* send, void* recv, int64_t n, DType dtype, Stream stream) override;
  Event all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                     const int64_t* recv_counts, DType dtype, Stream stream) override;

 private:
  // Copies recv_'s first `bytes` to `device` on `stream`, waits, and records done_ there.
  Event upload(void* device, size_t bytes, Stream stream);

  Communicator& group_;
  std::vector<uint8_t> send_, recv_;  // host copies of the device buffers
  Event done_ = nullptr;              // recorded on the caller's stream after each collective
};

}  // namespace moex::dist
