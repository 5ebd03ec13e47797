#include <algorithm>
#include <cub/device/device_radix_sort.cuh>

#include "core/arena.h"
#include "cuda/bf16_chunk.cuh"
#include "cuda/cuda_check.h"
#include "cuda/embedding.h"
#include "cuda/launch.cuh"

namespace moex::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kThreads = 256;
constexpr int kRunThreads = 128;

template <int W>
__global__ void embedding_forward_kernel(const int32_t* __restrict__ ids,
                                         const bf16* __restrict__ table, int64_t n, int64_t dim,
                                         int64_t first_row, int64_t rows, bf16* __restrict__ out,
                                         bool accumulate) {
  wait_for_previous_kernel();
  const int64_t per_row = dim / W, chunks = n * per_row;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < chunks;
       v += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = v / per_row, c = (v - row * per_row) * W;
    // Outside this table's rows (a tensor-parallel vocabulary slice): zeros.
    const int64_t id = int64_t{ids[row]} - first_row;
    float t[W] = {};
    if (id >= 0 && id < rows) load_chunk<W>(table + id * dim + c, t);
    if (accumulate) {
      float o[W];
      load_chunk<W>(out + v * W, o);
#pragma unroll
      for (int i = 0; i < W; ++i) t[i] += o[i];
    }
    store_chunk<W>(out + v * W, t);
  }
}

__global__ void iota_kernel(int32_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    out[i] = static_cast<int32_t>(i);
}

// After a stable sort of (id, position) by id, each run of equal ids lists the positions holding
// that id in increasing order. The block at a run's first entry adds those dout rows in that order
// onto dtable[id] (the other blocks return at once): the same additions in the same order as the
// CPU twin, so the result is bit-identical to it and to every other run.
template <int W>
__global__ void embedding_backward_runs_kernel(const int32_t* __restrict__ sorted_ids,
                                               const int32_t* __restrict__ sorted_pos, int64_t n,
                                               const bf16* __restrict__ dout, int64_t dim,
                                               float* __restrict__ dtable) {
  const int64_t i = blockIdx.x;
  const int32_t id = sorted_ids[i];
  if (i > 0 && sorted_ids[i - 1] == id) return;
  const int64_t c = (blockIdx.y * int64_t{kRunThreads} + threadIdx.x) * W;
  if (c >= dim) return;
  float* dst = dtable + int64_t{id} * dim + c;
  float acc[W];
#pragma unroll
  for (int k = 0; k < W; ++k) acc[k] = dst[k];
  for (int64_t j = i; j < n && sorted_ids[j] == id; ++j) {
    float v[W];
    load_chunk<W>(dout + int64_t{sorted_pos[j]} * dim + c, v);
#pragma unroll
    for (int k = 0; k < W; ++k) acc[k] += v[k];
  }
#pragma unroll
  for (int k = 0; k < W; ++k) dst[k] = acc[k];
}

int id_bits(int64_t vocab) {
  int bits = 1;
  while (bits < 31 && (int64_t{1} << bits) < vocab) ++bits;
  return bits;
}

size_t sort_temp_bytes(int64_t n, int64_t vocab) {
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                             static_cast<int32_t*>(nullptr),
                                             static_cast<const int32_t*>(nullptr),
                                             static_cast<int32_t*>(nullptr), static_cast<int>(n),
                                             0, id_bits(vocab)));
  return bytes;
}

void check_embedding(const char* op, int64_t n, int64_t vocab, int64_t dim) {
  MOEX_CHECK(n >= 0 && n < (int64_t{1} << 31), op, ": n must be in [0, 2^31), got ", n);
  MOEX_CHECK(vocab > 0 && vocab < (int64_t{1} << 31), op, ": vocab must be in [1, 2^31), got ",
             vocab);
  MOEX_CHECK(dim > 0, op, ": dim must be > 0, got ", dim);
}

}  // namespace

void embedding_forward_bf16(const int32_t* ids, const void* table, int64_t n, int64_t vocab,
                            int64_t dim, void* out, bool accumulate, cudaStream_t stream,
                            int64_t first_row) {
  check_embedding("embedding_forward_bf16", n, vocab, dim);
  MOEX_CHECK(first_row >= 0, "embedding_forward_bf16: first_row must be >= 0, got ", first_row);
  if (n == 0) return;
  const auto* t = static_cast<const bf16*>(table);
  auto* o = static_cast<bf16*>(out);
  if (dim % 8 == 0 && aligned16(table) && aligned16(out)) {
    launch_kernel(embedding_forward_kernel<8>, grid_for(n * dim / 8, kThreads), kThreads, 0, stream,
                  ids, t, n, dim, first_row, vocab, o, accumulate);
  } else {
    launch_kernel(embedding_forward_kernel<1>, grid_for(n * dim, kThreads), kThreads, 0, stream,
                  ids, t, n, dim, first_row, vocab, o, accumulate);
  }
  MOEX_LAUNCH_CHECK();
}

size_t embedding_backward_workspace_bytes(int64_t n, int64_t vocab) {
  check_embedding("embedding_backward_workspace_bytes", n, vocab, 1);
  return 3 * aligned_bytes(static_cast<size_t>(n) * sizeof(int32_t)) + sort_temp_bytes(n, vocab);
}

void embedding_backward_bf16(const int32_t* ids, const void* dout, int64_t n, int64_t vocab,
                             int64_t dim, float* dtable, void* workspace, cudaStream_t stream) {
  check_embedding("embedding_backward_bf16", n, vocab, dim);
  if (n == 0) return;
  MOEX_CHECK(workspace != nullptr, "embedding_backward_bf16: workspace is null");
  const size_t ids_bytes = aligned_bytes(static_cast<size_t>(n) * sizeof(int32_t));
  char* ws = static_cast<char*>(workspace);
  auto* sorted_ids = reinterpret_cast<int32_t*>(ws);
  auto* pos = reinterpret_cast<int32_t*>(ws + ids_bytes);
  auto* sorted_pos = reinterpret_cast<int32_t*>(ws + 2 * ids_bytes);
  void* temp = ws + 3 * ids_bytes;
  size_t temp_bytes = sort_temp_bytes(n, vocab);
  iota_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(pos, n);
  MOEX_LAUNCH_CHECK();
  // Radix sort is stable: equal ids keep their positions in increasing order.
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, ids, sorted_ids, pos, sorted_pos,
                                             static_cast<int>(n), 0, id_bits(vocab), stream));
  const auto* d = static_cast<const bf16*>(dout);
  if (dim % 8 == 0 && aligned16(dout) && aligned16(dtable)) {
    const dim3 grid(static_cast<unsigned>(n),
                    static_cast<unsigned>(ceil_div(dim, kRunThreads * 8)));
    embedding_backward_runs_kernel<8><<<grid, kRunThreads, 0, stream>>>(sorted_ids, sorted_pos,
                                                                        n, d, dim, dtable);
  } else {
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(ceil_div(dim, kRunThreads)));
    embedding_backward_runs_kernel<1><<<grid, kRunThreads, 0, stream>>>(sorted_ids, sorted_pos,
                                                                        n, d, dim, dtable);
  }
  MOEX_LAUNCH_CHECK();
}

void embedding_backward_bf16(const int32_t* ids, const void* dout, int64_t n, int64_t vocab,
                             int64_t dim, float* dtable, cudaStream_t stream) {
  check_embedding("embedding_backward_bf16", n, vocab, dim);
  if (n == 0) return;
  // Stream-ordered scratch: freed after the last kernel that reads it, without a host sync.
  const size_t bytes = embedding_backward_workspace_bytes(n, vocab);
  void* workspace = nullptr;
  CUDA_CHECK(cudaMallocAsync(&workspace, bytes, stream));
  embedding_backward_bf16(ids, dout, n, vocab, dim, dtable, workspace, stream);
  CUDA_CHECK(cudaFreeAsync(workspace, stream));
}

}  // namespace moex::cuda
