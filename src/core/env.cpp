#include "core/env.h"

#include <cstdlib>
#include <string>

#include "core/error.h"

namespace moex {

bool env_on_unless_zero(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::string(env) != "0";
}

int64_t env_count(const char* name, int64_t fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  MOEX_CHECK(end != env && *end == '\0' && v >= 0, name, " must be a whole number >= 0, got '",
             env, "'");
  return static_cast<int64_t>(v);
}

double env_positive(const char* name, double fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const double v = std::strtod(env, &end);
  MOEX_CHECK(end != env && *end == '\0' && v > 0, name, " must be a number > 0, got '", env, "'");
  return v;
}

}  // namespace moex
