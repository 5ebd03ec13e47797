// Replaying one step's device work (docs/gpu-model.md §Decoding). On CUDA, capture() records the
// ops a step issues into a CUDA graph without running them, and launch() queues the whole step as
// one graph launch instead of one launch (plus host work) per kernel.
//
// A captured step must find its buffers at the same addresses on every replay: its inputs are
// copied into fixed tensors before launch() (staging tensors and copy_async below), it allocates
// nothing on the device (an error while capturing: run the step once directly first so every
// buffer has its size), its host-side branches depend only on the shapes it was captured for, and
// it never waits for the device. When something replaces a long-lived buffer (core/arena.h
// buffers_moved), ready() turns false and the step must be captured again. CUDA devices only.
#pragma once

#include <cstdint>
#include <functional>

#include "core/tensor.h"

namespace moex::ops {

class StepGraph {
 public:
  explicit StepGraph(const Device& device);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // A graph is captured and no buffer has moved since.
  bool ready() const;
  // Records what `step` issues on the device's stream (replacing any earlier graph).
  void capture(const std::function<void()>& step);
  // Queues the captured step on the device's stream; returns without waiting.
  void launch();
  int64_t captures() const { return captures_; }
  int64_t replays() const { return replays_; }

 private:
  Device device_;
  void* exec_ = nullptr;  // cudaGraphExec_t
  uint64_t generation_ = 0;
  int64_t captures_ = 0, replays_ = 0;
};

// A point in the device's stream that the host can wait for: wait() returns once the work
// queued before record() has finished (a CUDA event; on the CPU every op has finished when it
// returns, so both are no-ops). Lets the host read one step's results while the next one runs.
class StreamMark {
 public:
  explicit StreamMark(const Device& device);
  ~StreamMark();
  StreamMark(const StreamMark&) = delete;
  StreamMark& operator=(const StreamMark&) = delete;
  void record();
  void wait() const;  // returns at once when nothing was recorded

 private:
  Device device_;
  void* event_ = nullptr;  // cudaEvent_t
  bool recorded_ = false;
};

// A host tensor whose copies to and from `device` can run asynchronously on the device's stream
// (pinned memory on CUDA, plain memory for the CPU).
Tensor staging_tensor(const Shape& shape, DType dtype, const Device& device);
// dst = src between a staging tensor and a tensor of the same dtype and size on its device,
// queued on the device's stream (a plain copy on the CPU). Wait with ops::synchronize before
// reading a download or rewriting an upload's source.
void copy_async(const Tensor& src, const Tensor& dst);

// Whether the per-op profiler is on (ops/profile.h): its timers cannot be captured, so callers
// run steps directly while it is.
bool step_graphs_allowed();

}  // namespace moex::ops
