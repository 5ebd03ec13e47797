#include "ops/profile.h"

#include <algorithm>
#include <map>

#include "ops/device_dispatch.h"

#if MOEX_WITH_CUDA
#include "cuda/cuda_check.h"
#endif

namespace moex::ops {
namespace {

bool g_enabled = false;

#if MOEX_WITH_CUDA
struct Record {
  std::string name;
  cudaEvent_t start = nullptr, stop = nullptr;
};
std::vector<Record> g_records;
#endif

}  // namespace

bool profile_enabled() {
  return g_enabled;
}

void profile_enable(bool on) {
  g_enabled = on;
  if (on) profile_report();
}

ProfileScope::ProfileScope(const char* name, const Device& device) {
  if (!g_enabled || device.is_cpu()) return;
#if MOEX_WITH_CUDA
  Record r;
  r.name = name;
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
#if MOEX_WITH_CUDA
  if (slot_ >= 0)
    cudaEventRecord(g_records[slot_].stop, detail::stream(Device::cuda(stream_ordinal_)));
#endif
}

std::vector<std::pair<std::string, double>> profile_report() {
  std::map<std::string, double> ms;
#if MOEX_WITH_CUDA
  for (Record& r : g_records) {
    CUDA_CHECK(cudaEventSynchronize(r.stop));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, r.start, r.stop));
    ms[r.name] += t;
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
