// The host-staged GPU group of a build without CUDA (CMakeLists.txt compiles this file instead of
// host_staged_group.cpp): constructing one is a clear error, nothing else is reachable.
#include "core/error.h"
#include "dist/host_staged_group.h"

namespace moex::dist {

namespace {
[[noreturn]] void refuse_without_cuda() {
  MOEX_THROW("HostStagedGroup: this moex was built without CUDA (MOEX_CUDA=OFF, or no NCCL); GPU ",
             "collectives need a CUDA build");
}
}  // namespace

HostStagedGroup::HostStagedGroup(Communicator& group, int) : group_(group) {
  refuse_without_cuda();
}
HostStagedGroup::~HostStagedGroup() = default;
int HostStagedGroup::rank() const {
  refuse_without_cuda();
}
int HostStagedGroup::size() const {
  refuse_without_cuda();
}
HostStagedGroup::Event HostStagedGroup::all_reduce_sum(void*, int64_t, DType, Stream) {
  refuse_without_cuda();
}
HostStagedGroup::Event HostStagedGroup::reduce_scatter_sum(const void*, void*, int64_t, DType,
                                                           Stream) {
  refuse_without_cuda();
}
HostStagedGroup::Event HostStagedGroup::all_gather(const void*, void*, int64_t, DType, Stream) {
  refuse_without_cuda();
}
HostStagedGroup::Event HostStagedGroup::all_to_all_v(const void*, const int64_t*, void*,
                                                     const int64_t*, DType, Stream) {
  refuse_without_cuda();
}

}  // namespace moex::dist
