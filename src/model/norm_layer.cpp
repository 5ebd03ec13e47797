#include "model/norm_layer.h"

#include <algorithm>

#include "ops/norm.h"

namespace moex::model {

void NormLayer::declare(ParamBuffer& params, const std::string& prefix) {
  weight_idx_ = params.declare(prefix + ".weight", Shape{dim_});
  if (type_ == NormType::kLayerNorm) bias_idx_ = params.declare(prefix + ".bias", Shape{dim_});
}

void NormLayer::bind(const ParamViews& views) {
  weight_ = bind_param(views, weight_idx_);
  bias_ = bind_param(views, bias_idx_);
}

void NormLayer::init() {
  float* w = weight_.w.data<float>();
  std::fill(w, w + dim_, 1.0f);
  if (bias_) std::fill(bias_.w.data<float>(), bias_.w.data<float>() + dim_, 0.0f);
}

void NormLayer::forward(const Tensor& x, const Tensor& y, Arena& arena, bool save) {
  const int64_t n = x.numel() / dim_;
  const Tensor rstd = arena.alloc(Shape{n}, DType::kF32);
  const Tensor mean = rms() ? Tensor() : arena.alloc(Shape{n}, DType::kF32);
  ops::norm(rms(), x, weight_.w, bias_.w, eps_, y, mean, rstd);
  if (save) {
    x_ = x;
    mean_ = mean;
    rstd_ = rstd;
  }
}

void NormLayer::recompute(const Tensor& y, Arena& arena) const {
  MOEX_CHECK(x_.defined(), "NormLayer::recompute: no forward kept its input");
  const int64_t n = x_.numel() / dim_;
  const Tensor rstd = arena.alloc(Shape{n}, DType::kF32);
  const Tensor mean = rms() ? Tensor() : arena.alloc(Shape{n}, DType::kF32);
  ops::norm(rms(), x_, weight_.w, bias_.w, eps_, y, mean, rstd);
}

void NormLayer::add_forward(const Tensor& x, const Tensor& res, const Tensor& sum, const Tensor& y,
                            Arena& arena) const {
  const int64_t n = x.numel() / dim_;
  const Tensor rstd = arena.alloc(Shape{n}, DType::kF32);
  const Tensor mean = rms() ? Tensor() : arena.alloc(Shape{n}, DType::kF32);
  ops::add_norm(rms(), x, res, weight_.w, bias_.w, eps_, sum, y, mean, rstd);
}

void NormLayer::backward(const Tensor& dy, const Tensor& dx) {
  ops::norm_backward(rms(), dy, x_, weight_.w, mean_, rstd_, dx, weight_.grad_to_add(),
                     bias_.grad_to_add());
}

}  // namespace moex::model
