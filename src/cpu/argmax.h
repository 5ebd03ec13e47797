// The index of each row's largest value, the lowest index winning ties. Twin: cuda/argmax.h.
#pragma once

#include <cstdint>

namespace moex::cpu {

// out[s] = argmax_v x[s * cols + v]
void argmax_rows(const float* x, int64_t rows, int64_t cols, int32_t* out);

}  // namespace moex::cpu
