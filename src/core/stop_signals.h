// SIGINT (Ctrl-C) and SIGTERM (what mpirun passes its ranks, and what schedulers send before
// preempting a job) handled by a command for as long as it runs, then handed back however it ends
// (an exception included).
#pragma once

#include <csignal>

namespace moex {

class StopSignalHandlers {
 public:
  explicit StopSignalHandlers(void (*handler)(int))
      : sigint_(std::signal(SIGINT, handler)), sigterm_(std::signal(SIGTERM, handler)) {}
  ~StopSignalHandlers() {
    std::signal(SIGINT, sigint_);
    std::signal(SIGTERM, sigterm_);
  }
  StopSignalHandlers(const StopSignalHandlers&) = delete;
  StopSignalHandlers& operator=(const StopSignalHandlers&) = delete;

 private:
  void (*sigint_)(int);
  void (*sigterm_)(int);
};

}  // namespace moex
