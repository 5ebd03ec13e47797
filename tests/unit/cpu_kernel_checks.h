// Helpers shared by the cpu_* kernel tests (the finite-difference helpers are in gradcheck.h).
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"

namespace moex::testing {

// f() must throw moex::Error whose message contains every one of `names` (the argument at fault).
template <typename F>
void expect_error_naming(F&& f, const std::vector<std::string>& names) {
  try {
    f();
    ADD_FAILURE() << "expected moex::Error naming " << names.front();
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const std::string& name : names) {
      EXPECT_NE(what.find(name), std::string::npos) << "message lacks '" << name << "': " << what;
    }
  }
}

template <typename To, typename From>
std::vector<To> cast_vector(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

}  // namespace moex::testing
