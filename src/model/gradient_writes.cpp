#include "model/gradient_writes.h"

#include "core/error.h"
#include "ops/elementwise.h"

namespace moex::model {

GradientWrites::GradientWrites(const ParamBuffer& grads) : grads_(grads) {}

void GradientWrites::reset() {
  written_.assign(static_cast<size_t>(grads_.size()), false);
  all_written_ = false;
}

void GradientWrites::reset(int first, int last) {
  for (int i = first; i <= last; ++i) written_.at(static_cast<size_t>(i)) = false;
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

bool GradientWrites::any_written(int first, int last) const {
  if (all_written_) return first <= last;
  for (int i = first; i <= last; ++i)
    if (written_.at(static_cast<size_t>(i))) return true;
  return false;
}

void GradientWrites::zero_if_unwritten(int first, int count) {
  if (claim(first, count)) ops::zero(grads_.flat_range(first, first + count - 1));
}

void GradientWrites::zero_unwritten() {
  if (all_written_) return;
  zero_unwritten(0, grads_.size() - 1);
  all_written_ = true;
}

void GradientWrites::zero_unwritten(int first, int last) {
  if (all_written_) return;
  for (int begin = first; begin <= last;) {
    if (written_[static_cast<size_t>(begin)]) {
      ++begin;
      continue;
    }
    int end = begin;
    while (end + 1 <= last && !written_[static_cast<size_t>(end + 1)] &&
           grads_.same_storage(begin, end + 1))
      ++end;
    ops::zero(grads_.flat_range(begin, end));
    for (int i = begin; i <= end; ++i) written_[static_cast<size_t>(i)] = true;
    begin = end + 1;
  }
}

}  // namespace moex::model
