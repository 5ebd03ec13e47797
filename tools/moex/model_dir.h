// Helpers shared by the subcommands that open a model directory.
#pragma once

#include <memory>
#include <string>

#include "core/tensor.h"
#include "dist/device_group.h"
#include "model/tensor_parallel.h"

namespace moex::cli {

// --tp N of the serving commands: the model split over the N ranks of `mpirun -np N` (the whole
// job), each rank on its own GPU (its local rank) for --device cuda. tp 1: whole, as asked.
// expert_slicing (--expert-slicing): each expert's hidden width split over the ranks too.
// Holds the groups the TensorParallel points to; keep it alive as long as the model.
struct ServingLayout {
  Device device;
  model::TensorParallel tp;
  std::unique_ptr<dist::DeviceGroup> gpu_group;
  bool is_root() const { return tp.rank() == 0; }
};
ServingLayout serving_layout(int64_t tp, const Device& device, bool expert_slicing);

// The int32 tensor `input_ids` [B, T] of a safetensors file, every id in [0, vocab_size); errors
// name the file and the tensor (and the row and position of an id outside the vocabulary).
Tensor read_input_ids(const std::string& path, int64_t vocab_size);

}  // namespace moex::cli
