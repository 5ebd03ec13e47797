#include "core/error.h"

#include <cstring>

namespace moex::detail {

[[noreturn]] void throw_error(const char* file, int line, const char* expr,
                              const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  std::ostringstream out;
  out << (base ? base + 1 : file) << ":" << line << ": " << msg;
  if (expr != nullptr) out << " (failed: " << expr << ")";
  throw Error(out.str(), msg);
}

}  // namespace moex::detail
