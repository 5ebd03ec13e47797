#include "cuda/cudnn_attention.h"

#include <cudnn_frontend.h>
#include <dlfcn.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/logging.h"
#include "core/tensor.h"
#include "cuda/cuda_check.h"

// The frontend reaches cuDNN through this handle (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING): cuDNN is
// opened at first use, like cuBLAS (cuda/cublas_api.h), so a machine without it still runs moex on
// its own attention kernels.
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}  // namespace cudnn_frontend

namespace moex::cuda {
namespace {

namespace fe = cudnn_frontend;
using Graph = std::shared_ptr<fe::graph::Graph>;

enum Uid : fe::graph::Tensor_attributes::uid_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

// Opens libcudnn.so.9 (and the CUDA runtime the frontend calls through, found by its soname once
// this has loaded it from the toolkit's directory); false with the reason when either is missing.
bool open_cudnn(std::string* why) {
  auto open_from = [&](const std::string& soname) -> void* {
    std::vector<std::string> candidates = {soname};
#ifdef MOEX_CUDA_LIB_DIR
    candidates.insert(candidates.begin(), std::string(MOEX_CUDA_LIB_DIR) + "/" + soname);
#endif
    candidates.push_back("/usr/local/cuda/lib64/" + soname);
    for (const std::string& path : candidates)
      if (void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return lib;
    const char* e = dlerror();
    *why += soname + ": " + (e != nullptr ? e : "not found") + "; ";
    return nullptr;
  };
  const std::string cudart = "libcudart.so." + std::to_string(CUDART_VERSION / 1000);
  if (open_from(cudart) == nullptr) return false;
  fe::cudnn_dlhandle = open_from("libcudnn.so." + std::to_string(CUDNN_MAJOR));
  return fe::cudnn_dlhandle != nullptr;
}

// The shape a graph pair serves.
struct ShapeKey {
  int64_t b, t, h, hkv, d;
  float scale;
  int device;
  bool operator<(const ShapeKey& o) const {
    return std::tie(b, t, h, hkv, d, scale, device) <
           std::tie(o.b, o.t, o.h, o.hkv, o.d, o.scale, o.device);
  }
};

struct Graphs {
  bool supported = false;
  Graph fwd, bwd;
  int64_t fwd_workspace = 0, bwd_workspace = 0;
};

// [b, heads, t, d] as cuDNN names it, in moex's [b, t, heads, d] layout.
fe::graph::Tensor_attributes bthd(const char* name, Uid uid, const ShapeKey& s, int64_t heads) {
  return fe::graph::Tensor_attributes()
      .set_name(name)
      .set_uid(uid)
      .set_dim({s.b, heads, s.t, s.d})
      .set_stride({s.t * heads * s.d, s.d, heads * s.d, 1});
}

// lse [b, h, t] fp32 as cuDNN's stats [b, h, t, 1].
fe::graph::Tensor_attributes stats_of(const ShapeKey& s) {
  return fe::graph::Tensor_attributes()
      .set_name("stats")
      .set_uid(kStats)
      .set_dim({s.b, s.h, s.t, 1})
      .set_stride({s.h * s.t, s.t, 1, 1})
      .set_data_type(fe::DataType_t::FLOAT);
}

using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

// A graph over moex's q, k, v: bf16 in and out, fp32 inside.
struct AttentionGraph {
  Graph graph;
  TensorPtr q, k, v;
};

AttentionGraph new_graph(const ShapeKey& s) {
  AttentionGraph a{std::make_shared<fe::graph::Graph>(), nullptr, nullptr, nullptr};
  a.graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  a.q = a.graph->tensor(bthd("q", kQ, s, s.h));
  a.k = a.graph->tensor(bthd("k", kK, s, s.hkv));
  a.v = a.graph->tensor(bthd("v", kV, s, s.hkv));
  return a;
}

// Marks t, which the graph computes, as an output laid out as `like` (uid, dims, strides, and
// its data type where it names one).
void output_as(const TensorPtr& t, const fe::graph::Tensor_attributes& like) {
  t->set_output(true).set_uid(like.get_uid()).set_dim(like.get_dim()).set_stride(like.get_stride());
  if (like.get_data_type() != fe::DataType_t::NOT_SET) t->set_data_type(like.get_data_type());
}

Graph forward_graph(const ShapeKey& s) {
  AttentionGraph a = new_graph(s);
  auto options = fe::graph::SDPA_attributes()
                     .set_name("attention")
                     .set_generate_stats(true)
                     .set_attn_scale(s.scale)
                     .set_causal_mask(true);
  auto [o, stats] = a.graph->sdpa(a.q, a.k, a.v, options);
  output_as(o, bthd("out", kO, s, s.h));
  output_as(stats, stats_of(s));
  return a.graph;
}

Graph backward_graph(const ShapeKey& s) {
  AttentionGraph a = new_graph(s);
  auto o = a.graph->tensor(bthd("out", kO, s, s.h));
  auto dout = a.graph->tensor(bthd("dout", kDO, s, s.h));
  auto stats = a.graph->tensor(stats_of(s));
  auto options = fe::graph::SDPA_backward_attributes()
                     .set_name("attention_backward")
                     .set_attn_scale(s.scale)
                     .set_causal_mask(true);
  auto [dq, dk, dv] = a.graph->sdpa_backward(a.q, a.k, a.v, o, dout, stats, options);
  output_as(dq, bthd("dq", kDQ, s, s.h));
  output_as(dk, bthd("dk", kDK, s, s.hkv));
  output_as(dv, bthd("dv", kDV, s, s.hkv));
  return a.graph;
}

class CudnnAttention {
 public:
  static CudnnAttention& instance() {
    static CudnnAttention* one = new CudnnAttention();  // outlives static tensors
    return *one;
  }

  // The graphs of p's shape on the current device, built on first use; null when unsupported.
  Graphs* graphs(const AttentionParams& p) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!loaded_) return nullptr;
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    const ShapeKey key{
        p.batch, p.q_len, p.num_heads, p.num_kv_heads, p.head_dim, attention_scale(p), device};
    auto it = shapes_.find(key);
    if (it == shapes_.end()) {
      // Each shape costs a graph build (tens of ms); evaluating many sequence lengths would build
      // one for each, so past kMaxShapes new shapes run on the own kernels.
      if (shapes_.size() >= kMaxShapes) {
        if (!full_logged_)
          MOEX_INFO("attention: cuDNN graphs for ", kMaxShapes,
                    " shapes built; further shapes run moex's own kernels");
        full_logged_ = true;
        return nullptr;
      }
      it = shapes_.emplace(key, build(key)).first;
    }
    return it->second.supported ? &it->second : nullptr;
  }

  // Runs graph g on `stream` with the device's handle, holding the lock from setting the handle's
  // stream to queuing the work (host threads may share a device).
  void execute(const Graph& g, cudaStream_t stream,
               std::unordered_map<fe::graph::Tensor_attributes::uid_t, void*> pack, void* workspace,
               const char* what) {
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(mutex_);
    cudnnHandle_t h = handle_locked(device);
    check(fe::detail::set_stream(h, stream), "cudnnSetStream");
    fe::error_object e = g->execute(h, pack, workspace);
    MOEX_CHECK(e.is_good(), "attention: cuDNN ", what, " failed: ", e.get_message());
  }

 private:
  CudnnAttention() {
    std::string why;
    loaded_ = cudnn_library_open(&why);
    if (!loaded_) MOEX_INFO("attention: cuDNN not loaded (", why, "); moex's own kernels run");
  }

  static void check(cudnnStatus_t status, const char* what) {
    MOEX_CHECK(status == CUDNN_STATUS_SUCCESS, "attention: ", what,
               " failed: ", fe::detail::get_error_string(status));
  }

  Graphs build(const ShapeKey& s) {
    Graphs g;
    std::string why;
    try {
      cudnnHandle_t h = handle_locked(s.device);
      g.fwd = forward_graph(s);
      g.bwd = backward_graph(s);
      for (const Graph& graph : {g.fwd, g.bwd}) {
        fe::error_object e = graph->build(h, {fe::HeurMode_t::A});
        if (e.is_bad()) why += e.get_message() + "; ";
      }
      if (why.empty()) {
        for (auto [graph, bytes] :
             {std::pair{&g.fwd, &g.fwd_workspace}, {&g.bwd, &g.bwd_workspace}}) {
          fe::error_object e = (*graph)->get_workspace_size(*bytes);
          if (e.is_bad()) why += e.get_message() + "; ";
        }
      }
      if (why.empty()) g.supported = true;
    } catch (const std::exception& e) {
      why += e.what();
    }
    if (!g.supported)
      MOEX_WARN("attention: cuDNN refuses B=", s.b, " T=", s.t, " H=", s.h, "/", s.hkv,
                " head_dim=", s.d, " (", why, "); moex's own kernels run it");
    return g;
  }

  cudnnHandle_t handle_locked(int device) {
    cudnnHandle_t& h = handles_[device];
    if (h == nullptr) check(fe::detail::create_handle(&h), "cudnnCreate");
    return h;
  }

  static constexpr size_t kMaxShapes = 16;
  std::mutex mutex_;
  bool loaded_ = false, full_logged_ = false;
  std::map<ShapeKey, Graphs> shapes_;
  std::map<int, cudnnHandle_t> handles_;
};

}  // namespace

bool cudnn_library_open(std::string* why) {
  // Tried once, by the first caller (a function-local static is initialised once, thread-safely).
  struct Opened {
    bool ok = false;
    std::string reason;
  };
  static const Opened opened = [] {
    Opened o;
    o.ok = open_cudnn(&o.reason);
    return o;
  }();
  if (!opened.ok && why != nullptr) *why = opened.reason;
  return opened.ok;
}

bool cudnn_attention_supports(const AttentionParams& p) {
  return CudnnAttention::instance().graphs(p) != nullptr;
}

void cudnn_attention_forward(const void* q, const void* k, const void* v, void* out, float* lse,
                             const AttentionParams& p, cudaStream_t stream) {
  CudnnAttention& c = CudnnAttention::instance();
  Graphs* g = c.graphs(p);
  MOEX_CHECK(g != nullptr, "cudnn_attention_forward: cuDNN does not run this shape");
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  // The graph always makes the statistics; a caller without lse gets them in a scratch buffer.
  // The workspace is the call's own (callers on other streams may run beside it).
  Tensor scratch, workspace;
  if (lse == nullptr) {
    scratch =
        Tensor::empty(Shape{p.batch * p.num_heads * p.q_len}, DType::kF32, Device::cuda(device));
    lse = scratch.data<float>();
  }
  if (g->fwd_workspace > 0)
    workspace = Tensor::empty(Shape{g->fwd_workspace}, DType::kU8, Device::cuda(device));
  c.execute(g->fwd, stream,
            {{kQ, const_cast<void*>(q)},
             {kK, const_cast<void*>(k)},
             {kV, const_cast<void*>(v)},
             {kO, out},
             {kStats, lse}},
            workspace.defined() ? workspace.raw_data() : nullptr, "forward");
}

size_t cudnn_attention_backward_workspace_bytes(const AttentionParams& p) {
  Graphs* g = CudnnAttention::instance().graphs(p);
  MOEX_CHECK(g != nullptr, "cudnn_attention_backward: cuDNN does not run this shape");
  return static_cast<size_t>(g->bwd_workspace);
}

void cudnn_attention_backward(const void* dout, const void* q, const void* k, const void* v,
                              const void* out, const float* lse, void* dq, void* dk, void* dv,
                              void* workspace, const AttentionParams& p, cudaStream_t stream) {
  CudnnAttention& c = CudnnAttention::instance();
  Graphs* g = c.graphs(p);
  MOEX_CHECK(g != nullptr, "cudnn_attention_backward: cuDNN does not run this shape");
  c.execute(g->bwd, stream,
            {{kQ, const_cast<void*>(q)},
             {kK, const_cast<void*>(k)},
             {kV, const_cast<void*>(v)},
             {kO, const_cast<void*>(out)},
             {kDO, const_cast<void*>(dout)},
             {kStats, const_cast<float*>(lse)},
             {kDQ, dq},
             {kDK, dk},
             {kDV, dv}},
            workspace, "backward");
}

}  // namespace moex::cuda
