#include "cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "cpu/parallel.h"

namespace moex::cpu {

void paged_attention(const float* q, const float* k_pool, const float* v_pool,
                     const int32_t* tables, const int32_t* row_seq, const int32_t* row_pos,
                     const PagedAttentionShape& s, float* out) {
  MOEX_CHECK(s.heads > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0, "paged_attention: heads (",
             s.heads, ") must be a multiple of kv_heads (", s.kv_heads, ")");
  MOEX_CHECK(s.head_dim > 0 && s.block_size > 0 && s.max_blocks > 0,
             "paged_attention: head_dim, block_size and max_blocks must be > 0");
  const int64_t group = s.heads / s.kv_heads, dh = s.head_dim, kd = s.kv_heads * dh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  // Each (row, head) dots its query with a key and weighs a value at each of its positions.
  double positions = 0;
  for (int64_t r = 0; r < s.rows; ++r) positions += static_cast<double>(row_pos[r] + 1);
  const int team =
      threads_for(4.0 * s.heads * dh * positions, 8.0 * s.heads * dh * positions, s.rows * s.heads);
#pragma omp parallel num_threads(team) if (team > 1)
  {
    std::vector<float> score;
#pragma omp for schedule(static) collapse(2)
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t h = 0; h < s.heads; ++h) {
        const int64_t len = row_pos[r] + 1;
        const int32_t* table = tables + row_seq[r] * s.max_blocks;
        const float* qh = q + (r * s.heads + h) * dh;
        const int64_t kv_off = (h / group) * dh;
        auto slot = [&](int64_t p) {
          return (static_cast<int64_t>(table[p / s.block_size]) * s.block_size + p % s.block_size) *
                 kd;
        };
        score.resize(len);
        float m = -INFINITY;
        for (int64_t p = 0; p < len; ++p) {
          const float* kp = k_pool + slot(p) + kv_off;
          float dot = 0;
          for (int64_t i = 0; i < dh; ++i) dot += qh[i] * kp[i];
          score[p] = dot * scale;
          m = std::max(m, score[p]);
        }
        float sum = 0;
        for (int64_t p = 0; p < len; ++p) sum += score[p] = std::exp(score[p] - m);
        float* oh = out + (r * s.heads + h) * dh;
        std::fill(oh, oh + dh, 0.0f);
        for (int64_t p = 0; p < len; ++p) {
          const float* vp = v_pool + slot(p) + kv_off;
          const float w = score[p] / sum;
          for (int64_t i = 0; i < dh; ++i) oh[i] += w * vp[i];
        }
      }
    }
  }
}

void scatter_rows(const float* rows, const int32_t* slots, int64_t num_rows, int64_t width,
                  int64_t num_slots, float* pool) {
  for (int64_t r = 0; r < num_rows; ++r)
    MOEX_CHECK(slots[r] >= 0 && slots[r] < num_slots, "scatter_rows: row ", r, " goes to slot ",
               slots[r], ", outside [0, ", num_slots, ")");
  for (int64_t r = 0; r < num_rows; ++r)
    std::memcpy(pool + static_cast<int64_t>(slots[r]) * width, rows + r * width,
                static_cast<size_t>(width) * sizeof(float));
}

void gather_rows(const float* src, const int32_t* index, int64_t num_rows, int64_t width,
                 int64_t num_src, float* out) {
  for (int64_t r = 0; r < num_rows; ++r)
    MOEX_CHECK(index[r] >= 0 && index[r] < num_src, "gather_rows: row ", r, " reads row ", index[r],
               ", outside [0, ", num_src, ")");
  for (int64_t r = 0; r < num_rows; ++r)
    std::memcpy(out + r * width, src + static_cast<int64_t>(index[r]) * width,
                static_cast<size_t>(width) * sizeof(float));
}

}  // namespace moex::cpu
