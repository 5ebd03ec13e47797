// Greedy decoding on the device: the index of each row's largest value, the lowest index winning
// ties (as std::max_element, which the host sampler uses), so only [S] ids travel to the host.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

// out[s] = argmax_v x[s, v]: x [S, V] f32, out [S] i32, on one device.
void argmax_rows(const Tensor& x, const Tensor& out);

}  // namespace moex::ops
