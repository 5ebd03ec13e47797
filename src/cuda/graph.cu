#include "cuda/cuda_check.h"
#include "cuda/graph.h"

namespace moex::cuda {
namespace {
thread_local bool t_capturing = false;
}  // namespace

void begin_capture(cudaStream_t stream) {
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  t_capturing = true;
}

cudaGraphExec_t end_capture(cudaStream_t stream, bool keep) {
  t_capturing = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(stream, &graph);
  if (!keep) {
    // A failed step may have invalidated the capture; clear that error and drop the graph.
    (void)cudaGetLastError();
    if (graph != nullptr) cudaGraphDestroy(graph);
    return nullptr;
  }
  CUDA_CHECK(err);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  CUDA_CHECK(inst);
  return exec;
}

void launch_graph(cudaGraphExec_t exec, cudaStream_t stream) {
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
}

void destroy_graph(cudaGraphExec_t exec) {
  if (exec != nullptr) cudaGraphExecDestroy(exec);
}

bool capturing_on_this_thread() {
  return t_capturing;
}

}  // namespace moex::cuda
