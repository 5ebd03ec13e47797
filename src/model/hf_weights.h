// Hugging Face checkpoints <-> the moex Model's parameters. moex's parameters carry the
// transformers 5.x in-memory names (mlp.gate.weight, mlp.experts.gate_up_proj [E, 2F, d] with
// gate rows first, mlp.experts.down_proj [E, d, F]); checkpoints on disk may hold either those
// fused tensors or the per-expert ones that save_pretrained writes (transformers 5.17 still
// writes these): Mixtral's model.layers.i.block_sparse_moe.{gate.weight, experts.j.w1/w3/w2.weight}
// and Qwen/OLMoE's model.layers.i.mlp.experts.j.{gate,up,down}_proj.weight.
#pragma once

#include <cstdint>
#include <string>

#include "model/model.h"

namespace moex::model {

// Copies the checkpoint at `path` (a directory with model.safetensors or a sharded index, or one
// file) into the model's parameters, converting bf16/f16 to f32. Missing, unexpected and
// misshapen tensors are Errors naming the file and the tensor. Returns them as read, fp32 on the
// host in the layout of model.host_params(), before a bf16 model rounds them (as load_weights).
ParamBuffer load_hf_weights(Model& model, const std::string& path);

// Writes config.json (hf_config_to_json) and the weights in the layout save_pretrained writes
// (per-expert tensors; sharded model-0000i-of-0000n.safetensors + index when larger than
// max_shard_bytes) into `dir`, created if missing. Each file is written atomically, config.json
// last.
void save_hf_model(const Model& model, const std::string& dir, const std::string& architecture,
                   uint64_t max_shard_bytes = 5ull << 30);

}  // namespace moex::model
