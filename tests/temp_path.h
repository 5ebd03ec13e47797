// A fresh path under gtest's temporary directory for one test (the file does not exist yet).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace moex::testing {

inline std::string fresh_temp_path(const std::string& name) {
  const std::string dir = ::testing::TempDir();
  std::string path =
      dir + (dir.empty() || dir.back() == '/' ? "" : "/") + name + "_" + std::to_string(::getpid());
  std::remove(path.c_str());
  return path;
}

}  // namespace moex::testing
