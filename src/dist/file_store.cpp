#include "dist/file_store.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>
#include <vector>

#include "core/error.h"

namespace moex::dist {
namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'X', 'S', 'T', 'O', '1'};
constexpr size_t kHeader = sizeof(kMagic) + sizeof(uint64_t);

// FNV-1a: catches a file that was cut short or overwritten by something else.
uint64_t checksum(const unsigned char* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

}  // namespace

void file_store_write(const std::string& path, const void* data, size_t n, const char* what) {
  std::vector<unsigned char> bytes(kHeader + n + sizeof(uint64_t));
  const uint64_t length = n, sum = checksum(static_cast<const unsigned char*>(data), n);
  std::memcpy(bytes.data(), kMagic, sizeof(kMagic));
  std::memcpy(bytes.data() + sizeof(kMagic), &length, sizeof(length));
  if (n > 0) std::memcpy(bytes.data() + kHeader, data, n);
  std::memcpy(bytes.data() + kHeader + n, &sum, sizeof(sum));

  // The temporary name is unique per process, so two writers never share a half-written file.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOEX_CHECK(out, "cannot write ", what, " to ", tmp, ": ", std::strerror(errno));
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    out.close();
    MOEX_CHECK(out, "cannot write ", what, " to ", tmp, ": ", std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    MOEX_THROW("cannot publish ", what, " at ", path, ": ", std::strerror(err));
  }
}

void file_store_read(const std::string& path, void* data, size_t n, double timeout_s,
                     const char* what) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  auto pause = std::chrono::milliseconds(5);
  std::ifstream in;
  for (;;) {
    in.open(path, std::ios::binary);
    if (in) break;
    MOEX_CHECK(
        Clock::now() < deadline, "waited ", timeout_s, " s for ", what, " in ", path,
        ", which its writer (rank 0) has not created: is rank 0 running, with the same file?");
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(100));
  }
  const std::vector<unsigned char> bytes{std::istreambuf_iterator<char>(in),
                                         std::istreambuf_iterator<char>()};
  uint64_t length = 0, sum = 0;
  if (bytes.size() >= kHeader) std::memcpy(&length, bytes.data() + sizeof(kMagic), sizeof(length));
  MOEX_CHECK(bytes.size() >= kHeader && std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0,
             path, " is not a moex store file (expected ", what, ")");
  MOEX_CHECK(length == n && bytes.size() == kHeader + n + sizeof(sum), path, " holds ", length,
             " bytes in ", bytes.size(), " bytes of file, not ", what, " (", n, " bytes)");
  std::memcpy(&sum, bytes.data() + kHeader + n, sizeof(sum));
  MOEX_CHECK(sum == checksum(bytes.data() + kHeader, n), path,
             ": checksum mismatch, the file holding ", what, " is damaged");
  if (n > 0) std::memcpy(data, bytes.data() + kHeader, n);
}

}  // namespace moex::dist
