// moex::Error and the check macros. The library throws; only tools/ turns errors into exit codes.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moex {

// what() is "file.cpp:line: message (failed: expr)" for developers; message() is the message
// alone, which is what a user of the command-line tool sees.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what), message_(what) {}
  Error(const std::string& what, std::string message)
      : std::runtime_error(what), message_(std::move(message)) {}
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

namespace detail {

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

// Builds "file:line: message (failed: expr)" and throws moex::Error.
[[noreturn]] void throw_error(const char* file, int line, const char* expr, const std::string& msg);

}  // namespace detail
}  // namespace moex

// MOEX_CHECK(cond, message parts...): the message names the argument that is wrong.
#define MOEX_CHECK(cond, ...)                                                                   \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      ::moex::detail::throw_error(__FILE__, __LINE__, #cond, ::moex::detail::cat(__VA_ARGS__)); \
    }                                                                                           \
  } while (0)

// MOEX_THROW(message parts...): unconditional error.
#define MOEX_THROW(...) \
  ::moex::detail::throw_error(__FILE__, __LINE__, nullptr, ::moex::detail::cat(__VA_ARGS__))
