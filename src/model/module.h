// What every model module shares: parameters declared under Hugging Face names into one
// ParamBuffer (and the same layout for gradients), then bound to views of both.
#pragma once

#include <string>

#include "core/arena.h"

namespace moex::model {

// Views of one parameter and its gradient.
struct Param {
  float* w = nullptr;
  float* g = nullptr;
  int index = -1;
  explicit operator bool() const { return w != nullptr; }
};

inline Param bind_param(const ParamBuffer& params, const ParamBuffer& grads, int index) {
  if (index < 0) return {};
  return {params.tensor(index).data<float>(), grads.tensor(index).data<float>(), index};
}

}  // namespace moex::model
