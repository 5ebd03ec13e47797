// Reading calibration tokens for pruning and writing a pruned model directory in the format of
// its source (docs/distill.md §Pruning): a moex directory keeps its moex config; a Hugging Face
// directory (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) keeps its config.json with the fields that
// describe the layers and experts rewritten, so transformers and moex both load it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/prune.h"

namespace moex::train {

enum class ModelFormat { kMoex, kHf };
// A model directory's format, from its config.json's model_type.
ModelFormat model_dir_format(const std::string& dir);
const char* model_format_name(ModelFormat format);

// Calibration rows from a token dataset (`prefix.bin/.idx`): `num_tokens / seq_len` (at least
// one) windows of seq_len tokens, drawn as training draws them (GPTSampler, seed 0), so they
// cover the whole dataset rather than its first documents. Sets *batch to the row count.
std::vector<int32_t> dataset_calibration_ids(const std::string& prefix, int64_t num_tokens,
                                             int64_t seq_len, int64_t* batch);

// Calibration rows from a corpus directory (corpus.json of moex data prepare): the
// num_tokens / seq_len rows shared among its train splits in proportion to their tokens (largest
// remainders), each source's rows drawn as dataset_calibration_ids draws them.
std::vector<int32_t> corpus_calibration_ids(const std::string& dir, int64_t num_tokens,
                                            int64_t seq_len, int64_t* batch);

// The moex model config text (the "moex_model" object) of the pruned model: `model_json` with
// num_layers and the MoE layout written out per layer. Errors if it does not describe `pruned`.
std::string pruned_moex_json(const std::string& model_json, const ModelConfig& pruned);

// The Hugging Face config.json of the pruned model: `source` with the layer count, every
// expert-count spelling, mlp_only_layers / decoder_sparse_step (Qwen) and dtype replaced by what
// hf_config_to_json writes, and per-layer lists (layer_types) cut to the kept layers; every other
// field unchanged. Errors if the architecture cannot express the pruned model or the result does
// not read back as it.
nlohmann::json pruned_hf_config(const nlohmann::json& source, const ModelConfig& pruned,
                                const std::vector<int64_t>& layers);

// Writes the pruned model into `dir` (an existing empty directory) in the format of
// `source_dir`, with the tokenizer and generation files found there copied along.
void save_pruned_model(const PruneResult& pruned, const std::string& source_dir,
                       const std::string& dir);

}  // namespace moex::train
