#include "core/stop_signals.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <thread>

namespace moex {

namespace {

std::atomic<bool> g_thread_started{false};
std::atomic<void (*)(int)> g_handler{nullptr};
int g_pipe[2] = {-1, -1};  // the forwarder writes each signal's number, the thread reads it

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// The installed handler: it only passes the number on (async-signal-safe). It runs in the signal
// thread, or in a thread some library started before main() (idle, on its own stack).
void forward(int sig) {
  const int saved = errno;
  const unsigned char number = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t written = ::write(g_pipe[1], &number, 1);
  errno = saved;
}

void dispatch_signals() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);  // this thread takes them
  for (;;) {
    unsigned char number = 0;
    const ssize_t got = ::read(g_pipe[0], &number, 1);
    if (got < 0 && errno == EINTR) continue;
    if (got != 1) return;
    if (void (*handler)(int) = g_handler.load()) handler(number);
  }
}

}  // namespace

void start_signal_thread() {
  if (g_thread_started.exchange(true)) return;
  if (::pipe2(g_pipe, O_CLOEXEC) != 0) {
    g_thread_started = false;  // StopSignalHandlers falls back to plain handlers
    return;
  }
  // A full pipe drops the number (one already waiting says as much) instead of blocking the
  // forwarder, which may run in the signal thread itself.
  ::fcntl(g_pipe[1], F_SETFL, ::fcntl(g_pipe[1], F_GETFL) | O_NONBLOCK);
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // this thread, and every thread it starts
  std::thread(dispatch_signals).detach();
}

StopSignalHandlers::StopSignalHandlers(void (*handler)(int)) : threaded_(g_thread_started) {
  if (!threaded_) {
    sigint_ = std::signal(SIGINT, handler);
    sigterm_ = std::signal(SIGTERM, handler);
    return;
  }
  previous_ = g_handler.exchange(handler);
  sigint_ = std::signal(SIGINT, forward);
  sigterm_ = std::signal(SIGTERM, forward);
}

StopSignalHandlers::~StopSignalHandlers() {
  std::signal(SIGINT, sigint_);
  std::signal(SIGTERM, sigterm_);
  if (threaded_) g_handler.store(previous_);
}

StopSignalsUnblocked::StopSignalsUnblocked() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_UNBLOCK, &set, &saved_);
}

StopSignalsUnblocked::~StopSignalsUnblocked() {
  pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
}

}  // namespace moex
