// Probe (not part of the engine): cuDNN's MoE grouped matmul (the frontend's moe_grouped_matmul
// node, cuDNN >= 9.18) on the expert GEMMs of configs/gpu-{small,medium}.json, against the same
// FLOPs as one strided-batched cuBLAS call over equal expert blocks (the best case of moex's
// per-expert GEMMs, whose loads are unequal). One JSON line per GEMM: the packed rows [R, K] of
// E experts (each expert's block starting at first_token_offset) times each expert's [N, K]
// weights, bf16 in and out, fp32 accumulation. Prints an "error" line where cuDNN refuses.
#include <cudnn_frontend.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/cudnn_attention.h"
#include "cuda/device.h"
#include "cuda/gemm.h"
#include "cuda/random_fill.h"

namespace {

namespace fe = cudnn_frontend;
using namespace moex;

float median_ms(const std::function<void()>& fn, cudaStream_t stream) {
  for (int i = 0; i < 3; ++i) fn();
  CUDA_CHECK(cudaStreamSynchronize(stream));
  cuda::EventTimer timer;
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    timer.start(stream);
    fn();
    ms.push_back(timer.stop(stream));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Problem {
  const char* name;
  int64_t experts, rows, k, n;  // rows: all experts' together
};

void run(const Problem& p, cudnnHandle_t handle, cudaStream_t stream) {
  const int64_t E = p.experts, R = p.rows, K = p.k, N = p.n;
  void *token, *weight, *out;
  int32_t* offsets;
  CUDA_CHECK(cudaMalloc(&token, R * K * 2));       // [R, K]
  CUDA_CHECK(cudaMalloc(&weight, E * N * K * 2));  // [E, N, K]
  CUDA_CHECK(cudaMalloc(&out, R * N * 2));         // [R, N]
  CUDA_CHECK(cudaMalloc(&offsets, E * sizeof(int32_t)));
  cuda::fill_uniform_bf16(token, R * K, 1, 0, -1.0f, 1.0f, stream);
  cuda::fill_uniform_bf16(weight, E * N * K, 2, 0, -0.05f, 0.05f, stream);
  std::vector<int32_t> first(E);
  for (int64_t e = 0; e < E; ++e) first[e] = static_cast<int32_t>(e * (R / E));
  CUDA_CHECK(cudaMemcpy(offsets, first.data(), E * sizeof(int32_t), cudaMemcpyHostToDevice));
  const double flops = 2.0 * R * K * N;

  // cuBLAS: E equal blocks of R / E rows in one strided-batched call.
  const int64_t per = R / E;
  auto cublas = [&] {
    cuda::gemm_bf16(cuda::default_context().cublas(),
                    cuda::GemmShape{false, true, per, N, K, K, K, N}, token, per * K, weight, N * K,
                    out, per * N, false, static_cast<int>(E));
  };
  const float cublas_ms = median_ms(cublas, stream);

  std::string error;
  float cudnn_ms = 0;
  try {
    fe::graph::Graph graph;
    graph.set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto t = graph.tensor(fe::graph::Tensor_attributes()
                              .set_name("token")
                              .set_dim({1, R, K})
                              .set_stride({R * K, K, 1})
                              .set_data_type(fe::DataType_t::BFLOAT16));
    // Expert e's weights [N, K] row-major: the node's [K, N] with column-major inner dims.
    auto w = graph.tensor(fe::graph::Tensor_attributes()
                              .set_name("weight")
                              .set_dim({E, K, N})
                              .set_stride({N * K, 1, K})
                              .set_data_type(fe::DataType_t::BFLOAT16));
    auto off = graph.tensor(fe::graph::Tensor_attributes()
                                .set_name("first_token_offset")
                                .set_dim({E, 1, 1})
                                .set_stride({1, 1, 1})
                                .set_data_type(fe::DataType_t::INT32));
    auto attrs = fe::graph::Moe_grouped_matmul_attributes()
                     .set_name("experts")
                     .set_mode(fe::MoeGroupedMatmulMode_t::NONE)
                     .set_compute_data_type(fe::DataType_t::FLOAT);
    auto o = graph.moe_grouped_matmul(t, w, off, nullptr, nullptr, attrs);
    o->set_output(true).set_data_type(fe::DataType_t::BFLOAT16);
    fe::error_object e = graph.build(handle, {fe::HeurMode_t::A});
    if (e.is_bad()) throw std::runtime_error(e.get_message());
    int64_t ws_bytes = 0;
    e = graph.get_workspace_size(ws_bytes);
    if (e.is_bad()) throw std::runtime_error(e.get_message());
    void* ws = nullptr;
    if (ws_bytes > 0) CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
    std::unordered_map<std::shared_ptr<fe::graph::Tensor_attributes>, void*> pack = {
        {t, token}, {w, weight}, {off, offsets}, {o, out}};
    cudnn_ms = median_ms(
        [&] {
          fe::error_object r = graph.execute(handle, pack, ws);
          if (r.is_bad()) throw std::runtime_error(r.get_message());
        },
        stream);
    if (ws != nullptr) CUDA_CHECK(cudaFree(ws));
  } catch (const std::exception& ex) {
    error = ex.what();
  }
  std::printf(
      "{\"gemm\": \"%s\", \"E\": %lld, \"R\": %lld, \"K\": %lld, \"N\": %lld, "
      "\"cublas_batched_ms\": %.4f, \"cublas_tflops\": %.1f",
      p.name, (long long)E, (long long)R, (long long)K, (long long)N, cublas_ms,
      flops / (cublas_ms * 1e9));
  if (error.empty())
    std::printf(", \"cudnn_grouped_ms\": %.4f, \"cudnn_tflops\": %.1f}\n", cudnn_ms,
                flops / (cudnn_ms * 1e9));
  else
    std::printf(", \"error\": \"%s\"}\n", error.substr(0, 200).c_str());
  std::fflush(stdout);
  for (void* ptr : {token, weight, out, static_cast<void*>(offsets)}) CUDA_CHECK(cudaFree(ptr));
}

}  // namespace

int main() {
  using namespace moex;
  std::string why;
  if (!cuda::cudnn_library_open(&why)) {
    std::printf("{\"error\": \"cuDNN not loaded: %s\"}\n", why.c_str());
    return 1;
  }
  std::printf("{\"cudnn_version\": %zu}\n", fe::detail::get_backend_version());
  cudaStream_t stream = cuda::default_context().stream();
  cudnnHandle_t handle = nullptr;
  if (fe::detail::create_handle(&handle) != CUDNN_STATUS_SUCCESS) {
    std::printf("{\"error\": \"cudnnCreate failed\"}\n");
    return 1;
  }
  fe::detail::set_stream(handle, stream);
  // configs/gpu-small.json: T = 8 x 1024, top-2 of 8, d 1024, F 2816; medium: T = 4 x 2048,
  // d 2048, F 5632. up: [R, d] x [2F, d]^T; down: [R, F] x [d, F]^T.
  const Problem problems[] = {{"small up", 8, 16384, 1024, 5632},
                              {"small down", 8, 16384, 2816, 1024},
                              {"medium up", 8, 16384, 2048, 11264},
                              {"medium down", 8, 16384, 5632, 2048}};
  for (const Problem& p : problems) run(p, handle, stream);
  return 0;
}
