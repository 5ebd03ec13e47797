// Helpers shared by the subcommands that open a model directory.
#pragma once

#include <memory>
#include <string>

#include "core/tensor.h"

namespace moex::cli {

// The int32 tensor `input_ids` [B, T] of a safetensors file; errors name the file and the tensor.
Tensor read_input_ids(const std::string& path);

}  // namespace moex::cli
