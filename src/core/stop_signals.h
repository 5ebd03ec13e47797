// SIGINT (Ctrl-C) and SIGTERM (what mpirun passes its ranks, and what schedulers send before
// preempting a job), handled in a thread of their own.
//
// Why a thread: a signal handler runs on the stack of whichever thread the signal lands in, and
// oneDNN's JIT GEMM kernels run with the stack pointer in heap memory, so a handler's frame
// pushed there overwrites the heap (an abort in free() a moment later, no checkpoint written).
// start_signal_thread(), called first thing in main(), blocks both signals in the calling thread
// (every thread started later inherits that) and starts a thread that takes them. While a command
// holds StopSignalHandlers, the installed handler only writes the signal's number to a pipe, and
// that thread calls the command's handler with it (an ordinary thread: no async-signal limits).
// Without a holder the signals keep their disposition (by default they end the process). Threads
// that libraries start before main() (OpenBLAS's) may take a signal too; they only run the
// forwarder on their own stacks. A child process started while StopSignalsUnblocked is held
// gets the signals unblocked (a child inherits its parent thread's mask, through exec too).
//
// Without start_signal_thread (test binaries) StopSignalHandlers installs the command's handler
// itself, as std::signal.
#pragma once

#include <csignal>

namespace moex {

// Idempotent; the first call must come before the process starts other threads.
void start_signal_thread();

// The command's handler for SIGINT and SIGTERM for as long as it lives, handed back however the
// command ends (an exception included). Holders nest: the innermost handler gets the signals.
class StopSignalHandlers {
 public:
  explicit StopSignalHandlers(void (*handler)(int));
  ~StopSignalHandlers();
  StopSignalHandlers(const StopSignalHandlers&) = delete;
  StopSignalHandlers& operator=(const StopSignalHandlers&) = delete;

 private:
  void (*previous_)(int) = nullptr;  // the command handler before this one (threaded)
  void (*sigint_)(int) = nullptr;    // the dispositions before this one
  void (*sigterm_)(int) = nullptr;
  bool threaded_ = false;
};

// SIGINT and SIGTERM unblocked in this thread for as long as it lives: hold it around starting a
// child process (popen), which inherits the mask, so that Ctrl-C and SIGTERM reach the child.
// Only where no JIT GEMM runs on this thread in the meantime.
class StopSignalsUnblocked {
 public:
  StopSignalsUnblocked();
  ~StopSignalsUnblocked();
  StopSignalsUnblocked(const StopSignalsUnblocked&) = delete;
  StopSignalsUnblocked& operator=(const StopSignalsUnblocked&) = delete;

 private:
  sigset_t saved_;
};

}  // namespace moex
