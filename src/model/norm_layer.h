// Pre-norm of a block: LayerNorm (weight, bias) or RMSNorm (weight), over rows of [n, dim].
#pragma once

#include "model/model_config.h"
#include "model/module.h"

namespace moex::model {

class NormLayer {
 public:
  NormLayer(NormType type, int64_t dim, double eps)
      : type_(type), dim_(dim), eps_(static_cast<float>(eps)) {}
  void declare(ParamBuffer& params, const std::string& prefix);  // prefix.weight (+ prefix.bias)
  void bind(const ParamViews& views);
  void init();                                     // weight = 1, bias = 0 (host weights)
  int param_index() const { return weight_idx_; }  // the weight's buffer entry

  // x, y [n, dim] (y may alias x only when save is false); keeps x and the row statistics (from
  // the arena) for backward when `save`.
  void forward(const Tensor& x, const Tensor& y, Arena& arena, bool save);
  // Inference: sum = x + res (the residual add before this norm), y = norm(sum), in one pass on
  // the GPU; nothing kept. sum must not alias x, res or y.
  void add_forward(const Tensor& x, const Tensor& res, const Tensor& sum, const Tensor& y,
                   Arena& arena) const;
  // y = the kept forward's output again, from its saved input (the same kernel on the same bits;
  // the statistics go to the arena): for callers that did not keep the output.
  void recompute(const Tensor& y, Arena& arena) const;
  // dx [n, dim] written (may alias dy); parameter gradients accumulated.
  void backward(const Tensor& dy, const Tensor& dx);

 private:
  bool rms() const { return type_ == NormType::kRMSNorm; }
  NormType type_;
  int64_t dim_;
  float eps_;
  int weight_idx_ = -1, bias_idx_ = -1;
  Param weight_, bias_;
  Tensor x_, mean_, rstd_;  // saved: x [n, dim], mean/rstd [n] f32
};

}  // namespace moex::model
