#include "model/gradient_writes.h"

#include "core/error.h"
#include "ops/elementwise.h"

namespace moex::model {

GradientWrites::GradientWrites(const ParamBuffer& grads) : grads_(grads) {}

void GradientWrites::reset() {
  written_.assign(static_cast<size_t>(grads_.size()), false);
  all_written_ = false;
}

bool GradientWrites::claim(int first, int count) {
  if (all_written_) return false;
  const bool fresh = !written_.at(static_cast<size_t>(first));
  for (int i = first; i < first + count; ++i) {
    MOEX_CHECK(written_.at(static_cast<size_t>(i)) != fresh, "gradient entries ",
               grads_.name(first), " .. ", grads_.name(first + count - 1),
               " claimed together but written apart");
    written_[static_cast<size_t>(i)] = true;
  }
  return fresh;
}

void GradientWrites::zero_if_unwritten(int first, int count) {
  if (claim(first, count)) ops::zero(grads_.flat_range(first, first + count - 1));
}

void GradientWrites::zero_unwritten() {
  if (all_written_) return;
  const int n = grads_.size();
  for (int begin = 0; begin < n;) {
    if (written_[static_cast<size_t>(begin)]) {
      ++begin;
      continue;
    }
    int end = begin;
    while (end + 1 < n && !written_[static_cast<size_t>(end + 1)]) ++end;
    ops::zero(grads_.flat_range(begin, end));
    begin = end + 1;
  }
  written_.assign(written_.size(), true);
  all_written_ = true;
}

}  // namespace moex::model
