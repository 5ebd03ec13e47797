#include "ops/profile.h"

#include <algorithm>
#include <map>

#include "core/timer.h"
#include "ops/device_dispatch.h"

#if MOEX_WITH_CUDA
#include "cuda/cuda_check.h"
#endif

namespace moex::ops {
namespace {

bool g_enabled = false;
std::map<std::string, double> g_host_ms;  // host wall time per scope name

#if MOEX_WITH_CUDA
struct Record {
  std::string name;
  cudaEvent_t start = nullptr, stop = nullptr;
  bool outermost = false;  // not inside another scope
};
std::vector<Record> g_records;
#endif
int g_depth = 0;  // scopes open now

}  // namespace

bool profile_enabled() {
  return g_enabled;
}

void profile_enable(bool on) {
  g_enabled = on;
  if (on) {
    profile_report();
    g_depth = 0;  // a scope left open when profiling went off closed uncounted
  }
}

ProfileScope::ProfileScope(const char* name, const Device& device) {
  if (!g_enabled) return;
  if (device.is_cpu()) {
    // A CPU op runs on this thread before it returns: its wall time is its time.
    cpu_name_ = name;
    host_start_ms_ = now_ms();
    return;
  }
#if MOEX_WITH_CUDA
  Record r;
  r.name = name;
  r.outermost = g_depth++ == 0;
  host_start_ms_ = now_ms();
  CUDA_CHECK(cudaEventCreate(&r.start));
  CUDA_CHECK(cudaEventCreate(&r.stop));
  CUDA_CHECK(cudaEventRecord(r.start, detail::stream(device)));
  g_records.push_back(r);
  slot_ = static_cast<int>(g_records.size()) - 1;
  stream_ordinal_ = device.ordinal;
#else
  (void)name;
#endif
}

ProfileScope::~ProfileScope() {
  if (!g_enabled) return;
  if (cpu_name_ != nullptr) {
    g_host_ms[cpu_name_] += now_ms() - host_start_ms_;
    return;
  }
#if MOEX_WITH_CUDA
  if (slot_ >= 0) {
    cudaEventRecord(g_records[slot_].stop, detail::stream(Device::cuda(stream_ordinal_)));
    --g_depth;
    g_host_ms["host." + g_records[slot_].name] += now_ms() - host_start_ms_;
  }
#endif
}

std::vector<std::pair<std::string, double>> profile_report() {
  std::map<std::string, double> ms;
  ms.swap(g_host_ms);
#if MOEX_WITH_CUDA
  const Record* previous = nullptr;  // the last outermost scope
  for (const Record& r : g_records) {
    CUDA_CHECK(cudaEventSynchronize(r.stop));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, r.start, r.stop));
    ms[r.name] += t;
    if (r.outermost) {
      // The device time between two outermost scopes: unscoped work, or the GPU waiting for the
      // host (a synchronisation, launches slower than the kernels they start).
      if (previous != nullptr) {
        CUDA_CHECK(cudaEventElapsedTime(&t, previous->stop, r.start));
        ms["gap_before." + r.name] += t;
      }
      previous = &r;
    }
  }
  for (Record& r : g_records) {
    cudaEventDestroy(r.start);
    cudaEventDestroy(r.stop);
  }
  g_records.clear();
#endif
  std::vector<std::pair<std::string, double>> out(ms.begin(), ms.end());
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.second > b.second; });
  return out;
}

}  // namespace moex::ops
