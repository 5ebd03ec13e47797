// A fresh path under gtest's temporary directory for one test (the file does not exist yet).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace moex::testing {

inline std::string fresh_temp_path(const std::string& name) {
  const std::string dir = ::testing::TempDir();
  std::string path =
      dir + (dir.empty() || dir.back() == '/' ? "" : "/") + name + "_" + std::to_string(::getpid());
  std::remove(path.c_str());
  return path;
}

// A fresh, empty directory for one test, removed with everything in it when the test ends.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& name)
      : path(std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string sub(const std::string& name) const { return (path / name).string(); }
};

}  // namespace moex::testing
