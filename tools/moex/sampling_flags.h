// --temperature, --top-k, --top-p and --seed of the commands that sample (generate, bench decode).
#pragma once

#include "args.h"
#include "infer/sampler.h"

namespace moex::cli {

// The flags' sampling parameters (greedy by default); a negative seed or an out-of-range value is
// an error naming it.
infer::SamplingParams sampling_from_flags(const Args& args);

}  // namespace moex::cli
