#include "moe/moe_layer_dispatch.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "core/arena.h"
#include "core/env.h"
#include "core/error.h"
#include "ops/profile.h"

#ifdef MOEX_WITH_CUDA
#include "cuda/activation.h"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "cuda/moe_layer_cuda.h"
#endif

namespace moex {

namespace {
int64_t g_weight_uploads = 0;
}  // namespace

int64_t moe_device_weight_uploads() {
  return g_weight_uploads;
}

#ifdef MOEX_WITH_CUDA
namespace {

// Which storage a weight lives in and how often it was written (see the header).
struct WeightStamp {
  uint64_t storage_id = 0, version = 0;
  const void* ptr = nullptr;  // the view's start within its storage
  int64_t numel = -1;
  bool operator==(const WeightStamp& o) const {
    return storage_id == o.storage_id && version == o.version && ptr == o.ptr && numel == o.numel;
  }
};

WeightStamp stamp(const Tensor& t) {
  if (!t.defined()) return {};
  return {t.storage_id(), t.version(), t.raw_data(), t.numel()};
}

// The scratch of every layer on GPU `ordinal` (they share its one stream). Never freed: layers
// may outlive any owner we could give it.
cuda::MoEScratch& shared_scratch(int ordinal) {
  static std::mutex mutex;
  static auto* scratch = new std::map<int, std::unique_ptr<cuda::MoEScratch>>();
  std::lock_guard<std::mutex> lock(mutex);
  auto& s = (*scratch)[ordinal];
  if (!s) s = std::make_unique<cuda::MoEScratch>();
  return *s;
}

class CudaMoELayer final : public MoEDeviceLayer {
 public:
  CudaMoELayer(const MoEConfig& config, int ordinal, const MoEDeviceGroups& groups)
      : config_(config), ctx_(cuda::default_context(ordinal)), groups_(groups) {}

  const MoEOutput& forward(const MoEWeights& w, const Tensor& x,
                           const MoEForwardOptions& options) override {
    MOEX_CHECK(options.fixed_routing == nullptr,
               "MoELayer on CUDA: fixed_routing is not supported on the GPU path");
    MOEX_CHECK(x.ndim() == 2 && x.dim(1) == config_.hidden_size &&
                   (x.dtype() == DType::kF32 || x.dtype() == DType::kBF16),
               "MoELayer on CUDA: x must be [T, ", config_.hidden_size, "] f32 or bf16, got ",
               x.shape().str(), " ", dtype_name(x.dtype()));
    const int64_t T = x.dim(0), d = config_.hidden_size;
    if (!layer_ || T > max_tokens_) {
      retire_layer();  // its buffers go back to the allocator before the new ones are taken
      buffers_moved();
      layer_ = std::make_unique<cuda::MoELayerCuda>(config_, layer_options(T), ctx_);
      if (bound_w1_.defined())
        layer_->bind_expert_buffers(bound_w1_, bound_w2_, bound_dw1_, bound_dw2_);
      max_tokens_ = T;
      stamps_.clear();  // a new layer holds no weights yet
    }
    const Device dev = Device::cuda(ctx_.ordinal());
    {
      const ops::ProfileScope profile("moe_forward.weight_upload", dev);
      upload_if_changed(w);
    }
    if (x.dtype() == DType::kBF16) {
      xb_ = x;
    } else {
      xb_ = Tensor::empty({T, d}, DType::kBF16, dev);
      cuda::f32_to_bf16(x.data<float>(), xb_.raw_data(), x.numel(), ctx_.stream());
    }
    const Tensor& out = options.out;
    const bool write_out = out.defined() && out.dtype() == DType::kBF16 && out.device() == dev &&
                           out.shape() == Shape{T, d};
    // Without a caller's bf16 output (a model's layer always gives one) the layer writes into a
    // buffer of its own, kept from call to call (a captured step must find it at one address).
    if (!write_out && (!y_buf_.defined() || y_buf_.dim(0) < T)) {
      y_buf_ = Tensor();
      y_buf_ = Tensor::empty({max_tokens_, d}, DType::kBF16, dev);
      buffers_moved();
    }
    const Tensor yb = write_out ? out : y_buf_.slice(0, T);
    layer_->set_loss_scale(static_cast<float>(options.loss_scale));
    {
      const ops::ProfileScope profile("moe_forward.layer", dev);
      cuda::MoEStepCuda step;
      step.training = options.training;
      step.seed = options.seed;
      step.offset = options.offset;
      step.keep_for_backward = options.keep_for_backward;
      step.keep_in_scratch = options.keep_in_scratch;
      step.drop_tokens = options.drop_tokens;
      step.copy_stats = options.want_stats;
      step.keep_exchange = options.keep_exchange;
      step.reuse_exchange = options.reuse_exchange;
      if (options.lent_rows.defined()) {
        MOEX_CHECK(options.lent_rows.device() == dev,
                   "MoELayer on CUDA: lent_rows must be on the layer's GPU");
        step.lent = options.lent_rows.raw_data();
        step.lent_bytes = options.lent_rows.nbytes();
      }
      layer_->forward(xb_, yb, step);
    }
    x_dtype_ = x.dtype();
    out_.y = x.dtype() == DType::kBF16 ? yb : Tensor::empty({T, d}, DType::kF32, dev);
    if (x.dtype() == DType::kF32)
      cuda::bf16_to_f32(yb.raw_data(), out_.y.data<float>(), yb.numel(), ctx_.stream());
    tokens_ = T;
    stats_pending_ = options.want_stats;
    if (!options.want_stats) clear_stats();
    if (!options.defer_stats) finish_stats();
    return out_;
  }

  void finish_stats() override {
    if (!stats_pending_) return;
    const ops::ProfileScope profile("moe_forward.stats", Device::cuda(ctx_.ordinal()));
    const cuda::MoEStatsCuda st = layer_->stats();  // waits for the copy the forward queued
    out_.aux_loss = st.aux_loss;
    out_.z_loss = st.z_loss;
    out_.weighted_loss = config_.aux_loss_coef * st.aux_loss + config_.z_loss_coef * st.z_loss;
    out_.load.assign(st.load.begin(), st.load.end());
    out_.counts.assign(st.counts.begin(), st.counts.end());
    out_.gate_mass.clear();  // measured by the CPU layer only
    out_.num_dropped = st.num_dropped;
    out_.capacity = st.capacity;
    stats_pending_ = false;
  }

  void clear_stats() {
    const Tensor y = out_.y;
    out_ = MoEOutput();
    out_.y = y;
  }

  const MoEGradients& backward(const Tensor& dy, bool add_bound_expert_grads,
                               const Tensor& dx) override {
    MOEX_CHECK(layer_ && tokens_ > 0, "MoELayer on CUDA: backward before forward");
    const int64_t T = tokens_, d = config_.hidden_size;
    check_tensor(dy, "MoELayer on CUDA: dy", dy.dtype(), Shape{T, d});
    MOEX_CHECK(dy.device().is_cuda(), "MoELayer on CUDA: dy must be on the GPU like x");
    const Device dev = Device::cuda(ctx_.ordinal());
    Tensor dyb = dy;
    if (dy.dtype() == DType::kF32) {
      dyb = Tensor::empty({T, d}, DType::kBF16, dev);
      cuda::f32_to_bf16(dy.data<float>(), dyb.raw_data(), dy.numel(), ctx_.stream());
    }
    MOEX_CHECK(dyb.dtype() == DType::kBF16, "MoELayer on CUDA: dy must be f32 or bf16");
    // The caller's bf16 buffer when it gives one (a model's layer does), else one of our own.
    const bool into_caller = dx.defined() && dx.dtype() == DType::kBF16 && dx.device() == dev &&
                             dx.shape() == Shape{T, d};
    Tensor dxb = into_caller ? dx : Tensor::empty({T, d}, DType::kBF16, dev);
    {
      const ops::ProfileScope profile("moe_backward.layer", dev);
      if (bound_w1_.defined()) layer_->set_bound_expert_grads_accumulate(add_bound_expert_grads);
      layer_->backward(dyb, dxb);
    }
    grads_.dx = dxb;
    if (x_dtype_ == DType::kF32) {
      grads_.dx = Tensor::empty({T, d}, DType::kF32, dev);
      cuda::bf16_to_f32(dxb.raw_data(), grads_.dx.data<float>(), dxb.numel(), ctx_.stream());
    }
    // The layer's own gradient buffers, not copies: valid until the next backward (the
    // MoELayer::backward contract), and readers queue on the same stream, so no wait here.
    grads_.weights.router = layer_->grad_router_w();
    // Model mode: the expert gradients were added into the model's buffer already.
    grads_.weights.w1 = bound_w1_.defined() ? Tensor() : layer_->grad_w1();
    grads_.weights.w2 = bound_w1_.defined() ? Tensor() : layer_->grad_w2();
    grads_.weights.residual_w1 = layer_->grad_residual_w1();
    grads_.weights.residual_w2 = layer_->grad_residual_w2();
    grads_.weights.residual_coef = layer_->grad_residual_coef();
    grads_.weights.shared_w1 = layer_->grad_shared_w1();
    grads_.weights.shared_w2 = layer_->grad_shared_w2();
    grads_.weights.shared_gate = layer_->grad_shared_gate();
    return grads_;
  }

 private:
  // Re-uploads (and converts) every weight when a tensor's storage or write version changed;
  // otherwise the device copy of the last upload is used.
  void upload_if_changed(const MoEWeights& w) {
    const Tensor* all[] = {
        &w.router,      &w.selection_bias, &w.w1,        &w.w2,        &w.residual_w1,
        &w.residual_w2, &w.residual_coef,  &w.shared_w1, &w.shared_w2, &w.shared_gate};
    std::vector<WeightStamp> now;
    for (const Tensor* t : all) now.push_back(stamp(*t));
    if (!stamps_.empty() && now == stamps_) return;
    // Model mode computes with the model's own bf16 expert weights: only the rest is uploaded.
    if (bound_w1_.defined())
      layer_->set_parameters(w.router, Tensor(), Tensor(), w.selection_bias);
    else
      layer_->set_parameters(w.router, w.w1, w.w2, w.selection_bias);
    if (config_.residual)
      layer_->set_residual_parameters(w.residual_w1, w.residual_w2, w.residual_coef);
    if (config_.shared_ffn_size > 0)
      layer_->set_shared_parameters(w.shared_w1, w.shared_w2, w.shared_gate);
    stamps_ = std::move(now);
    ++g_weight_uploads;
  }

  void bind_expert_buffers(const Tensor& w1, const Tensor& w2, const Tensor& dw1,
                           const Tensor& dw2) override {
    bound_w1_ = w1;
    bound_w2_ = w2;
    bound_dw1_ = dw1;
    bound_dw2_ = dw2;
    retire_layer();  // the next forward builds a layer in model mode
  }

  void set_groups(const MoEDeviceGroups& groups) override {
    groups_ = groups;
    retire_layer();  // the next forward builds a layer over the group
  }

  size_t kept_bytes() const override { return layer_ ? layer_->kept_bytes() : 0; }

  size_t kept_bytes_bound(int64_t tokens, const MoEForwardOptions& options) const override {
    if (!options.keep_for_backward || options.keep_in_scratch) return 0;
    return cuda::MoELayerCuda::kept_bytes_bound(config_, layer_options(tokens), tokens,
                                                options.training, options.drop_tokens);
  }

  moe::ExchangeStats exchange_stats() override {
    moe::ExchangeStats s = retired_exchanges_;
    if (layer_) s += converted(layer_->exchange_stats());
    return s;
  }

  static moe::ExchangeStats converted(const cuda::ExchangeStatsCuda& c) {
    moe::ExchangeStats s;
    s.exchanges = c.exchanges;
    s.bytes_sent = c.bytes_sent;
    s.gather_bytes_sent = c.gather_bytes_sent;
    s.slice_reduce_bytes = c.slice_reduce_bytes;
    s.exchanges_saved = c.exchanges_saved;
    s.bytes_saved = c.bytes_saved;
    s.seconds = c.ms * 1e-3;
    return s;
  }

  // The GPU layer's options for `tokens` tokens a call at most.
  cuda::MoELayerCudaOptions layer_options(int64_t tokens) const {
    cuda::MoELayerCudaOptions opt;
    opt.max_tokens = tokens;
    opt.external_expert_buffers = bound_w1_.defined();
    opt.scratch = &shared_scratch(ctx_.ordinal());
    // Dropless: each expert's rows packed one after the other (T x k rows, not E x the largest
    // load, which an untrained router puts far above the mean), one GEMM per expert.
    // MOEX_PACKED_EXPERT_ROWS=0: the padded layout, each expert's rows rounded up to 128 where
    // that saves >= 3% of them (docs/gpu-model.md §MoE row buffers has both measured).
    static const bool packed = env_on_unless_zero("MOEX_PACKED_EXPERT_ROWS");
    opt.dropless_gemm = packed ? cuda::DroplessGemm::kPacked : cuda::DroplessGemm::kPadded;
    opt.padded_row_multiple = 128;
    opt.token_rows_max_rows = cuda::token_rows_max_rows();
    opt.expert_group = groups_.expert;
    opt.duplicate_group = groups_.duplicate;
    opt.slice_group = groups_.slice;
    return opt;
  }

  // Drops the GPU layer (the next forward builds another), keeping its exchange counts.
  void retire_layer() {
    if (layer_) retired_exchanges_ += converted(layer_->exchange_stats());
    layer_.reset();
  }

  std::vector<WeightStamp> stamps_;
  Tensor bound_w1_, bound_w2_, bound_dw1_, bound_dw2_;  // model mode (undefined otherwise)
  MoEConfig config_;
  cuda::CudaContext& ctx_;  // the device's one stream, shared with the model's ops
  MoEDeviceGroups groups_;
  std::unique_ptr<cuda::MoELayerCuda> layer_;
  moe::ExchangeStats retired_exchanges_;  // of the layers retire_layer() dropped
  int64_t max_tokens_ = 0, tokens_ = 0;
  DType x_dtype_ = DType::kF32;  // y and dx come back in it
  bool stats_pending_ = false;   // out_'s statistics wait for finish_stats
  Tensor xb_;                    // the bf16 input backward reads
  Tensor y_buf_;                 // [max_tokens, d] bf16: the layer's output rows
  MoEOutput out_;
  MoEGradients grads_;
};

}  // namespace
#endif

size_t moe_device_scratch_bytes(int ordinal) {
#ifdef MOEX_WITH_CUDA
  return shared_scratch(ordinal).bytes();
#else
  (void)ordinal;
  return 0;
#endif
}

std::unique_ptr<MoEDeviceLayer> make_moe_device_layer(const MoEConfig& config, DType dtype,
                                                      const Device& device,
                                                      const MoEDeviceGroups& groups) {
#ifdef MOEX_WITH_CUDA
  if (device.is_cuda()) {
    MOEX_CHECK(dtype == DType::kF32, "MoELayer on CUDA: only f32 layers run on the GPU, got ",
               dtype_name(dtype));
    return std::make_unique<CudaMoELayer>(config, device.ordinal, groups);
  }
#else
  (void)config;
  (void)dtype;
  (void)groups;
#endif
  MOEX_CHECK(false, "MoELayer: no implementation for device ", device.str(),
             " (built without MOEX_WITH_CUDA?)");
  return nullptr;
}

}  // namespace moex
