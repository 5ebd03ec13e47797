#include "model_dir.h"

#include "dist/communicator.h"
#include "dist/nccl_communicator.h"
#include "io/safetensors.h"
#include "ops/device.h"

namespace moex::cli {

ServingLayout serving_layout(int64_t tp, const Device& device, bool expert_slicing) {
  ServingLayout layout;
  layout.device = device;
  MOEX_CHECK(tp >= 1, "--tp must be >= 1, got ", tp);
  MOEX_CHECK(!expert_slicing || tp > 1,
             "--expert-slicing splits the experts over --tp ranks: ", "give --tp N > 1");
  layout.tp.slice_experts = expert_slicing;
  if (tp == 1) return layout;
  dist::Communicator& world = dist::Communicator::world();
  MOEX_CHECK(world.size() == tp, "--tp ", tp, " splits the model over the job's ranks: start it ",
             "with mpirun -np ", tp, " (this job has ", world.size(), ")");
  MOEX_CHECK(dist::Communicator::calls_from_any_thread(), "--tp: this MPI does not grant ",
             "MPI_THREAD_SERIALIZED, which tensor-parallel serving needs (its steps run on the ",
             "server's engine thread)");
  layout.tp.group = &world;
  if (device.is_cuda()) {
    layout.device = Device::cuda(world.local_rank() % std::max(1, ops::device_count()));
    ops::use_device(layout.device);
    dist::NcclOptions nccl;
    nccl.device = layout.device.ordinal;
    layout.gpu_group = dist::make_device_group(world, nccl);
    layout.tp.device_group = layout.gpu_group.get();
  }
  return layout;
}

Tensor read_input_ids(const std::string& path, int64_t vocab_size) {
  const auto file = io::SafetensorsFile::open(path);
  MOEX_CHECK(file.contains("input_ids"), path, ": no tensor 'input_ids'");
  Tensor ids = file.copy("input_ids");
  MOEX_CHECK(ids.dtype() == DType::kI32 && ids.ndim() == 2 && ids.dim(0) > 0 && ids.dim(1) > 0,
             path, ": input_ids must be int32 [B, T] with B, T > 0, got ",
             dtype_name(ids.dtype()), " ", ids.shape().str());
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    MOEX_CHECK(id[i] >= 0 && id[i] < vocab_size, path, ": input_ids[", i / ids.dim(1), ", ",
               i % ids.dim(1), "] is ", id[i], ", outside the model's vocabulary of ", vocab_size);
  return ids;
}

}  // namespace moex::cli
