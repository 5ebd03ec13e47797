// The public Engine (include/moex/moex.h) over the model, the tokenizer and the generator.
#include "core/error.h"
#include "data/tokenizer.h"
#include "infer/generator.h"
#include "infer/model_tokenizer.h"
#include "model/model_io.h"
#include "moex/moex.h"

namespace moex {

struct Engine::Impl {
  std::unique_ptr<model::Model> model;
  std::unique_ptr<data::Tokenizer> tokenizer;
};

Engine::Engine() : impl_(std::make_unique<Impl>()) {}
Engine::~Engine() = default;

std::unique_ptr<Engine> Engine::load(const std::string& model_dir) {
  std::unique_ptr<Engine> engine(new Engine());
  engine->impl_->model = model::load_model(model_dir);
  engine->impl_->tokenizer =
      infer::open_model_tokenizer(model_dir, engine->impl_->model->config().vocab_size);
  return engine;
}

int64_t Engine::vocab_size() const {
  return impl_->model->config().vocab_size;
}
bool Engine::has_tokenizer() const {
  return impl_->tokenizer != nullptr;
}

std::vector<int32_t> Engine::encode(const std::string& text) const {
  MOEX_CHECK(impl_->tokenizer, "this model directory has no tokenizer (tokenizer.json or *.model)");
  return impl_->tokenizer->encode(text, true);
}

std::string Engine::decode(const std::vector<int32_t>& ids) const {
  MOEX_CHECK(impl_->tokenizer, "this model directory has no tokenizer (tokenizer.json or *.model)");
  return impl_->tokenizer->decode(ids, true);
}

Score Engine::score(const std::vector<int32_t>& ids) {
  MOEX_CHECK(ids.size() >= 2, "score needs at least 2 tokens, got ", ids.size());
  std::vector<int32_t> targets(ids.begin() + 1, ids.end());
  targets.push_back(-100);  // the last position has no next token
  const model::LossResult r =
      impl_->model->forward(ids.data(), targets.data(), 1, static_cast<int64_t>(ids.size()), {});
  return {r.loss, r.aux_loss};
}

std::vector<int32_t> Engine::generate(const std::vector<int32_t>& prompt,
                                      const GenerateParams& params,
                                      const std::function<void(int32_t)>& on_token) {
  infer::GenerateOptions options;
  options.max_new_tokens = params.max_new_tokens;
  options.sampling = {params.temperature, params.top_k, params.top_p, params.seed};
  if (params.stop_at_eos)
    options.stop_tokens = infer::end_of_sequence_tokens(*impl_->model, impl_->tokenizer.get());
  return infer::generate(*impl_->model, prompt, options, on_token);
}

}  // namespace moex
