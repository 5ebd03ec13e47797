// Settings read from the environment: switches and numbers for measurements and deployment
// (MOEX_PDL, MOEX_TOKEN_ROWS_MAX_ROWS, MOEX_NCCL_TIMEOUT_S, ...). A malformed number is an Error
// naming the variable, never a silent default.
#pragma once

#include <cstdint>

namespace moex {

// A switch that is on unless the variable is set to "0".
bool env_on_unless_zero(const char* name);
// A whole number >= 0 from the variable; `fallback` when it is unset or empty.
int64_t env_count(const char* name, int64_t fallback);
// A number > 0 from the variable; `fallback` when it is unset or empty.
double env_positive(const char* name, double fallback);

}  // namespace moex
