// Step arena: one buffer planned at start-up, bump-allocated during a step, reset after it.
// Nothing is freed one by one, so the hot path never calls malloc/cudaMalloc.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace moex {

// Captured device work (ops/step_graph.h) holds the raw addresses of long-lived buffers: the step
// arena, layer scratch. Whatever replaces such a buffer calls buffers_moved(), and a step captured
// under an older buffer_generation() is captured again before it next runs.
uint64_t buffer_generation();
void buffers_moved();

// Where buffers carved one after another from one block start (an arena, a workspace, lent
// memory): enough for 16-byte vector loads and TMA.
constexpr size_t kBufferAlignment = 256;

// bytes (or an address) rounded up to kBufferAlignment: the next buffer's start.
constexpr size_t aligned_bytes(size_t bytes) {
  return (bytes + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
}

class Arena {
 public:
  static constexpr size_t kAlignment = kBufferAlignment;

  // growable: a request that does not fit takes one more block instead of failing; reset() then
  // replaces the blocks by one of the high-water size, so the first step of a shape plans the
  // arena and later steps of that shape allocate nothing (docs/architecture.md §Core types).
  Arena(size_t capacity_bytes, Device device = Device::cpu(), bool growable = false);

  // A tensor in the arena; valid until the next reset() (or release() past it). Throws when a
  // fixed arena is full.
  Tensor alloc(const Shape& shape, DType dtype);
  void reset();

  // Stack discipline for temporaries: everything allocated after mark() is given back by
  // release(mark) (kernels already queued on the device's stream keep their order).
  struct Mark {
    size_t block = 0, used = 0;
  };
  Mark mark() const { return {blocks_.size() - 1, used_}; }
  void release(const Mark& m);

  size_t used() const { return used_; }              // in the current block
  size_t high_water() const { return high_water_; }  // bytes of all blocks at their fullest
  size_t capacity() const { return capacity_; }
  Device device() const { return device_; }

 private:
  struct Block {
    Tensor backing;        // [bytes + kAlignment] u8
    char* base = nullptr;  // first aligned byte
    size_t bytes = 0;
  };
  void add_block(size_t bytes);

  std::vector<Block> blocks_;
  size_t capacity_ = 0;     // sum of the blocks' bytes
  size_t used_ = 0;         // in the last block
  size_t used_before_ = 0;  // bytes in the full blocks before the last one
  size_t high_water_ = 0;
  Device device_;
  bool growable_ = false;
};

// Allocations of one scope given back when it ends (module-internal temporaries).
class ArenaScope {
 public:
  explicit ArenaScope(Arena& arena) : arena_(arena), mark_(arena.mark()) {}
  ~ArenaScope() { arena_.release(mark_); }
  ArenaScope(const ArenaScope&) = delete;
  ArenaScope& operator=(const ArenaScope&) = delete;

 private:
  Arena& arena_;
  Arena::Mark mark_;
};

// Parameters (or gradients, or optimizer state) of a model laid out in one flat buffer:
// declare every tensor first, then allocate once; each tensor is a view into the buffer.
class ParamBuffer {
 public:
  // Returns the index of the new entry; the shapes are fixed from here on. split_dim >= 0 marks
  // a tensor-parallel part: the entry holds this rank's 1/tp of the named tensor along that
  // dimension (docs/parallelism.md §Tensor parallelism); -1: the whole tensor. split_blocks > 1:
  // that dimension is that many equal blocks, each split alike (a fused [gate; up] projection:
  // this rank's gate rows, then its up rows).
  int declare(const std::string& name, const Shape& shape, int split_dim = -1,
              int split_blocks = 1);
  // Declares entries back to back with no padding between them, so that one view can span them
  // (e.g. gate_proj then up_proj read as one fused [2F, d] matrix). Returns the first index.
  int declare_contiguous(const std::vector<std::string>& names, const std::vector<Shape>& shapes,
                         int split_dim = -1);
  // A view over entries first..last (contiguous ones), as one tensor of `shape`.
  Tensor span(int first, int last, const Shape& shape) const;
  // The flat buffer from entry first's start to entry last's end, alignment padding included.
  Tensor flat_range(int first, int last) const;
  void allocate(DType dtype, Device device = Device::cpu());
  // Uses `flat` (total_elements() elements, e.g. pinned host memory) as the buffer's storage.
  void allocate_in(const Tensor& flat);
  // Backs entries [first, last] with `storage` (at least range_elements(first, last) elements)
  // instead of the flat buffer: for a buffer that never holds all its entries at once (ZeRO
  // stage 2's gradients, docs/parallelism.md §ZeRO). Several ranges may share one storage. Once
  // a range is bound, flat() is undefined and flat_range / span work within one bound range;
  // entries bound to nothing have undefined views.
  void bind_range(int first, int last, const Tensor& storage);
  // Elements from entry first's start to entry last's end, alignment padding included.
  int64_t range_elements(int first, int last) const;
  // True when entries i and j lie in one allocation, at their layout's distance.
  bool same_storage(int i, int j) const;
  // The same layout with a copy of the values on another device (an allocated buffer).
  ParamBuffer copy_to(Device device) const;
  // The same layout, allocated on `device` (zeros on the CPU, uninitialized elsewhere).
  ParamBuffer like(DType dtype, Device device) const;
  // The same layout, unallocated (for bind_range).
  ParamBuffer layout() const;

  int size() const { return static_cast<int>(names_.size()); }
  const std::string& name(int i) const { return names_.at(i); }
  // Entry i, a view of flat(); undefined while the buffer is unallocated (e.g. an inference
  // model's gradients), and so are span()'s views.
  const Tensor& tensor(int i) const;
  int split_dim(int i) const { return split_dims_.at(i); }
  int split_blocks(int i) const { return split_blocks_.at(i); }
  int index_of(const std::string& name) const;            // -1 if absent
  int64_t offset(int i) const { return offsets_.at(i); }  // entry i's first element in flat()
  const Tensor& flat() const { return flat_; }            // [total] of the buffer's dtype
  int64_t total_elements() const { return total_; }       // with the 64-element alignment padding
  int64_t num_elements() const;                           // declared elements, without padding

 private:
  std::vector<std::string> names_;
  std::vector<Shape> shapes_;
  std::vector<int> split_dims_;    // [entries] tensor-parallel split dimension, -1: whole
  std::vector<int> split_blocks_;  // [entries] blocks of that dimension, each split alike
  std::vector<int64_t> offsets_;   // element offset of each entry, aligned to 64 elements
  std::vector<Tensor> tensors_;
  // [entries] the storage each entry is a view of, and the flat offset of that storage's element
  // 0 (flat_ and 0 when allocated whole).
  std::vector<Tensor> backing_;
  std::vector<int64_t> backing_begin_;
  // Makes every entry a view of `flat` [total].
  void use_flat(const Tensor& flat);
  // The storage of entries [first, last] from flat element `begin` to `end` (same_storage).
  Tensor backed_slice(int first, int last, int64_t begin, int64_t end) const;
  Tensor flat_;
  int64_t total_ = 0;
};

}  // namespace moex
