// The NCCL communicator of a build without CUDA or without NCCL (CMakeLists.txt compiles this file
// instead of nccl_communicator.cpp): constructing one is a clear error, nothing else is reachable.
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/nccl_communicator.h"

namespace moex::dist {

namespace {
[[noreturn]] void refuse() {
  MOEX_THROW("NcclCommunicator: this moex was built without CUDA or NCCL (MOEX_CUDA=OFF, or no ",
             "nccl.h / libnccl found); GPU collectives need a CUDA build with NCCL");
}
}  // namespace

struct NcclCommunicator::Impl {};

bool NcclCommunicator::built() {
  return false;
}
NcclCommunicator::NcclCommunicator(Communicator&, NcclOptions) {
  refuse();
}
NcclCommunicator::NcclCommunicator(int, int, NcclOptions) {
  refuse();
}
NcclCommunicator::~NcclCommunicator() = default;
int NcclCommunicator::rank() const {
  refuse();
}
int NcclCommunicator::size() const {
  refuse();
}
NcclCommunicator::Stream NcclCommunicator::stream() const {
  refuse();
}
NcclCommunicator::Event NcclCommunicator::all_reduce_sum(void*, int64_t, DType, Stream) {
  refuse();
}
NcclCommunicator::Event NcclCommunicator::all_gather(const void*, void*, int64_t, DType, Stream) {
  refuse();
}
NcclCommunicator::Event NcclCommunicator::reduce_scatter_sum(const void*, void*, int64_t, DType,
                                                             Stream) {
  refuse();
}
NcclCommunicator::Event NcclCommunicator::all_reduce_sum_detached(void*, int64_t, DType, Stream) {
  refuse();
}
NcclCommunicator::Event NcclCommunicator::reduce_scatter_sum_detached(const void*, void*, int64_t,
                                                                      DType, Stream) {
  refuse();
}
NcclCommunicator::Event NcclCommunicator::broadcast(void*, int64_t, DType, int, Stream) {
  refuse();
}
NcclCommunicator::Event NcclCommunicator::all_to_all(const void*, void*, int64_t, DType, Stream) {
  refuse();
}
NcclCommunicator::Event NcclCommunicator::all_to_all_v(const void*, const int64_t*, void*,
                                                       const int64_t*, DType, Stream) {
  refuse();
}
void NcclCommunicator::synchronize() {
  refuse();
}

}  // namespace moex::dist
