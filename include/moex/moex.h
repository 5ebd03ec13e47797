// moex's public API for embedding the engine in another C++ program: load a model directory
// (moex's own or a Hugging Face Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE one), score token ids,
// generate. Errors are thrown as moex::Error (what() names the file and field). Everything else
// in src/ is internal and may change.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace moex {

class Error;  // derives from std::runtime_error (src/core/error.h)

struct GenerateParams {
  int64_t max_new_tokens = 32;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;
  uint64_t seed = 0;
  bool stop_at_eos = true;
};

struct Score {
  double loss = 0;      // mean next-token cross-entropy over the sequence
  double aux_loss = 0;  // sum of the MoE layers' load-balancing losses
};

class Engine {
 public:
  // Opens `model_dir` (config.json + safetensors, and the tokenizer beside them if any).
  static std::unique_ptr<Engine> load(const std::string& model_dir);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  int64_t vocab_size() const;
  bool has_tokenizer() const;
  std::vector<int32_t> encode(const std::string& text) const;  // BOS as the tokenizer adds it
  std::string decode(const std::vector<int32_t>& ids) const;

  Score score(const std::vector<int32_t>& ids);
  // New tokens after `prompt`; `on_token` sees each one as it is produced.
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, const GenerateParams& params,
                                const std::function<void(int32_t)>& on_token = nullptr);

 private:
  Engine();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moex
