// The file store that bootstraps a group without MPI (dist/file_store.h): a value round-trips,
// a reader waits for a writer that comes late, and a missing, garbled or wrong-sized file is one
// clear error naming the file within the wait, never a hang.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cpu_kernel_checks.h"
#include "dist/file_store.h"
#include "temp_path.h"

namespace moex::dist {
namespace {

// A fresh path per test (the file itself does not exist yet).
std::string fresh_path(const char* name) {
  return testing::fresh_temp_path(std::string("moex_store_") + name);
}

std::vector<unsigned char> pattern(size_t n) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<unsigned char>(i * 37 + 11);
  return v;
}

TEST(FileStore, ValueRoundTripsAndAWriteReplacesTheOldOne) {
  const std::string path = fresh_path("roundtrip");
  const std::vector<unsigned char> first = pattern(128);
  file_store_write(path, first.data(), first.size(), "the value");
  std::vector<unsigned char> got(128);
  file_store_read(path, got.data(), got.size(), 0.0, "the value");
  EXPECT_EQ(got, first);

  std::vector<unsigned char> second = first;
  second[5] ^= 0xff;
  file_store_write(path, second.data(), second.size(), "the value");
  file_store_read(path, got.data(), got.size(), 0.0, "the value");
  EXPECT_EQ(got, second);
  // No temporary file is left beside it.
  std::ifstream tmp(path + ".tmp." + std::to_string(::getpid()));
  EXPECT_FALSE(tmp.good());
  std::remove(path.c_str());
}

TEST(FileStore, ReaderWaitsForALateWriter) {
  const std::string path = fresh_path("late");
  const std::vector<unsigned char> value = pattern(64);
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    file_store_write(path, value.data(), value.size(), "the value");
  });
  std::vector<unsigned char> got(64);
  file_store_read(path, got.data(), got.size(), 30.0, "the value");
  writer.join();
  EXPECT_EQ(got, value);
  std::remove(path.c_str());
}

TEST(FileStore, MissingFileTimesOutNamingTheFile) {
  const std::string path = fresh_path("missing");
  std::vector<unsigned char> got(16);
  const auto start = std::chrono::steady_clock::now();
  testing::expect_error_naming(
      [&] { file_store_read(path, got.data(), got.size(), 0.3, "the NCCL unique id"); },
      {path, "the NCCL unique id", "0.3 s"});
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(waited, 0.3);
  EXPECT_LT(waited, 5.0);  // bounded: the timeout, not a hang
}

TEST(FileStore, GarbledFileIsAnErrorAtOnce) {
  const std::string path = fresh_path("garbled");
  std::vector<unsigned char> got(16);
  {
    std::ofstream out(path);
    out << "not an id at all, just some text";
  }
  const auto start = std::chrono::steady_clock::now();
  testing::expect_error_naming([&] { file_store_read(path, got.data(), got.size(), 30.0, "x"); },
                               {path, "not a moex store file"});
  // A file that is there is judged at once: no waiting for the 30 s timeout.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
  { std::ofstream out(path); }  // empty
  testing::expect_error_naming([&] { file_store_read(path, got.data(), got.size(), 1.0, "x"); },
                               {path, "not a moex store file"});
  std::remove(path.c_str());
}

TEST(FileStore, WrongSizeAndDamagedBytesAreErrors) {
  const std::string path = fresh_path("damaged");
  const std::vector<unsigned char> value = pattern(32);
  file_store_write(path, value.data(), value.size(), "the value");
  std::vector<unsigned char> got(16);
  testing::expect_error_naming(
      [&] { file_store_read(path, got.data(), got.size(), 1.0, "the value"); },
      {path, "holds 32 bytes", "16 bytes"});

  // Flip one payload byte: the checksum catches it.
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  bytes[16 + 3] ^= 0x01;  // header: 8 bytes of magic, 8 of length
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
  }
  got.resize(32);
  testing::expect_error_naming(
      [&] { file_store_read(path, got.data(), got.size(), 1.0, "the value"); }, {path, "checksum"});

  // Cut short: the length no longer matches the file.
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes.substr(0, 30);
  }
  testing::expect_error_naming(
      [&] { file_store_read(path, got.data(), got.size(), 1.0, "the value"); }, {path});
  std::remove(path.c_str());
}

TEST(FileStore, UnwritableDirectoryIsAnErrorNamingThePath) {
  const std::string path = "/nonexistent_moex_dir/id";
  const unsigned char byte = 1;
  testing::expect_error_naming([&] { file_store_write(path, &byte, 1, "the NCCL unique id"); },
                               {"/nonexistent_moex_dir/id", "the NCCL unique id"});
}

}  // namespace
}  // namespace moex::dist
