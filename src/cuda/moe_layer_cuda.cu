#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/arena.h"
#include "core/env.h"
#include "core/timer.h"
#include "cuda/activation.h"
#include "cuda/cuda_check.h"
#include "cuda/gemm.h"
#include "cuda/moe_decode.h"
#include "cuda/moe_layer_cuda.h"
#include "cuda/moe_mix.h"
#include "cuda/moe_permute.h"
#include "cuda/moe_router.h"
#include "cuda/random_fill.h"
#include "cuda/router_gemm.h"
#include "cuda/varying_gemm.h"
#include "moe/row_share.h"

namespace moex::cuda {
namespace {

Tensor dev(const Shape& shape, DType dtype, const CudaContext& ctx) {
  return Tensor::empty(shape, dtype, Device::cuda(ctx.ordinal()));
}

// fp32, or bf16 (a model's bf16 master weights, docs/gpu-model.md §bf16 master weights), on any
// device -> device tensor of dtype (f32 or bf16).
Tensor upload(const Tensor& src, DType dtype, const char* what, const Shape& shape,
              const CudaContext& ctx) {
  const DType from = src.defined() && src.dtype() == DType::kBF16 ? DType::kBF16 : DType::kF32;
  check_tensor(src, what, from, shape);
  Tensor here = src.device().is_cuda() ? src : src.to(Device::cuda(ctx.ordinal()));
  if (dtype == from) return src.device().is_cuda() ? src.clone() : here;
  Tensor out = dev(shape, dtype, ctx);
  if (from == DType::kF32)
    f32_to_bf16(here.data<float>(), out.raw_data(), src.numel(), ctx.stream());
  else
    bf16_to_f32(here.raw_data(), out.data<float>(), src.numel(), ctx.stream());
  // A host source went through a temporary device copy: wait before it is freed. A device source
  // needs no wait (the conversion is ordered on the stream before anything that reuses memory).
  if (!src.device().is_cuda()) ctx.synchronize();
  return out;
}

const char* kBf16Size = "bf16 rows";

int64_t ceil_div_i64(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Room for `rows` plus 1/16 of headroom, in steps of 64 rows: dropless loads change a little from
// step to step, and every growth costs a sync and leaves a block of the old size in the cache.
int64_t grown_rows(int64_t rows) {
  return ceil_div_i64(rows + rows / 16, 64) * 64;
}

// Bytes of kept rows [rows, F1] (h) then [rows, d] (the outputs), bf16, each block 256-byte
// aligned: what a forward puts in lent memory.
size_t lent_rows_bytes(int64_t rows, int64_t f1, int64_t d) {
  return aligned_bytes(static_cast<size_t>(rows * f1) * 2) +
         aligned_bytes(static_cast<size_t>(rows * d) * 2);
}

constexpr size_t kStatsHeader = 2 * sizeof(double) + 4 * sizeof(int32_t);  // losses, info

}  // namespace

void* MoEScratch::get(Slot s, size_t bytes, CudaContext& ctx) {
  Tensor& t = slots_[s];
  if (!t.defined() || static_cast<size_t>(t.numel()) < bytes) {
    // Queued kernels may still read the old block: wait before it goes back to the allocator.
    if (t.defined()) {
      ctx.synchronize();
      buffers_moved();
    }
    t = Tensor();
    t = dev({static_cast<int64_t>(bytes + bytes / 16)}, DType::kU8, ctx);
  }
  return t.raw_data();
}

size_t MoEScratch::bytes() const {
  size_t n = 0;
  for (const Tensor& t : slots_) n += t.defined() ? t.nbytes() : 0;
  return n;
}

MoELayerCuda::MoELayerCuda(const MoEConfig& config, const MoELayerCudaOptions& options,
                           CudaContext& ctx)
    : config_(config), options_(options), ctx_(ctx) {
  config_.validate();
  MOEX_CHECK(options.max_tokens > 0, "MoELayerCudaOptions.max_tokens must be > 0, got ",
             options.max_tokens);
  MOEX_CHECK(options.decode_max_tokens >= 0 && options.decode_max_tokens <= kMaxDecodeCapacity,
             "MoELayerCudaOptions.decode_max_tokens must be in [0, ", kMaxDecodeCapacity, "], got ",
             options.decode_max_tokens);
  MOEX_CHECK(config.num_experts <= kMaxGatingExperts, "MoELayerCuda: num_experts ",
             config.num_experts, " exceeds ", kMaxGatingExperts);
  MOEX_CHECK(config.top_k <= kMaxGatingTopK, "MoELayerCuda: top_k ", config.top_k, " exceeds ",
             kMaxGatingTopK);
  d_ = config.hidden_size;
  f_ = config.ffn_size;
  f1_ = config.first_proj_rows(f_);
  E_ = config.num_experts;
  k_ = config.top_k;
  group_ = options.expert_group;
  ep_ = group_ != nullptr ? group_->size() : 1;
  MOEX_CHECK(E_ % ep_ == 0, "MoELayerCuda: ", E_, " experts do not split over ", ep_,
             " expert-parallel ranks");
  MOEX_CHECK(ep_ == 1 || !config.dropless || options.dropless_gemm != DroplessGemm::kGrouped,
             "MoELayerCuda: expert parallelism needs dropless_gemm kPadded or kPacked (the grouped "
             "GEMMs are single-GPU only)");
  El_ = E_ / ep_;
  MOEX_CHECK(options.duplicate_group == nullptr || ep_ > 1,
             "MoELayerCuda: Duplicate Token Dropping needs an expert group (ep > 1)");
  if (options.duplicate_group != nullptr && options.duplicate_group->size() > 1)
    dedup_ = options.duplicate_group;
  if (options.slice_group != nullptr && options.slice_group->size() > 1)
    slices_ = options.slice_group;
  MOEX_CHECK(d_ % 8 == 0 && f_ % 8 == 0,
             "MoELayerCuda: hidden_size and ffn_size must be multiples of 8 (", kBf16Size,
             "), got ", d_, " and ", f_);
  const int64_t T = options.max_tokens;
  router_w_ = dev({E_, d_}, DType::kF32, ctx);
  d_router_w_ = dev({E_, d_}, DType::kF32, ctx);
  if (!options.external_expert_buffers) {
    w1_ = dev({El_, f1_, d_}, DType::kBF16, ctx);
    w2_ = dev({El_, d_, f_}, DType::kBF16, ctx);
    dw1_ = dev({El_, f1_, d_}, DType::kF32, ctx);
    dw2_ = dev({El_, d_, f_}, DType::kF32, ctx);
  }
  if (expert_parallel()) ep_caps_dev_ = dev({ep_}, DType::kI32, ctx);

  scratch_ = options.scratch != nullptr ? options.scratch : &own_scratch_;
  z_ = dev({T, E_}, DType::kF32, ctx);
  s_ = dev({T, E_}, DType::kF32, ctx);
  dz_ = dev({T, E_}, DType::kF32, ctx);
  expert_ = dev({T * k_}, DType::kI32, ctx);
  route_score_ = dev({T * k_}, DType::kF32, ctx);
  slot_ = dev({T * k_}, DType::kI32, ctx);
  row_ = dev({T * k_}, DType::kI32, ctx);
  gates_ = dev({T * k_}, DType::kF32, ctx);
  dgates_ = dev({T * k_}, DType::kF32, ctx);
  offsets_ = dev({E_ + 1}, DType::kI32, ctx);
  // losses [2] f64, info [4], load [E], counts [E] i32 back to back: the statistics' one copy.
  stats_dev_ = dev({static_cast<int64_t>(stats_bytes())}, DType::kU8, ctx);
  aux_grad_ = dev({E_}, DType::kF32, ctx);
  workspace_ = dev({static_cast<int64_t>(gating_workspace_bytes(T, E_, k_))}, DType::kU8, ctx);
  CUDA_CHECK(cudaMemsetAsync(workspace_.raw_data(), 0, workspace_.nbytes(), ctx.stream()));
  grouped_ptrs_ = dev({6 * 3 * E_}, DType::kI64, ctx);
  host_ptrs_.resize(6 * 3 * E_);

  // PR-MoE residual and shared expert: dense MLPs over T rows plus the mix buffers.
  if (config.residual) {
    dense_init(res_, config.residual_ffn_size > 0 ? config.residual_ffn_size : f_, T);
    wc_ = dev({2, d_}, DType::kF32, ctx);
    dwc_ = dev({2, d_}, DType::kF32, ctx);
    coef_ = dev({T, 2}, DType::kF32, ctx);
    dcl_ = dev({T, 2}, DType::kF32, ctx);
    dym_ = dev({T, d_}, DType::kBF16, ctx);
  }
  if (config.shared_ffn_size > 0) {
    dense_init(sh_, config.shared_ffn_size, T);
    gatev_ = dev({T}, DType::kF32, ctx);
    if (config.shared_gate) {
      ws_ = dev({1, d_}, DType::kF32, ctx);
      dws_ = dev({1, d_}, DType::kF32, ctx);
      dgl_ = dev({T}, DType::kF32, ctx);
    }
  }
  if (res_.defined() || sh_.defined()) {
    ym_ = dev({T, d_}, DType::kBF16, ctx);
    mix_partial_ = dev({ceil_div_i64(T, kMixChunk) * 2 * d_}, DType::kF32, ctx);
  }

  // Rows: capacity mode E*C at the training factor (the larger of train/eval), dropless T*k.
  int64_t rows = T * k_;
  if (!config.dropless) {
    MoEConfig c = config_;
    rows = E_ * std::max(moe_capacity(T, c, true), moe_capacity(T, c, false));
  }
  // Padded layouts can need E*T rows: dropless by the largest load, capacity mode when every route
  // is kept (MoEStepCuda::drop_tokens false or token_rows_max_rows). kPacked takes them too (for
  // decoding and under expert parallelism).
  const bool padded = !config.dropless || options.dropless_gemm != DroplessGemm::kGrouped ||
                      options.token_rows_max_rows > 0;
  int64_t gather_rows = padded ? std::max(rows, E_ * T) : rows;
  if (options.dropless_gemm == DroplessGemm::kPacked)  // packed rows with padding between experts
    gather_rows = std::max(gather_rows, T * k_ + E_ * (packed_row_align() - 1));
  gather_ = dev({gather_rows}, DType::kI32, ctx);
  CUDA_CHECK(cudaMallocHost(&stats_host_, stats_bytes()));
  CUDA_CHECK(cudaEventCreateWithFlags(&stats_ready_, cudaEventDisableTiming));

  plan_.scores = s_.data<float>();
  plan_.expert = expert_.data<int32_t>();
  plan_.route_score = route_score_.data<float>();
  plan_.slot = slot_.data<int32_t>();
  plan_.row = row_.data<int32_t>();
  plan_.gates = gates_.data<float>();
  plan_.gather = gather_.data<int32_t>();
  char* stats = static_cast<char*>(stats_dev_.raw_data());
  plan_.losses = reinterpret_cast<double*>(stats);
  plan_.info = reinterpret_cast<int32_t*>(stats + 2 * sizeof(double));
  plan_.load = reinterpret_cast<int32_t*>(stats + kStatsHeader);
  plan_.counts = plan_.load + E_;
  plan_.offsets = offsets_.data<int32_t>();
  plan_.aux_grad = aux_grad_.data<float>();
}

size_t MoELayerCuda::stats_bytes() const {
  return kStatsHeader + 2 * static_cast<size_t>(E_) * sizeof(int32_t);
}

MoELayerCuda::~MoELayerCuda() {
  if (stats_ready_ != nullptr) cudaEventDestroy(stats_ready_);
  if (stats_host_ != nullptr) cudaFreeHost(stats_host_);
}

bool MoELayerCuda::own_router_gemms(const void* xj, const void* out) const {
  static const bool cublas = env_count("MOEX_ROUTER_CUBLAS", 0) != 0;
  return !cublas && router_gemm_fits(d_, static_cast<int>(E_), xj, router_w_.raw_data(), out);
}

void MoELayerCuda::grow_rows(Tensor& t, int64_t rows, int64_t cols) {
  if (t.defined() && t.dim(0) >= rows) return;
  if (t.defined()) {  // queued kernels may still read the old block
    ctx_.synchronize();
    buffers_moved();
  }
  t = Tensor();  // back to the allocator before the larger block is taken
  t = dev({grown_rows(rows), cols}, DType::kBF16, ctx_);
}

size_t MoELayerCuda::kept_bytes_bound(const MoEConfig& config, const MoELayerCudaOptions& options,
                                      int64_t tokens, bool training, bool drop_tokens) {
  if (options.expert_group != nullptr && options.expert_group->size() > 1) return 0;
  const int64_t E = config.num_experts;
  int64_t rows = 0;
  if (!config.dropless) {
    rows = E * (drop_tokens ? moe_capacity(tokens, config, training) : tokens);
  } else if (options.dropless_gemm == DroplessGemm::kGrouped) {
    rows = tokens * config.top_k;
  } else if (options.dropless_gemm == DroplessGemm::kPacked) {
    const int64_t align = options.padded_row_multiple > 0 ? options.padded_row_multiple : 1;
    rows = tokens * config.top_k + E * (align - 1);  // each expert's block rounded up
  } else {
    return 0;  // kPadded: E x the largest load, up to E x T
  }
  return lent_rows_bytes(rows, config.first_proj_rows(config.ffn_size), config.hidden_size);
}

void MoELayerCuda::ensure_rows(int64_t rows) {
  if (keeps_own_rows() && lent_ == nullptr) {
    grow_rows(saved_h_, rows, f1_);
    grow_rows(saved_out_, rows, d_);
  }
  point_scratch(rows, false);
}

void MoELayerCuda::point_scratch(int64_t rows, bool backward) {
  MoEScratch& s = *scratch_;
  const size_t r = static_cast<size_t>(grown_rows(rows)) * 2;  // bytes per bf16 column
  const size_t td = static_cast<size_t>(tokens_ * d_) * sizeof(float);
  buf_.xb = s.get(MoEScratch::kXb, r * d_, ctx_);
  buf_.xj = static_cast<float*>(s.get(MoEScratch::kXj, td, ctx_));
  // a lives only inside a call: backward writes da there and then a again (experts_backward).
  buf_.a = buf_.da = s.get(MoEScratch::kA, r * f_, ctx_);
  if (keeps_own_rows() && lent_ != nullptr) {
    buf_.h = lent_;
    buf_.out = static_cast<char*>(lent_) + lent_rows_bytes(rows, f1_, 0);
  } else if (keeps_own_rows()) {
    buf_.h = saved_h_.raw_data();
    buf_.out = saved_out_.raw_data();
  } else {
    buf_.h = s.get(MoEScratch::kH, r * f1_, ctx_);
    buf_.out = s.get(MoEScratch::kOut, r * d_, ctx_);
    if (!backward) scratch_ticket_ = s.claim_activations();
  }
  if (!backward) return;
  buf_.dout = s.get(MoEScratch::kDout, r * d_, ctx_);
  buf_.dh = s.get(MoEScratch::kDh, r * f1_, ctx_);
  buf_.dxj = static_cast<float*>(s.get(MoEScratch::kDxj, td, ctx_));
  if (res_.defined() || sh_.defined())
    buf_.dxe = static_cast<float*>(s.get(MoEScratch::kDxe, td, ctx_));
}

void MoELayerCuda::set_parameters(const Tensor& router_w, const Tensor& w1, const Tensor& w2,
                                  const Tensor& bias) {
  router_w_ = upload(router_w, DType::kF32, "router_w", {E_, d_}, ctx_);
  MOEX_CHECK(w1.defined() == w2.defined() && (w1.defined() || bound_experts_),
             "MoELayerCuda::set_parameters: give w1 and w2, or bind_expert_buffers first");
  if (w1.defined()) {
    w1_ = upload(w1, DType::kBF16, "w1", {El_, f1_, d_}, ctx_);
    w2_ = upload(w2, DType::kBF16, "w2", {El_, d_, f_}, ctx_);
  }
  if (bias.defined()) {
    bias_ = upload(bias, DType::kF32, "bias", {E_}, ctx_);
  } else {
    bias_ = Tensor();
  }
}

void MoELayerCuda::bind_expert_buffers(const Tensor& w1, const Tensor& w2, const Tensor& dw1,
                                       const Tensor& dw2) {
  check_tensor(w1, "MoELayerCuda::bind_expert_buffers w1", DType::kBF16, Shape{El_, f1_, d_});
  check_tensor(w2, "MoELayerCuda::bind_expert_buffers w2", DType::kBF16, Shape{El_, d_, f_});
  // Gradients fp32, or bf16 (a model's bf16 gradients, docs/gpu-model.md §bf16 gradients), or
  // neither for an inference model (no backward).
  MOEX_CHECK(dw1.defined() == dw2.defined(),
             "MoELayerCuda::bind_expert_buffers: give both expert gradients or neither");
  if (dw1.defined()) {
    const DType gt = dw1.dtype() == DType::kBF16 ? DType::kBF16 : DType::kF32;
    check_tensor(dw1, "MoELayerCuda::bind_expert_buffers dw1", gt, Shape{El_, f1_, d_});
    check_tensor(dw2, "MoELayerCuda::bind_expert_buffers dw2", gt, Shape{El_, d_, f_});
  }
  for (const Tensor* t : {&w1, &w2, &dw1, &dw2})
    MOEX_CHECK(!t->defined() || t->device() == Device::cuda(ctx_.ordinal()),
               "MoELayerCuda::bind_expert_buffers: tensors must be on the layer's GPU");
  w1_ = w1;
  w2_ = w2;
  dw1_ = dw1;
  dw2_ = dw2;
  weight_grad_beta_ = 1.0f;
  bound_experts_ = true;
}

void MoELayerCuda::set_bound_expert_grads_accumulate(bool accumulate) {
  MOEX_CHECK(bound_experts_, "MoELayerCuda: expert gradients are the layer's own (no model mode)");
  weight_grad_beta_ = accumulate ? 1.0f : 0.0f;
}

void MoELayerCuda::dense_init(DenseMlp& m, int64_t ffn, int64_t T) {
  MOEX_CHECK(ffn > 0 && ffn % 8 == 0, "MoELayerCuda: residual/shared ffn size must be a positive ",
             "multiple of 8 (", kBf16Size, "), got ", ffn);
  m.f = ffn;
  m.f1 = config_.first_proj_rows(ffn);
  m.w1 = dev({m.f1, d_}, DType::kBF16, ctx_);
  m.w2 = dev({d_, m.f}, DType::kBF16, ctx_);
  m.dw1 = dev({m.f1, d_}, DType::kF32, ctx_);
  m.dw2 = dev({d_, m.f}, DType::kF32, ctx_);
  m.h = dev({T, m.f1}, DType::kBF16, ctx_);
  m.dh = dev({T, m.f1}, DType::kBF16, ctx_);
  m.da = dev({T, m.f}, DType::kBF16, ctx_);  // a in forward; da, then a again, in backward
  m.out = dev({T, d_}, DType::kBF16, ctx_);
  m.dout = dev({T, d_}, DType::kBF16, ctx_);
}

void MoELayerCuda::set_residual_parameters(const Tensor& w1, const Tensor& w2, const Tensor& coef) {
  MOEX_CHECK(res_.defined(), "MoELayerCuda::set_residual_parameters: config.residual is off");
  res_.w1 = upload(w1, DType::kBF16, "residual_w1", {res_.f1, d_}, ctx_);
  res_.w2 = upload(w2, DType::kBF16, "residual_w2", {d_, res_.f}, ctx_);
  wc_ = upload(coef, DType::kF32, "residual_coef", {2, d_}, ctx_);
}

void MoELayerCuda::set_shared_parameters(const Tensor& w1, const Tensor& w2, const Tensor& gate) {
  MOEX_CHECK(sh_.defined(), "MoELayerCuda::set_shared_parameters: config.shared_ffn_size is 0");
  sh_.w1 = upload(w1, DType::kBF16, "shared_w1", {sh_.f1, d_}, ctx_);
  sh_.w2 = upload(w2, DType::kBF16, "shared_w2", {d_, sh_.f}, ctx_);
  if (config_.shared_gate) {
    MOEX_CHECK(gate.defined(), "MoELayerCuda::set_shared_parameters: shared_gate needs gate [1,d]");
    ws_ = upload(gate, DType::kF32, "shared_gate", {1, d_}, ctx_);
  }
}

void MoELayerCuda::dense_forward(DenseMlp& m, const void* x, int64_t T) {
  cublasHandle_t h = ctx_.cublas();
  gemm_bf16(h, GemmShape{false, true, T, m.f1, d_, d_, d_, m.f1}, x, 0, m.w1.raw_data(), 0,
            m.h.raw_data(), 0, false, 1);
  if (config_.activation == ExpertActivation::kSwiGLU) {
    swiglu_forward_bf16(m.h.raw_data(), m.da.raw_data(), T, m.f, ctx_.stream());
  } else {
    gelu_forward_bf16(m.h.raw_data(), m.da.raw_data(), T, m.f, config_.gelu_exact, ctx_.stream());
  }
  gemm_bf16(h, GemmShape{false, true, T, d_, m.f, m.f, m.f, d_}, m.da.raw_data(), 0,
            m.w2.raw_data(), 0, m.out.raw_data(), 0, false, 1);
}

void MoELayerCuda::dense_backward(DenseMlp& m, const void* x, int64_t T, float beta) {
  cublasHandle_t h = ctx_.cublas();
  // da = dout w2 ; dh = act'(h, da) with a again over da ; dw2 = dout^T a ; dw1 = dh^T x ;
  // dxe (+)= dh w1 (fp32)
  gemm_bf16(h, GemmShape{false, false, T, m.f, d_, d_, m.f, m.f}, m.dout.raw_data(), 0,
            m.w2.raw_data(), 0, m.da.raw_data(), 0, false, 1);
  if (config_.activation == ExpertActivation::kSwiGLU) {
    swiglu_backward_bf16(m.h.raw_data(), m.da.raw_data(), m.dh.raw_data(), m.da.raw_data(), T, m.f,
                         ctx_.stream());
  } else {
    gelu_backward_bf16(m.h.raw_data(), m.da.raw_data(), m.dh.raw_data(), m.da.raw_data(), T, m.f,
                       config_.gelu_exact, ctx_.stream());
  }
  gemm_bf16(h, GemmShape{true, false, d_, m.f, T, d_, m.f, m.f}, m.dout.raw_data(), 0,
            m.da.raw_data(), 0, m.dw2.raw_data(), 0, true, 1);
  gemm_bf16(h, GemmShape{true, false, m.f1, d_, T, m.f1, d_, d_}, m.dh.raw_data(), 0, x, 0,
            m.dw1.raw_data(), 0, true, 1);
  gemm_bf16(h, GemmShape{false, false, T, d_, m.f1, m.f1, d_, d_}, m.dh.raw_data(), 0,
            m.w1.raw_data(), 0, buf_.dxe, 0, true, 1, 1.0f, beta);
}

void MoELayerCuda::init_random(uint64_t seed) {
  cudaStream_t stream = ctx_.stream();
  const float rd = 1.0f / std::sqrt(static_cast<float>(d_)),
              rf = 1.0f / std::sqrt(static_cast<float>(f_));
  fill_uniform_f32(router_w_.data<float>(), router_w_.numel(), seed, 0, -rd, rd, stream);
  fill_uniform_bf16(w1_.raw_data(), w1_.numel(), seed, 1, -rd, rd, stream);
  fill_uniform_bf16(w2_.raw_data(), w2_.numel(), seed, 2, -rf, rf, stream);
  uint64_t sub = 3;
  for (DenseMlp* m : {&res_, &sh_}) {
    if (!m->defined()) continue;
    const float rm = 1.0f / std::sqrt(static_cast<float>(m->f));
    fill_uniform_bf16(m->w1.raw_data(), m->w1.numel(), seed, sub++, -rd, rd, stream);
    fill_uniform_bf16(m->w2.raw_data(), m->w2.numel(), seed, sub++, -rm, rm, stream);
  }
  if (wc_.defined()) fill_uniform_f32(wc_.data<float>(), wc_.numel(), seed, 8, -rd, rd, stream);
  if (ws_.defined()) fill_uniform_f32(ws_.data<float>(), ws_.numel(), seed, 9, -rd, rd, stream);
  ctx_.synchronize();
}

void MoELayerCuda::forward(const Tensor& x, const Tensor& y, const MoEStepCuda& step) {
  MOEX_CHECK(x.device().is_cuda() && y.device().is_cuda(),
             "MoELayerCuda::forward: x and y must be on the GPU");
  MOEX_CHECK(x.ndim() == 2 && x.dim(1) == d_ && x.dtype() == DType::kBF16,
             "MoELayerCuda::forward: x must be [T, ", d_, "] bf16, got ", x.shape().str(), " ",
             dtype_name(x.dtype()));
  const int64_t T = x.dim(0);
  MOEX_CHECK(T > 0 && T <= options_.max_tokens, "MoELayerCuda::forward: T=", T,
             " outside [1, max_tokens=", options_.max_tokens, "]");
  check_tensor(y, "MoELayerCuda::forward y", DType::kBF16, x.shape());
  const bool training = step.training;
  const uint64_t seed = step.seed, offset = step.offset;
  tokens_ = T;
  training_ = training;
  kept_ = step.keep_for_backward;
  kept_in_scratch_ = kept_ && step.keep_in_scratch;
  lent_ = nullptr;  // use_lent_rows decides once the rows are known
  stats_copied_ = step.copy_stats;
  seed_ = seed;
  offset_ = offset;
  x_ = x.raw_data();
  cudaStream_t stream = ctx_.stream();
  const float eps = training ? config_.jitter_eps : 0.0f;
  // A dropless forward that keeps nothing, past the decode kernels' reach: capacity mode's layout
  // with C = T, which keeps every route, instead of the counts sync (see MoELayerCudaOptions).
  // Forwards that copy statistics keep the dropless capacity (the largest load) in them.
  const bool token_rows = config_.dropless && !kept_ && !training && !step.copy_stats &&
                          !expert_parallel() && T > options_.decode_max_tokens &&
                          E_ * T <= options_.token_rows_max_rows;
  const bool dropless = config_.dropless && !token_rows;
  // Capacity mode keeping every route: C = T (a token picks an expert at most once).
  const int64_t capacity = dropless                          ? 0
                           : token_rows || !step.drop_tokens ? T
                                                             : moe_capacity(T, config_, training);
  const bool padded = !dropless || !packs_rows(T, kept_);
  grouped_ = !padded;
  // The decode kernels read every expert's weights (or this rank's slice of each) here: no
  // expert parallelism.
  const bool decode = !kept_ && padded && T <= options_.decode_max_tokens && !expert_parallel();

  // The gating kernel's parameters.
  GatingParams& g = gating_;
  g.num_tokens = T;
  g.num_experts = E_;
  g.top_k = k_;
  g.score_func = config_.score_func;
  g.rsample = training && config_.rsample;
  g.gumbel_second_expert = training && config_.gumbel_second_expert;
  g.renormalize = config_.renormalize;
  g.renormalize_after_drop = config_.renormalize_after_drop;
  g.policy = config_.drop_policy;
  g.dropless = dropless;
  g.padded = padded;
  g.row_align = padded ? 1 : static_cast<int>(packed_row_align());
  g.capacity = capacity;
  g.aux_loss_type = config_.aux_loss_type;
  g.seed = seed;
  g.offset = offset;
  const float* bias = config_.selection_bias && bias_.defined() ? bias_.data<float>() : nullptr;
  if (decode && !training && moe_router_gating_fits(g, d_, x.raw_data(), router_w_.data<float>())) {
    // Decoding: router and gating in one launch (no jitter outside training). Training keeps the
    // separate logits below, which a checkpointed recompute (GEMM path) repeats bit for bit.
    moe_router_gating(x.raw_data(), router_w_.data<float>(), d_, z_.data<float>(), bias, g, plan_,
                      gather_.numel(), workspace_.raw_data(), stream);
  } else {
    // Router: fp32 input (jittered in training), logits = xj wg^T; then the fused gating kernel.
    buf_.xj = static_cast<float*>(scratch_->get(MoEScratch::kXj, T * d_ * sizeof(float), ctx_));
    router_input_bf16(x.raw_data(), T, d_, eps, seed, offset, buf_.xj, stream);
    if (own_router_gemms(buf_.xj, z_.data<float>())) {
      router_logits_f32(buf_.xj, router_w_.data<float>(), T, d_, E_, z_.data<float>(), stream);
    } else {
      gemm_f32(ctx_.cublas(), GemmShape{false, true, T, E_, d_, d_, d_, E_}, buf_.xj,
               router_w_.data<float>(), z_.data<float>());
    }
    moe_gating(z_.data<float>(), bias, g, plan_, gather_.numel(), workspace_.raw_data(), stream);
  }

  // Only a dropless GEMM forward leaves host counts that a later one may reuse (benchmarks).
  if (decode || !dropless) have_counts_ = false;
  if (decode) {
    // C stays on the device (info[0]); the decode kernels read it there. The buffers hold E x C
    // rows: C is the capacity in capacity mode (min_capacity may put it above T), at most T in
    // dropless mode (a token picks an expert once).
    decode_forward(x, y, config_.dropless ? T : std::max(T, capacity));
    return;
  }
  if (expert_parallel()) gather_capacities();
  if (!dropless) {
    capacity_ = g.capacity;
    rows_ = E_ * capacity_;
    slot_rows_.clear();
  } else if (reuse_counts_ && have_counts_ && T == counts_tokens_) {
    // Benchmark-only: the counts of the last forward, no copy and no sync (see the header).
  } else {
    // Dropless: the one host sync of the layer (row counts for cuBLAS).
    std::vector<int32_t> info(4 + E_);
    // Pageable destination: the copy itself blocks the host, so the wait is timed from here.
    const auto wait0 = SteadyClock::now();
    CUDA_CHECK(cudaMemcpyAsync(info.data(), plan_.info, 4 * sizeof(int32_t), cudaMemcpyDeviceToHost,
                               stream));
    CUDA_CHECK(cudaMemcpyAsync(info.data() + 4, plan_.counts, E_ * sizeof(int32_t),
                               cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    host_wait_ms_ += ms_since(wait0);
    ++host_syncs_;
    have_counts_ = true;
    counts_tokens_ = T;
    capacity_ = info[0];
    rows_ = info[1];
    MOEX_CHECK(rows_ <= gather_.numel(), "MoELayerCuda: dropless rows ", rows_,
               " exceed the planned ", gather_.numel());
    group_experts_.clear();
    zero_experts_.clear();
    host_counts_.assign(info.begin() + 4, info.end());
    for (int e = 0; e < E_; ++e)
      (host_counts_[e] > 0 ? group_experts_ : zero_experts_).push_back(e);
    if (expert_parallel()) {
      slot_rows_.clear();  // the owners' rows cover every C row of each source
    } else if (!grouped_) {
      build_padded_slots(host_counts_);
    } else if (options_.dropless_gemm == DroplessGemm::kPacked) {
      set_slots(packed_rows(host_counts_));
    } else {
      slot_rows_.clear();
      slot_experts_ = group_experts_;
    }
  }
  if (expert_parallel()) {
    MOEX_CHECK(ep_caps_[group_->rank()] == capacity_ && rows_ == E_ * capacity_,
               "MoELayerCuda: the gathered capacity ", ep_caps_[group_->rank()],
               " is not this rank's ", capacity_, " (", rows_, " rows)");
    // CAC (docs/parallelism.md §Expert parallelism on GPU ranks): a checkpointed first pass keeps
    // its exchanged rows in the layer's own buffers, where the recompute finds them. Kept rows
    // always stay there under ep (backward takes them there), keep_in_scratch or not.
    kept_in_scratch_ = false;
    point_ep_buffers(false, kept_ || step.keep_exchange);
    if (step.reuse_exchange) {
      MOEX_CHECK(exchange_kept_ && ep_caps_ == kept_caps_,
                 "MoELayerCuda: reuse_exchange needs the previous forward to be a first pass with "
                 "keep_exchange and the same routing");
      exchanged_.exchanges_saved += 2;  // to the owners and back
      exchanged_.bytes_saved +=
          bytes_to_others(exchange_rows(true)) + bytes_to_others(exchange_rows(false));
    } else {
      moe_permute(x.raw_data(), plan_.gather, rows_, d_, k_, buf_.xb, stream, PaddedRows{});
      to_owners(buf_.xb, ep_rows_.xb);
    }
    experts_forward(ep_rows_);   // the recompute needs h again; its outputs are kept
    if (!step.reuse_exchange) {  // a CAC recompute has the first pass's summed rows
      sum_slices(ep_rows_.out, ep_rows_.rows);
      from_owners(ep_rows_.out, buf_.out);
    }
    exchange_kept_ = step.keep_exchange;
    kept_caps_ = ep_caps_;
    finish_forward(x, y);
    return;
  }
  use_lent_rows(step);
  ensure_rows(rows_);
  upload_operands();

  moe_permute(x.raw_data(), plan_.gather, rows_, d_, k_, buf_.xb, stream, used_rows());
  experts_forward(local_rows());
  sum_slices(buf_.out, rows_);
  finish_forward(x, y);
}

void MoELayerCuda::use_lent_rows(const MoEStepCuda& step) {
  lent_ = nullptr;
  if (!keeps_own_rows() || step.lent == nullptr ||
      lent_rows_bytes(rows_, f1_, d_) > step.lent_bytes)
    return;
  // Own buffers from an earlier forward stay: a step of several micro-batches lends only to its
  // first, and the later ones would take them again (a sync and an allocation each time).
  lent_ = step.lent;
}

void MoELayerCuda::sum_slices(void* rows_buf, int64_t rows) {
  if (slices_ == nullptr || rows == 0) return;
  slices_->all_reduce_sum(rows_buf, rows * d_, DType::kBF16, ctx_.stream());
  exchanged_.slice_reduce_bytes += rows * d_ * 2;
}

void MoELayerCuda::gather_capacities() {
  // info[0] is C on the device in both modes (capacity mode: the capacity; dropless: the largest
  // load). Pageable destination: the copy returns once the value is here.
  group_->all_gather(plan_.info, ep_caps_dev_.raw_data(), 1, DType::kI32, ctx_.stream());
  std::vector<int32_t> caps(static_cast<size_t>(ep_));
  CUDA_CHECK(cudaMemcpyAsync(caps.data(), ep_caps_dev_.raw_data(), ep_ * sizeof(int32_t),
                             cudaMemcpyDeviceToHost, ctx_.stream()));
  CUDA_CHECK(cudaStreamSynchronize(ctx_.stream()));
  ep_caps_.assign(caps.begin(), caps.end());
  ep_total_ = 0;
  for (int64_t c : ep_caps_) ep_total_ += c;
}

void MoELayerCuda::point_ep_buffers(bool backward, bool own) {
  MoEScratch& s = *scratch_;
  const int64_t owner_rows = El_ * ep_total_;
  const size_t local = static_cast<size_t>(grown_rows(rows_)) * 2;  // bytes per bf16 column
  const size_t owner = static_cast<size_t>(grown_rows(owner_rows)) * 2;
  const size_t td = static_cast<size_t>(tokens_ * d_) * sizeof(float);
  ExpertRows& r = ep_rows_;
  r.experts = El_;
  r.capacity = ep_total_;
  r.rows = owner_rows;
  if (own) {  // x rows and h on the owner and the local outputs stay for backward (or a recompute)
    if (!backward) {
      grow_rows(ep_x_, owner_rows, d_);
      grow_rows(ep_h_, owner_rows, f1_);
      grow_rows(ep_out_, rows_, d_);
    }
    r.xb = ep_x_.raw_data();
    r.h = ep_h_.raw_data();
    buf_.out = ep_out_.raw_data();
  } else {
    r.xb = s.get(MoEScratch::kEpX, owner * d_, ctx_);
    r.h = s.get(MoEScratch::kH, owner * f1_, ctx_);
    buf_.out = s.get(MoEScratch::kOut, local * d_, ctx_);
  }
  // a lives only inside a call (backward: da, then a again over it; experts_backward).
  r.a = r.da = s.get(MoEScratch::kA, owner * f_, ctx_);
  // The owner's outputs (forward) or dout, then dxb (backward).
  r.out = r.dout = s.get(MoEScratch::kEpRows, owner * d_, ctx_);
  buf_.xj = static_cast<float*>(s.get(MoEScratch::kXj, td, ctx_));
  s.get(MoEScratch::kEpStage, std::max(local, owner) * d_, ctx_);
  if (!backward) {
    buf_.xb = s.get(MoEScratch::kXb, local * d_, ctx_);
    return;
  }
  buf_.dout = s.get(MoEScratch::kDout, local * d_, ctx_);
  r.dh = s.get(MoEScratch::kDh, owner * f1_, ctx_);
  buf_.dxj = static_cast<float*>(s.get(MoEScratch::kDxj, td, ctx_));
  if (res_.defined() || sh_.defined())
    buf_.dxe = static_cast<float*>(s.get(MoEScratch::kDxe, td, ctx_));
}

std::vector<int64_t> MoELayerCuda::exchange_rows(bool this_rank) const {
  std::vector<int64_t> n(static_cast<size_t>(ep_));
  for (int q = 0; q < ep_; ++q) n[q] = El_ * (this_rank ? capacity_ : ep_caps_[q]);
  return n;
}

void MoELayerCuda::relayout_owner_rows(char* stage, char* owner, bool into_owner) {
  const size_t row = static_cast<size_t>(d_) * 2;  // bytes of one bf16 row
  const size_t owner_pitch = static_cast<size_t>(ep_total_) * row;
  int64_t before = 0;  // sum of C_r for r < q
  for (int q = 0; q < ep_; ++q) {
    const size_t width = static_cast<size_t>(ep_caps_[q]) * row;  // one expert's rows from q
    char* s = stage + El_ * before * row;
    char* o = owner + before * row;
    if (width > 0)
      CUDA_CHECK(cudaMemcpy2DAsync(into_owner ? o : s, into_owner ? owner_pitch : width,
                                   into_owner ? s : o, into_owner ? width : owner_pitch, width, El_,
                                   cudaMemcpyDeviceToDevice, ctx_.stream()));
    before += ep_caps_[q];
  }
}

// The parts of an exchange's blocks this rank sends: the whole block, or its DTD share.
int64_t MoELayerCuda::sent_rows(int64_t block_rows) const {
  if (dedup_ == nullptr) return block_rows;
  return moe::row_share(block_rows, dedup_->size(), dedup_->rank()).count;
}

int64_t MoELayerCuda::bytes_to_others(const std::vector<int64_t>& block_rows) const {
  int64_t rows = 0;
  for (int q = 0; q < ep_; ++q)
    if (q != group_->rank()) rows += sent_rows(block_rows[q]);
  return rows * d_ * 2;  // bf16
}

void MoELayerCuda::exchange(const void* send, void* recv, const std::vector<int64_t>& out_rows,
                            const std::vector<int64_t>& in_rows) {
  exchange_timer_.begin(ctx_.stream());
  if (dedup_ != nullptr) {
    exchange_shares(static_cast<const char*>(send), static_cast<char*>(recv), out_rows, in_rows);
  } else {
    std::vector<int64_t> out(out_rows), in(in_rows);  // elements
    for (int q = 0; q < ep_; ++q) {
      out[q] *= d_;
      in[q] *= d_;
    }
    group_->all_to_all_v(send, out.data(), recv, in.data(), DType::kBF16, ctx_.stream());
  }
  exchange_timer_.end(ctx_.stream());
  ++exchanged_.exchanges;
  exchanged_.bytes_sent += bytes_to_others(out_rows);
}

// Duplicate Token Dropping, as the CPU exchange (docs/parallelism.md §DTD): (1) this rank's
// share of every block goes to the peer with its tp rank, (2) the received shares, each peer's in
// a slot of the largest share's size, are all-gathered over the tp group, (3) every block is put
// back together from its tp shares exactly where the plain exchange writes it.
void MoELayerCuda::exchange_shares(const char* send, char* recv,
                                   const std::vector<int64_t>& out_rows,
                                   const std::vector<int64_t>& in_rows) {
  const int parts = dedup_->size(), me = dedup_->rank();
  const size_t row = static_cast<size_t>(d_) * 2;  // bytes of one bf16 row
  cudaStream_t stream = ctx_.stream();
  std::vector<int64_t> send_counts(ep_), recv_counts(ep_), slot_rows(ep_);  // elements; rows
  int64_t send_total = 0, recv_total = 0, slot_total = 0;                   // rows
  for (int q = 0; q < ep_; ++q) {
    send_counts[q] = sent_rows(out_rows[q]) * d_;
    recv_counts[q] = sent_rows(in_rows[q]) * d_;
    send_total += send_counts[q] / d_;
    recv_total += recv_counts[q] / d_;
    slot_rows[q] = moe::row_share(in_rows[q], parts, 0).count;
    slot_total += slot_rows[q];
  }
  MoEScratch& s = *scratch_;
  char* shares = static_cast<char*>(s.get(MoEScratch::kDtdShares, send_total * row, ctx_));
  char* got = static_cast<char*>(s.get(MoEScratch::kDtdGot, recv_total * row, ctx_));
  char* mine = static_cast<char*>(s.get(MoEScratch::kDtdMine, slot_total * row, ctx_));
  char* all = static_cast<char*>(s.get(MoEScratch::kDtdAll, parts * slot_total * row, ctx_));
  auto copy_rows = [&](char* to, const char* from, int64_t rows) {
    if (rows > 0)
      CUDA_CHECK(cudaMemcpyAsync(to, from, rows * row, cudaMemcpyDeviceToDevice, stream));
  };
  int64_t block = 0, at = 0;  // rows
  for (int q = 0; q < ep_; ++q) {
    const moe::RowShare sh = moe::row_share(out_rows[q], parts, me);
    copy_rows(shares + at * row, send + (block + sh.begin) * row, sh.count);
    at += sh.count;
    block += out_rows[q];
  }
  group_->all_to_all_v(shares, send_counts.data(), got, recv_counts.data(), DType::kBF16, stream);
  int64_t slot = 0;
  at = 0;
  for (int q = 0; q < ep_; ++q) {
    copy_rows(mine + slot * row, got + at * row, recv_counts[q] / d_);
    at += recv_counts[q] / d_;
    slot += slot_rows[q];
  }
  dedup_->all_gather(mine, all, slot_total * d_, DType::kBF16, stream);
  exchanged_.gather_bytes_sent += (parts - 1) * slot_total * static_cast<int64_t>(row);
  block = slot = 0;
  for (int q = 0; q < ep_; ++q) {
    for (int j = 0; j < parts; ++j) {
      const moe::RowShare sh = moe::row_share(in_rows[q], parts, j);
      copy_rows(recv + (block + sh.begin) * row, all + (j * slot_total + slot) * row, sh.count);
    }
    block += in_rows[q];
    slot += slot_rows[q];
  }
}

void MoELayerCuda::to_owners(const void* local, void* owner) {
  char* stage = static_cast<char*>(scratch_->get(MoEScratch::kEpStage, 0, ctx_));
  exchange(local, stage, exchange_rows(true), exchange_rows(false));
  relayout_owner_rows(stage, static_cast<char*>(owner), true);
}

void MoELayerCuda::from_owners(const void* owner, void* local) {
  char* stage = static_cast<char*>(scratch_->get(MoEScratch::kEpStage, 0, ctx_));
  relayout_owner_rows(stage, static_cast<char*>(const_cast<void*>(owner)), false);
  exchange(stage, local, exchange_rows(false), exchange_rows(true));
}

ExchangeStatsCuda MoELayerCuda::exchange_stats() {
  ExchangeStatsCuda s = exchanged_;
  s.ms = exchange_timer_.total_ms();
  return s;
}

void MoELayerCuda::decode_forward(const Tensor& x, const Tensor& y, int64_t max_capacity) {
  const int64_t T = tokens_;
  capacity_ = -1;             // known on the device only
  rows_ = E_ * max_capacity;  // the most rows C <= max_capacity can give
  ensure_rows(rows_);
  MoEDecodeParams p;
  p.x = x.raw_data();
  p.gather = plan_.gather;
  p.counts = plan_.counts;
  p.info = plan_.info;
  p.w1 = w1_.raw_data();
  p.w2 = w2_.raw_data();
  p.a = buf_.a;
  p.out = buf_.out;
  p.num_tokens = T;
  p.d = d_;
  p.f = f_;
  p.num_experts = E_;
  p.top_k = k_;
  p.swiglu = config_.activation == ExpertActivation::kSwiGLU;
  p.gelu_exact = config_.gelu_exact;
  moe_decode_experts(p, ctx_.stream());
  ++decode_forwards_;
  // Expert slicing: each rank's rows are its slice's part of the expert outputs (the rows past
  // the device's count are summed too, and never read).
  sum_slices(buf_.out, rows_);
  finish_forward(x, y);
}

void MoELayerCuda::finish_forward(const Tensor& x, const Tensor& y) {
  const int64_t T = tokens_;
  cudaStream_t stream = ctx_.stream();
  const bool mix = res_.defined() || sh_.defined();
  moe_combine(buf_.out, plan_.row, plan_.gates, T, d_, k_, mix ? ym_.raw_data() : y.raw_data(),
              stream);
  if (mix) {
    if (res_.defined()) dense_forward(res_, x.raw_data(), T);
    if (sh_.defined()) dense_forward(sh_, x.raw_data(), T);
    moe_mix_forward(mix_params(T), y.raw_data(), stream);
  }
  if (!stats_copied_) return;
  // The statistics travel to pinned memory behind the layer's work (one copy of their block);
  // stats() waits for them only. Inside a captured CUDA graph the event is recorded as an external
  // node, so stats() after a replay waits for that replay's copy.
  CUDA_CHECK(cudaMemcpyAsync(stats_host_, stats_dev_.raw_data(), stats_bytes(),
                             cudaMemcpyDeviceToHost, stream));
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  CUDA_CHECK(cudaEventRecordWithFlags(
      stats_ready_, stream,
      capture == cudaStreamCaptureStatusActive ? cudaEventRecordExternal : cudaEventRecordDefault));
}

void MoELayerCuda::build_padded_slots(const std::vector<int64_t>& counts) {
  slot_rows_.clear();
  const int64_t mult = options_.padded_row_multiple, C = capacity_;
  if (mult <= 0 || C == 0) return;
  std::vector<int64_t> m(E_);
  int64_t total = 0;
  for (int e = 0; e < E_; ++e) {
    m[e] = std::min(C, ceil_div_i64(counts[e], mult) * mult);
    total += m[e];
  }
  if (total * 100 > int64_t{97} * E_ * C) return;  // saves < 3%: one strided-batched call
  set_slots(m);
}

void MoELayerCuda::set_slots(const std::vector<int64_t>& m) {
  std::vector<int> order;
  for (int e = 0; e < E_; ++e)
    if (m[e] > 0) order.push_back(e);  // m[e] == 0 exactly when counts[e] == 0 (zero_experts_)
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return m[a] < m[b]; });
  slot_rows_.clear();
  for (int e : order) slot_rows_.push_back(m[e]);
  slot_experts_ = order;
}

int64_t MoELayerCuda::packed_row_align() const {
  const bool aligned =
      options_.dropless_gemm == DroplessGemm::kPacked && options_.padded_row_multiple > 0;
  return aligned ? options_.padded_row_multiple : 1;
}

std::vector<int64_t> MoELayerCuda::packed_rows(const std::vector<int64_t>& counts) const {
  const int64_t align = packed_row_align();
  std::vector<int64_t> rows(counts.size());
  for (size_t e = 0; e < counts.size(); ++e) rows[e] = ceil_div_i64(counts[e], align) * align;
  return rows;
}

bool MoELayerCuda::packs_rows(int64_t tokens, bool keep) const {
  switch (options_.dropless_gemm) {
    case DroplessGemm::kGrouped:
      return true;
    case DroplessGemm::kPacked:  // the decode kernels and the exchanges read E x C rows
      return !expert_parallel() && (keep || tokens > options_.decode_max_tokens);
    case DroplessGemm::kPadded:
      break;
  }
  return false;
}

void MoELayerCuda::upload_operands() {
  const bool grouped = grouped_;
  if (!grouped && slot_rows_.empty()) return;  // strided-batched calls take buf_ directly
  // Packed: expert e's rows start at its offset in the packed rows; padded: at e * C.
  const std::vector<int64_t> packed = grouped ? packed_rows(host_counts_) : std::vector<int64_t>();
  std::vector<int64_t> row0(E_, 0);
  for (int e = 0; e < E_; ++e)
    row0[e] = grouped ? (e > 0 ? row0[e - 1] + packed[e - 1] : 0) : e * capacity_;
  for (int i = 0; i < static_cast<int>(slot_experts_.size()); ++i)
    set_expert_operands(i, slot_experts_[i], row0[slot_experts_[i]]);
  if (!slot_rows_.empty()) return;  // per-expert GEMMs run from host_ptrs_
  // Pageable source: staged at once, so host_ptrs_ may change after this returns.
  CUDA_CHECK(cudaMemcpyAsync(grouped_ptrs_.raw_data(), host_ptrs_.data(),
                             host_ptrs_.size() * sizeof(void*), cudaMemcpyHostToDevice,
                             ctx_.stream()));
}

void MoELayerCuda::set_expert_operands(int slot, int e, int64_t row0) {
  auto bf = [](const void* base, int64_t elems) {
    return static_cast<const void*>(static_cast<const char*>(base) + elems * 2);
  };
  // fp32 or bf16 weight gradients; none for an inference model (its backward is refused)
  auto gradp = [](const Tensor& t, int64_t elems) -> const void* {
    if (!t.defined()) return nullptr;
    return static_cast<const char*>(t.raw_data()) +
           elems * static_cast<int64_t>(dtype_size(t.dtype()));
  };
  const int64_t o = row0;
  const void *w1 = w1_.raw_data(), *w2 = w2_.raw_data();
  const void* p[6][3] = {
      {bf(buf_.xb, o * d_), bf(w1, e * f1_ * d_), bf(buf_.h, o * f1_)},        // h = xb w1^T
      {bf(buf_.a, o * f_), bf(w2, e * d_ * f_), bf(buf_.out, o * d_)},         // out = a w2^T
      {bf(buf_.dout, o * d_), bf(w2, e * d_ * f_), bf(buf_.da, o * f_)},       // da = dout w2
      {bf(buf_.dout, o * d_), bf(buf_.da, o * f_), gradp(dw2_, e * d_ * f_)},  // dw2 = dout^T a
      {bf(buf_.dh, o * f1_), bf(buf_.xb, o * d_), gradp(dw1_, e * f1_ * d_)},  // dw1 = dh^T xb
      {bf(buf_.dh, o * f1_), bf(w1, e * f1_ * d_), bf(buf_.dout, o * d_)},     // dxb = dh w1
  };
  for (int gi = 0; gi < 6; ++gi)
    for (int op = 0; op < 3; ++op) host_ptrs_[(gi * 3 + op) * E_ + slot] = p[gi][op];
}

// The rows dimension of expert GEMM gi: k for the weight gradients (dw2, dw1), m otherwise.
static bool rows_are_k(int gi) {
  return gi == 3 || gi == 4;
}

void MoELayerCuda::grouped_gemm(int gi, const GemmShape& shape, bool c_f32) {
  GroupedGemm g;
  g.trans_a = shape.trans_a;
  g.trans_b = shape.trans_b;
  for (int e : group_experts_) {
    const int rows = static_cast<int>(host_counts_[e]);
    g.m.push_back(rows_are_k(gi) ? static_cast<int>(shape.m) : rows);
    g.n.push_back(static_cast<int>(shape.n));
    g.k.push_back(rows_are_k(gi) ? rows : static_cast<int>(shape.k));
    g.lda.push_back(static_cast<int>(shape.lda));
    g.ldb.push_back(static_cast<int>(shape.ldb));
    g.ldc.push_back(static_cast<int>(shape.ldc));
  }
  void** p = static_cast<void**>(grouped_ptrs_.raw_data());
  const void* const* hp = host_ptrs_.data();
  gemm_grouped_bf16(ctx_.cublas(), g, p + (gi * 3 + 0) * E_, p + (gi * 3 + 1) * E_,
                    p + (gi * 3 + 2) * E_, hp + (gi * 3 + 0) * E_, hp + (gi * 3 + 1) * E_,
                    hp + (gi * 3 + 2) * E_, c_f32, 1.0f, rows_are_k(gi) ? weight_grad_beta_ : 0.0f);
}

void MoELayerCuda::per_expert_gemm(int gi, const GemmShape& shape, bool c_f32) {
  // One GEMM per expert, from the host copies of the operand pointers: the kernel choice is kept
  // per band of row counts (cuda/varying_gemm.h), where a batched call per bucket made cuBLAS
  // choose again for every new load. One expert's GEMM may not fill the GPU (its [rows, d]
  // output is a few waves of tiles), so the experts take turns on up to four streams
  // (MOEX_EXPERT_LANES: 1 to 8).
  const VaryingDim varying = rows_are_k(gi) ? VaryingDim::kK : VaryingDim::kM;
  const void* const* p = host_ptrs_.data();
  const int slots = static_cast<int>(slot_experts_.size());
  const int lanes = std::min({slots, CudaContext::kMaxLanes, ctx_.varying_gemm().lanes()});
  if (lanes == 0) return;
  ctx_.fork_lanes(lanes);
  // Joined on the way out, an error included, so stream() stays ordered after every lane.
  struct Join {
    CudaContext& ctx;
    int lanes;
    ~Join() { ctx.join_lanes(lanes); }
  } join{ctx_, lanes};
  for (int slot = 0; slot < slots; ++slot) {
    GemmShape s = shape;
    (rows_are_k(gi) ? s.k : s.m) = slot_rows_[slot];
    ctx_.varying_gemm().run(varying, s, p[(gi * 3 + 0) * E_ + slot], 0, p[(gi * 3 + 1) * E_ + slot],
                            0, const_cast<void*>(p[(gi * 3 + 2) * E_ + slot]), 0, c_f32, 1, 1.0f,
                            rows_are_k(gi) ? weight_grad_beta_ : 0.0f, ctx_.lane(slot % lanes),
                            slot % lanes);
  }
}

PaddedRows MoELayerCuda::used_rows() const {
  // Every row when the GEMMs run over all E x C rows, and packed rows are all routed.
  if (slot_rows_.empty() || grouped_) return {};
  return PaddedRows{plan_.counts, capacity_, options_.padded_row_multiple};
}

void MoELayerCuda::strided_gemm(int gi, int experts, const GemmShape& shape, const void* a,
                                int64_t stride_a, const void* b, int64_t stride_b, void* c,
                                int64_t stride_c, bool c_f32) {
  ctx_.varying_gemm().run(rows_are_k(gi) ? VaryingDim::kK : VaryingDim::kM, shape, a, stride_a, b,
                          stride_b, c, stride_c, c_f32, experts, 1.0f,
                          rows_are_k(gi) ? weight_grad_beta_ : 0.0f, ctx_.stream());
}

MixParams MoELayerCuda::mix_params(int64_t T) const {
  MixParams p;
  p.num_tokens = T;
  p.d = d_;
  p.x = x_;
  p.ym = ym_.raw_data();
  if (res_.defined()) {
    p.r = res_.out.raw_data();
    p.wc = wc_.data<float>();
    p.coef = coef_.data<float>();
  }
  if (sh_.defined()) {
    p.s = sh_.out.raw_data();
    p.ws = config_.shared_gate ? ws_.data<float>() : nullptr;
    p.gate = gatev_.data<float>();
  }
  return p;
}

MoELayerCuda::ExpertRows MoELayerCuda::local_rows() const {
  ExpertRows r;
  r.experts = E_;
  r.capacity = capacity_;
  r.rows = rows_;
  r.xb = buf_.xb;
  r.h = buf_.h;
  r.a = buf_.a;
  r.out = buf_.out;
  r.dout = buf_.dout;
  r.da = buf_.da;
  r.dh = buf_.dh;
  return r;
}

void MoELayerCuda::expert_gemm(int gi, const GemmShape& shape, bool c_f32, int experts,
                               const void* a, int64_t stride_a, const void* b, int64_t stride_b,
                               void* c, int64_t stride_c) {
  if (!slot_rows_.empty()) {
    per_expert_gemm(gi, shape, c_f32);
  } else if (grouped_) {
    grouped_gemm(gi, shape, c_f32);
  } else {
    strided_gemm(gi, experts, shape, a, stride_a, b, stride_b, c, stride_c, c_f32);
  }
}

void MoELayerCuda::experts_forward(const ExpertRows& r) {
  cudaStream_t stream = ctx_.stream();
  const int64_t C = r.capacity;
  const int E = r.experts;
  if (!grouped_ && C == 0) return;
  // h = xb w1^T
  expert_gemm(0, GemmShape{false, true, C, f1_, d_, d_, d_, f1_}, false, E, r.xb, C * d_,
              w1_.raw_data(), f1_ * d_, r.h, C * f1_);
  if (config_.activation == ExpertActivation::kSwiGLU) {
    swiglu_forward_bf16(r.h, r.a, r.rows, f_, stream, used_rows());
  } else {
    gelu_forward_bf16(r.h, r.a, r.rows, f_, config_.gelu_exact, stream, used_rows());
  }
  // out = a w2^T
  expert_gemm(1, GemmShape{false, true, C, d_, f_, f_, f_, d_}, false, E, r.a, C * f_,
              w2_.raw_data(), d_ * f_, r.out, C * d_);
}

void MoELayerCuda::experts_backward(const ExpertRows& r) {
  cudaStream_t stream = ctx_.stream();
  const int64_t C = r.capacity;
  const int E = r.experts;
  const bool empty = grouped_ ? group_experts_.empty() : C == 0;
  const bool accumulate = weight_grad_beta_ != 0.0f;  // nothing to clear then
  if (empty) {
    if (!accumulate) {
      CUDA_CHECK(cudaMemsetAsync(dw1_.raw_data(), 0, dw1_.nbytes(), stream));
      CUDA_CHECK(cudaMemsetAsync(dw2_.raw_data(), 0, dw2_.nbytes(), stream));
    }
    return;
  }
  // Experts without rows get zero weight gradients: the per-expert GEMMs never touch their slices.
  if ((grouped_ || !slot_rows_.empty()) && !accumulate) {
    for (int e : zero_experts_) {
      const int64_t es = static_cast<int64_t>(dtype_size(dw1_.dtype()));
      CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(dw1_.raw_data()) + e * f1_ * d_ * es, 0,
                                 f1_ * d_ * es, stream));
      CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(dw2_.raw_data()) + e * d_ * f_ * es, 0,
                                 d_ * f_ * es, stream));
    }
  }
  // da = dout w2
  expert_gemm(2, GemmShape{false, false, C, f_, d_, d_, f_, f_}, false, E, r.dout, C * d_,
              w2_.raw_data(), d_ * f_, r.da, C * f_);
  // dh = act'(h) da, and the forward's a recomputed over da (dead after this): no layer keeps a.
  if (config_.activation == ExpertActivation::kSwiGLU) {
    swiglu_backward_bf16(r.h, r.da, r.dh, r.da, r.rows, f_, stream, used_rows());
  } else {
    gelu_backward_bf16(r.h, r.da, r.dh, r.da, r.rows, f_, config_.gelu_exact, stream, used_rows());
  }
  // dw2 = dout^T a ; dw1 = dh^T xb ; dxb = dh w1 (written over dout, which is dead now)
  const bool dw_f32 = dw1_.dtype() == DType::kF32;  // bf16 with bf16 model gradients
  expert_gemm(3, GemmShape{true, false, d_, f_, C, d_, f_, f_}, dw_f32, E, r.dout, C * d_, r.da,
              C * f_, dw2_.raw_data(), d_ * f_);
  expert_gemm(4, GemmShape{true, false, f1_, d_, C, f1_, d_, d_}, dw_f32, E, r.dh, C * f1_, r.xb,
              C * d_, dw1_.raw_data(), f1_ * d_);
  expert_gemm(5, GemmShape{false, false, C, d_, f1_, f1_, d_, d_}, false, E, r.dh, C * f1_,
              w1_.raw_data(), f1_ * d_, r.dout, C * d_);
}

void MoELayerCuda::backward(const Tensor& dy, const Tensor& dx) {
  MOEX_CHECK(tokens_ > 0, "MoELayerCuda::backward before forward");
  check_tensor(dy, "MoELayerCuda::backward dy", DType::kBF16, Shape{tokens_, d_});
  check_tensor(dx, "MoELayerCuda::backward dx", DType::kBF16, Shape{tokens_, d_});
  MOEX_CHECK(dy.device().is_cuda() && dx.device().is_cuda(),
             "MoELayerCuda::backward: dy and dx must be on the GPU");
  MOEX_CHECK(kept_,
             "MoELayerCuda::backward after a forward that kept nothing for it "
             "(keep_for_backward false)");
  MOEX_CHECK(dw1_.defined(),
             "MoELayerCuda::backward: the bound expert weights have no gradients "
             "(an inference model)");
  MOEX_CHECK(!kept_in_scratch_ || scratch_->activations_ticket() == scratch_ticket_,
             "MoELayerCuda::backward: its forward kept its activations in the shared scratch "
             "(keep_in_scratch) and another forward has written over them since");
  cudaStream_t stream = ctx_.stream();
  const int64_t T = tokens_;
  const float eps = training_ ? config_.jitter_eps : 0.0f;
  // Other layers used the scratch since this layer's forward: take its pointers again and
  // rebuild what lived there, the routed rows xb (dw1 reads them) and the fp32 router input xj
  // (the router's weight gradient reads it); the jitter is the same Philox draw.
  // Under expert parallelism the owners kept their x rows: nothing to rebuild but xj.
  if (expert_parallel()) {
    point_ep_buffers(true, true);
  } else {
    point_scratch(rows_, true);
    upload_operands();
    moe_permute(x_, plan_.gather, rows_, d_, k_, buf_.xb, stream, used_rows());
  }
  router_input_bf16(x_, T, d_, eps, seed_, offset_, buf_.xj, stream);
  // Residual / shared mix: split dy into the MoE part and the dense MLPs' output gradients.
  const bool mix = res_.defined() || sh_.defined();
  const void* dy_moe = dy.raw_data();
  MixParams mp;
  if (mix) {
    mp = mix_params(T);
    moe_mix_backward(mp, dy.raw_data(), res_.defined() ? dym_.raw_data() : nullptr,
                     res_.defined() ? res_.dout.raw_data() : nullptr,
                     sh_.defined() ? sh_.dout.raw_data() : nullptr,
                     res_.defined() ? dcl_.data<float>() : nullptr,
                     mp.ws != nullptr ? dgl_.data<float>() : nullptr, stream);
    if (res_.defined()) dy_moe = dym_.raw_data();
  }
  moe_combine_backward(dy_moe, buf_.out, plan_.gather, plan_.gates, rows_, d_, k_, buf_.dout,
                       dgates_.data<float>(), stream, used_rows());
  RouterBackwardParams rp;
  rp.num_tokens = T;
  rp.num_experts = E_;
  rp.top_k = k_;
  rp.score_func = config_.score_func;
  rp.renormalize = config_.renormalize;
  rp.renormalize_after_drop = gating_.renormalize_after_drop;
  rp.aux = config_.aux_loss_type != AuxLossType::kNone;
  rp.aux_coef = config_.aux_loss_coef * loss_scale_;
  rp.z_coef = config_.z_loss_coef * loss_scale_;
  router_backward(z_.data<float>(), s_.data<float>(), plan_.expert, plan_.slot,
                  dgates_.data<float>(), plan_.aux_grad, rp, dz_.data<float>(), stream);
  // dxj's buffer holds the weight gradient's chunk partials first (it is written after).
  if (own_router_gemms(buf_.xj, buf_.dxj) &&
      router_weight_grad_partial_floats(T, d_, E_) <= T * d_) {
    router_weight_grad_f32(dz_.data<float>(), buf_.xj, T, d_, E_, buf_.dxj,
                           d_router_w_.data<float>(), stream);
    router_input_grad_f32(dz_.data<float>(), router_w_.data<float>(), T, d_, E_, buf_.dxj, stream);
  } else {
    gemm_f32(ctx_.cublas(), GemmShape{true, false, E_, d_, T, E_, d_, d_}, dz_.data<float>(),
             buf_.xj, d_router_w_.data<float>());
    gemm_f32(ctx_.cublas(), GemmShape{false, false, T, d_, E_, E_, d_, d_}, dz_.data<float>(),
             router_w_.data<float>(), buf_.dxj);
  }
  if (expert_parallel()) {
    to_owners(buf_.dout, ep_rows_.dout);
    experts_backward(ep_rows_);
    sum_slices(ep_rows_.dout, ep_rows_.rows);
    from_owners(ep_rows_.dout, buf_.dout);  // dxb, back in this rank's layout
  } else {
    experts_backward(local_rows());
    sum_slices(buf_.dout, rows_);  // dxb
  }
  moe_permute_backward(buf_.dout, plan_.row, buf_.dxj, T, d_, k_, eps, seed_, offset_,
                       dx.raw_data(), stream);
  if (mix) {
    if (res_.defined()) {
      dense_backward(res_, x_, T, 0.0f);
      mix_weight_grad(dcl_.data<float>(), x_, T, d_, 2, mix_partial_.data<float>(),
                      dwc_.data<float>(), stream);
    }
    if (sh_.defined()) {
      dense_backward(sh_, x_, T, res_.defined() ? 1.0f : 0.0f);
      if (mp.ws != nullptr)
        mix_weight_grad(dgl_.data<float>(), x_, T, d_, 1, mix_partial_.data<float>(),
                        dws_.data<float>(), stream);
    }
    mix_finish_dx(dx.raw_data(), buf_.dxe, res_.defined() ? dcl_.data<float>() : nullptr, mp.wc,
                  mp.ws != nullptr ? dgl_.data<float>() : nullptr, mp.ws, T, d_, stream);
  }
}

MoEStatsCuda MoELayerCuda::stats() const {
  MOEX_CHECK(tokens_ > 0, "MoELayerCuda::stats before forward");
  MOEX_CHECK(stats_copied_, "MoELayerCuda::stats: the last forward did not copy its statistics");
  CUDA_CHECK(cudaEventSynchronize(stats_ready_));
  const char* host = static_cast<const char*>(stats_host_);
  double losses[2];
  int32_t info[4];
  std::memcpy(losses, host, sizeof(losses));
  std::memcpy(info, host + sizeof(losses), sizeof(info));
  const auto* load = reinterpret_cast<const int32_t*>(host + kStatsHeader);
  MoEStatsCuda st;
  st.load.assign(load, load + E_);
  st.counts.assign(load + E_, load + 2 * E_);
  st.aux_loss = losses[0];
  st.z_loss = losses[1];
  st.capacity = info[0];
  st.num_rows = info[1];
  st.num_dropped = info[2];
  return st;
}

}  // namespace moex::cuda
