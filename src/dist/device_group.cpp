#include "dist/device_group.h"

#include <cstdlib>
#include <string>

#include "core/error.h"
#include "dist/host_staged_group.h"
#include "dist/nccl_communicator.h"

namespace moex::dist {

std::unique_ptr<DeviceGroup> make_device_group(Communicator& group, const NcclOptions& options) {
  const char* env = std::getenv("MOEX_GPU_COLLECTIVES");
  const std::string kind = env != nullptr && *env != '\0' ? env : "nccl";
  if (kind == "nccl") return std::make_unique<NcclCommunicator>(group, options);
  MOEX_CHECK(kind == "host", "MOEX_GPU_COLLECTIVES is '", kind,
             "'; it must be 'nccl' (the default) or 'host' (through MPI in host memory)");
  return std::make_unique<HostStagedGroup>(group, options.device < 0 ? 0 : options.device);
}

}  // namespace moex::dist
