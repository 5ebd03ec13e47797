#include "core/error.h"

#include <execinfo.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace moex::detail {

[[noreturn]] void throw_error(const char* file, int line, const char* expr,
                              const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  std::ostringstream out;
  out << (base ? base + 1 : file) << ":" << line << ": " << msg;
  if (expr != nullptr) out << " (failed: " << expr << ")";
  // MOEX_BACKTRACE=1: the raising call stack on stderr, for a developer chasing an error far from
  // its cause (addresses as "binary(+offset)": addr2line -e <unstripped binary> <offset>).
  static const bool backtrace_wanted = [] {
    const char* v = std::getenv("MOEX_BACKTRACE");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  if (backtrace_wanted) {
    void* frames[48];
    const int n = backtrace(frames, 48);
    const std::string head = "moex error: " + out.str() + "\n";
    if (write(STDERR_FILENO, head.data(), head.size()) < 0) {
      // stderr is gone: nothing to report to
    }
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
  }
  throw Error(out.str(), msg);
}

}  // namespace moex::detail
