#include "sampling_flags.h"

#include <cstdint>

#include "core/error.h"

namespace moex::cli {

infer::SamplingParams sampling_from_flags(const Args& args) {
  infer::SamplingParams sampling;
  sampling.temperature = args.get_double("temperature", 0.0);
  sampling.top_k = args.get_int("top-k", 0);
  sampling.top_p = args.get_double("top-p", 1.0);
  const int64_t seed = args.get_int("seed", 0);
  MOEX_CHECK(seed >= 0, "--seed must be >= 0 (got ", seed, ")");
  sampling.seed = static_cast<uint64_t>(seed);
  infer::check_sampling_params(sampling);
  return sampling;
}

}  // namespace moex::cli
