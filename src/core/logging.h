// Levelled logging to stderr. The level comes from MOEX_LOG_LEVEL (debug|info|warn|error), default info.
#pragma once

#include "core/error.h"

namespace moex {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

LogLevel log_level();
void set_log_level(LogLevel level);
void log_message(LogLevel level, const std::string& msg);

}  // namespace moex

#define MOEX_LOG(level, ...)                                                          \
  do {                                                                                \
    if (::moex::LogLevel::level >= ::moex::log_level())                              \
      ::moex::log_message(::moex::LogLevel::level, ::moex::detail::cat(__VA_ARGS__)); \
  } while (0)
#define MOEX_DEBUG(...) MOEX_LOG(kDebug, __VA_ARGS__)
#define MOEX_INFO(...) MOEX_LOG(kInfo, __VA_ARGS__)
#define MOEX_WARN(...) MOEX_LOG(kWarn, __VA_ARGS__)
