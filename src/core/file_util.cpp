#include "core/file_util.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace moex {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOEX_CHECK(in.good(), path, ": cannot open file");
  std::ostringstream text;
  text << in.rdbuf();
  MOEX_CHECK(!in.bad(), path, ": read error");
  return text.str();
}

}  // namespace moex
