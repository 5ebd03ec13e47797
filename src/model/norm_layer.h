// Pre-norm of a block: LayerNorm (weight, bias) or RMSNorm (weight), over rows of [n, dim].
#pragma once

#include <vector>

#include "model/model_config.h"
#include "model/module.h"

namespace moex::model {

class NormLayer {
 public:
  NormLayer(NormType type, int64_t dim, double eps)
      : type_(type), dim_(dim), eps_(static_cast<float>(eps)) {}
  void declare(ParamBuffer& params, const std::string& prefix);  // prefix.weight (+ prefix.bias)
  void bind(const ParamBuffer& params, const ParamBuffer& grads);
  void init(float* weight_or_null = nullptr);  // weight = 1, bias = 0

  // y [n, dim]; saves x and the row statistics when `save`.
  void forward(const float* x, int64_t n, float* y, bool save);
  // dx [n, dim] written (may alias dy); parameter gradients accumulated.
  void backward(const float* dy, float* dx);

 private:
  NormType type_;
  int64_t dim_;
  float eps_;
  int weight_idx_ = -1, bias_idx_ = -1;
  Param weight_, bias_;
  std::vector<float> x_, mean_, rstd_;  // saved: x [n, dim], mean/rstd [n]
  int64_t n_ = 0;
};

}  // namespace moex::model
