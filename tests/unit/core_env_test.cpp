// The environment readers: unset and empty give the fallback, good values parse, a malformed one is
// an error naming the variable.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/env.h"
#include "core/error.h"
#include "cpu_kernel_checks.h"

namespace moex {
namespace {

constexpr const char* kVar = "MOEX_ENV_TEST_VALUE";

TEST(Env, SwitchesAndNumbers) {
  ::unsetenv(kVar);
  EXPECT_TRUE(env_on_unless_zero(kVar));
  EXPECT_EQ(env_count(kVar, 7), 7);
  EXPECT_EQ(env_positive(kVar, 2.5), 2.5);
  ::setenv(kVar, "", 1);
  EXPECT_EQ(env_count(kVar, 7), 7);
  ::setenv(kVar, "0", 1);
  EXPECT_FALSE(env_on_unless_zero(kVar));
  EXPECT_EQ(env_count(kVar, 7), 0);
  ::setenv(kVar, "1", 1);
  EXPECT_TRUE(env_on_unless_zero(kVar));
  ::setenv(kVar, "512", 1);
  EXPECT_EQ(env_count(kVar, 7), 512);
  ::setenv(kVar, "0.25", 1);
  EXPECT_EQ(env_positive(kVar, 1.0), 0.25);
  for (const char* bad : {"-3", "12x", "many"}) {
    ::setenv(kVar, bad, 1);
    SCOPED_TRACE(bad);
    testing::expect_error_naming([] { env_count(kVar, 0); }, {kVar});
  }
  for (const char* bad : {"0", "-1", "1s"}) {
    ::setenv(kVar, bad, 1);
    SCOPED_TRACE(bad);
    testing::expect_error_naming([] { env_positive(kVar, 1.0); }, {kVar});
  }
  ::unsetenv(kVar);
}

}  // namespace
}  // namespace moex
