// Stream capture of one step into a CUDA graph, and its replay (ops/step_graph.h is the interface
// the model uses). While this thread captures, a device allocation is an error: a captured step
// may only use buffers that outlive it, since its replays write to the same addresses.
#pragma once

#include <cuda_runtime.h>

namespace moex::cuda {

// Starts capturing the work this thread issues on `stream` (thread-local capture mode).
void begin_capture(cudaStream_t stream);
// Ends the capture and instantiates it. keep false (the step failed): discards what was captured
// and returns null, leaving the stream usable.
cudaGraphExec_t end_capture(cudaStream_t stream, bool keep);
void launch_graph(cudaGraphExec_t exec, cudaStream_t stream);
void destroy_graph(cudaGraphExec_t exec);
// Whether this thread is between begin_capture and end_capture.
bool capturing_on_this_thread();

}  // namespace moex::cuda
