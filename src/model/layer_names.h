// Parameter names of the blocks ("model.layers.<i>.<rest>", the Hugging Face layout): which block
// a tensor belongs to, and its name in another model made of a selection of the blocks
// (distillation's student initialization, layer pruning).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moex::model {

// The block index of a "model.layers.<i>." name; -1 for the embedding, final norm, head, ...
int64_t layer_of_param(const std::string& name);

// The name that `name` (a tensor of a model whose block i is block layers[i] of a source model)
// has in the source model: block tensors renumbered, everything else unchanged.
std::string source_layer_param(const std::string& name, const std::vector<int64_t>& layers);

}  // namespace moex::model
