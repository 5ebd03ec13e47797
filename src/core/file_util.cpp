#include "core/file_util.h"

#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace moex {

std::string read_file(const std::string& path, int64_t max_bytes) {
  std::error_code ec;
  MOEX_CHECK(!std::filesystem::is_directory(path, ec), path, ": is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  MOEX_CHECK(in.good(), path, ": cannot open file");
  // Chunked, never trusting a size the file reports: a device or a pipe reports none.
  std::string text;
  char chunk[1 << 16];
  while (in) {
    in.read(chunk, sizeof(chunk));
    text.append(chunk, static_cast<size_t>(in.gcount()));
    MOEX_CHECK(static_cast<int64_t>(text.size()) <= max_bytes, path, ": larger than ",
               max_bytes >= (1 << 20) ? std::to_string(max_bytes >> 20) + " MiB"
                                      : std::to_string(max_bytes) + " bytes",
               ", the most moex reads as one file of this kind");
  }
  MOEX_CHECK(!in.bad(), path, ": read error");
  return text;
}

}  // namespace moex
