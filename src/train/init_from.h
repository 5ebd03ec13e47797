// training.init_from: a run that starts from an existing model directory (moex's own checkpoint
// or final/ directory, or a Hugging Face Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE one) instead of
// random weights. The directory decides the model; its weights replace the drawn ones.
#pragma once

#include <string>
#include <vector>

#include "model/model.h"

namespace moex::train {

// What the run takes from the directory before anything is built.
struct InitFromModel {
  ModelConfig config;
  std::string model_json;  // the moex "model" object checkpoints store (moex_model)
  bool moex = false;       // moex's own directory (else a Hugging Face one)
};

// Reads `dir`'s config.json. `what` names the setting in errors ("run.json: training.init_from"
// or "--init-from"): a missing directory, config.json or weights, and an unreadable or
// unsupported config, are errors naming it and the file.
InitFromModel read_init_from(const std::string& dir, const std::string& what);

// Copies the directory's weights into the model (split over tp and ep ranks: each rank takes its
// part, no collective). Returns them fp32 on the host as read, in the layout of
// model.host_params(), before a bf16 model rounds them: a sharded fp32 master starts from these.
ParamBuffer load_init_from_weights(model::Model& model, const std::string& dir, bool moex);

// The tokenizer files a run's checkpoints carry (data::tokenizer_files: the tokenizer and its
// tokenizer_config.json, ... beside it). Without init_from, or when `dir` holds no tokenizer, or
// one other than the corpus's: the corpus's (a warning names both in the last case: the model
// then reads ids of another vocabulary). When the corpus was tokenized with the directory's own
// tokenizer (the same bytes): the directory's, and its generation_config.json, so that chat
// templates, special tokens and generation defaults come along.
std::vector<std::string> checkpoint_tokenizer_files(const std::string& corpus_tokenizer,
                                                    const std::string& init_from_dir);

}  // namespace moex::train
