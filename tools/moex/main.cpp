// moex: one binary, one subcommand per file. Errors become one clear message and exit code 1.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "command.h"
#include "core/error.h"
#include "core/logging.h"
#include "core/stop_signals.h"
#include "dist/communicator.h"

namespace moex::cli {

std::vector<CommandEntry>& commands() {
  static std::vector<CommandEntry> registry;
  return registry;
}

Command::Command(const char* name, const char* summary, CommandFn run) {
  commands().push_back({name, summary, std::move(run)});
}

}  // namespace moex::cli

namespace {

void print_usage() {
  auto entries = moex::cli::commands();
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  std::printf(
      "usage: moex <command> [options]   (moex <command> --help for its options; moex "
      "--version)\n\ncommands:\n");
  for (const auto& e : entries) std::printf("  %-12s %s\n", e.name.c_str(), e.summary.c_str());
}

// " (rank r of n)" in an MPI job of several processes, where each rank prints its own error.
std::string failing_rank() {
  if (!moex::dist::Communicator::in_mpi_job()) return "";
  const moex::dist::Communicator& world = moex::dist::Communicator::world();
  if (world.size() < 2) return "";
  return " (rank " + std::to_string(world.rank()) + " of " + std::to_string(world.size()) + ")";
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists: SIGINT and SIGTERM go to a thread of their own, never into compute
  // code (core/stop_signals.h).
  moex::start_signal_thread();
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  if (name == "--version" || name == "version") {
    // The version of the project and the commit it was configured from (CMakeLists.txt).
    std::printf("moex %s (%s)\n", MOEX_VERSION, MOEX_GIT_COMMIT);
    return 0;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const auto& e : moex::cli::commands()) {
    if (e.name != name) continue;
    try {
      return e.run(args);
    } catch (const moex::Error& err) {
      // The source location helps developers only: shown with MOEX_LOG_LEVEL=debug.
      const bool debug = moex::log_level() == moex::LogLevel::kDebug;
      std::fprintf(stderr, "moex %s: error%s: %s\n", name.c_str(), failing_rank().c_str(),
                   debug ? err.what() : err.message().c_str());
    } catch (const std::bad_alloc&) {
      // An allocation no check sized up front: say what it means rather than "std::bad_alloc".
      std::fprintf(stderr,
                   "moex %s: error%s: out of host memory: a size in the flags or the model's "
                   "config.json (a context, block count, batch or max_seq_len) asks for more "
                   "memory than this machine has\n",
                   name.c_str(), failing_rank().c_str());
    } catch (const std::exception& err) {
      std::fprintf(stderr, "moex %s: error%s: %s\n", name.c_str(), failing_rank().c_str(),
                   err.what());
    }
    // Under mpirun the other ranks may be waiting in a collective for this one: end them all.
    if (moex::dist::Communicator::in_mpi_job()) moex::dist::Communicator::abort_job(1);
    return 1;
  }
  std::fprintf(stderr, "moex: unknown command '%s'\n", name.c_str());
  print_usage();
  return 2;
}
