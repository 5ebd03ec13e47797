#include "model/norm_layer.h"

#include <algorithm>

#include "cpu/norm.h"

namespace moex::model {

void NormLayer::declare(ParamBuffer& params, const std::string& prefix) {
  weight_idx_ = params.declare(prefix + ".weight", Shape{dim_});
  if (type_ == NormType::kLayerNorm) bias_idx_ = params.declare(prefix + ".bias", Shape{dim_});
}

void NormLayer::bind(const ParamBuffer& params, const ParamBuffer& grads) {
  weight_ = bind_param(params, grads, weight_idx_);
  bias_ = bind_param(params, grads, bias_idx_);
}

void NormLayer::init(float*) {
  std::fill(weight_.w, weight_.w + dim_, 1.0f);
  if (bias_) std::fill(bias_.w, bias_.w + dim_, 0.0f);
}

void NormLayer::forward(const float* x, int64_t n, float* y, bool save) {
  std::vector<float> mean_tmp, rstd_tmp;
  std::vector<float>& mean = save ? mean_ : mean_tmp;
  std::vector<float>& rstd = save ? rstd_ : rstd_tmp;
  mean.resize(static_cast<size_t>(n));
  rstd.resize(static_cast<size_t>(n));
  if (save) {
    n_ = n;
    x_.assign(x, x + n * dim_);
  }
  if (type_ == NormType::kLayerNorm) {
    cpu::layernorm_forward<float>(x, weight_.w, bias_.w, n, dim_, eps_, y, mean.data(),
                                  rstd.data());
  } else {
    cpu::rmsnorm_forward<float>(x, weight_.w, n, dim_, eps_, y, rstd.data());
  }
}

void NormLayer::backward(const float* dy, float* dx) {
  if (type_ == NormType::kLayerNorm) {
    cpu::layernorm_backward<float>(dy, x_.data(), weight_.w, mean_.data(), rstd_.data(), n_, dim_,
                                   dx, weight_.g, bias_.g);
  } else {
    cpu::rmsnorm_backward<float>(dy, x_.data(), weight_.w, rstd_.data(), n_, dim_, dx, weight_.g);
  }
}

}  // namespace moex::model
