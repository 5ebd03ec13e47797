#include "cpu/argmax.h"

#include <algorithm>

namespace moex::cpu {

void argmax_rows(const float* x, int64_t rows, int64_t cols, int32_t* out) {
  for (int64_t s = 0; s < rows; ++s) {
    const float* row = x + s * cols;
    out[s] = static_cast<int32_t>(std::max_element(row, row + cols) - row);
  }
}

}  // namespace moex::cpu
