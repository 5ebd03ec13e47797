#include "dist/host_staged_group.h"

#include <cuda_runtime.h>

#include "core/error.h"
#include "dist/communicator.h"

namespace moex::dist {

namespace {

void check(cudaError_t e, const char* what) {
  MOEX_CHECK(e == cudaSuccess, "HostStagedGroup: ", what, ": ", cudaGetErrorString(e));
}

// Copies `bytes` from the device to the host behind the work queued on `stream` (which wrote
// them), and waits for it.
void download(std::vector<uint8_t>& host, const void* device, size_t bytes, cudaStream_t stream) {
  host.resize(bytes);
  if (bytes > 0)
    check(cudaMemcpyAsync(host.data(), device, bytes, cudaMemcpyDeviceToHost, stream), "download");
  check(cudaStreamSynchronize(stream), "download");
}

}  // namespace

HostStagedGroup::Event HostStagedGroup::upload(void* device, size_t bytes, Stream stream) {
  if (bytes > 0)
    check(cudaMemcpyAsync(device, recv_.data(), bytes, cudaMemcpyHostToDevice, stream), "upload");
  check(cudaStreamSynchronize(stream), "upload");  // recv_ may change once this returns
  check(cudaEventRecord(done_, stream), "event");
  return done_;
}

HostStagedGroup::HostStagedGroup(Communicator& group, int device) : group_(group) {
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "event");
  done_ = e;
}

HostStagedGroup::~HostStagedGroup() {
  if (done_ != nullptr) cudaEventDestroy(done_);
}

int HostStagedGroup::rank() const {
  return group_.rank();
}
int HostStagedGroup::size() const {
  return group_.size();
}

HostStagedGroup::Event HostStagedGroup::all_reduce_sum(void* data, int64_t n, DType dtype,
                                                       Stream stream) {
  MOEX_CHECK(dtype == DType::kF32 || dtype == DType::kBF16,
             "HostStagedGroup::all_reduce_sum: f32 or bf16, got ", dtype_name(dtype));
  const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
  download(recv_, data, bytes, stream);
  if (dtype == DType::kF32) {
    group_.all_reduce_sum(reinterpret_cast<float*>(recv_.data()), n);
  } else {  // summed in f32 (MPI has no bf16), rounded once
    auto* b = reinterpret_cast<uint16_t*>(recv_.data());
    std::vector<float> sum(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) sum[i] = bf16_to_f32(b[i]);
    group_.all_reduce_sum(sum.data(), n);
    for (int64_t i = 0; i < n; ++i) b[i] = f32_to_bf16(sum[i]);
  }
  return upload(data, bytes, stream);
}

HostStagedGroup::Event HostStagedGroup::reduce_scatter_sum(const void* send, void* recv, int64_t n,
                                                           DType dtype, Stream stream) {
  MOEX_CHECK(dtype == DType::kF32, "HostStagedGroup::reduce_scatter_sum: f32 only, got ",
             dtype_name(dtype));
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  download(send_, send, bytes * static_cast<size_t>(size()), stream);
  recv_.resize(bytes);
  group_.reduce_scatter_sum(reinterpret_cast<const float*>(send_.data()),
                            reinterpret_cast<float*>(recv_.data()), n);
  return upload(recv, bytes, stream);
}

HostStagedGroup::Event HostStagedGroup::all_gather(const void* send, void* recv, int64_t n,
                                                   DType dtype, Stream stream) {
  const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
  download(send_, send, bytes, stream);
  recv_.resize(bytes * static_cast<size_t>(size()));
  group_.all_gather(send_.data(), recv_.data(), static_cast<int64_t>(bytes));
  return upload(recv, recv_.size(), stream);
}

HostStagedGroup::Event HostStagedGroup::all_to_all_v(const void* send, const int64_t* send_counts,
                                                     void* recv, const int64_t* recv_counts,
                                                     DType dtype, Stream stream) {
  const int64_t es = static_cast<int64_t>(dtype_size(dtype));
  std::vector<int64_t> sb(size()), rb(size());
  int64_t send_total = 0, recv_total = 0;
  for (int p = 0; p < size(); ++p) {
    sb[p] = send_counts[p] * es;
    rb[p] = recv_counts[p] * es;
    send_total += sb[p];
    recv_total += rb[p];
  }
  download(send_, send, static_cast<size_t>(send_total), stream);
  recv_.resize(static_cast<size_t>(recv_total));
  group_.all_to_all_v(send_.data(), sb.data(), recv_.data(), rb.data());
  return upload(recv, static_cast<size_t>(recv_total), stream);
}

}  // namespace moex::dist
