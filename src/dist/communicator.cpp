#include "dist/communicator.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "core/error.h"

#ifdef MOEX_WITH_MPI
#include <mpi.h>

#define MPI_CHECK(call)                                                              \
  do {                                                                               \
    const int mpi_status = (call);                                                   \
    MOEX_CHECK(mpi_status == MPI_SUCCESS, "MPI call failed with code ", mpi_status); \
  } while (0)
#endif

namespace moex::dist {
namespace {

// Ranks launched by Open MPI's or MPICH's mpirun carry their world size in the environment.
int launched_world_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* v = std::getenv(var)) return std::max(1, std::atoi(v));
  }
  return 1;
}

// MPI counts are ints: send large buffers in chunks.
[[maybe_unused]] constexpr int64_t kChunk = int64_t{1} << 30;

}  // namespace

Communicator& Communicator::world() {
  static Communicator instance(true);
  return instance;
}

Communicator& Communicator::local() {
  static Communicator instance(false);
  return instance;
}

Communicator::Communicator(bool join_world) {
  if (!join_world || launched_world_size() <= 1) return;
#ifndef MOEX_WITH_MPI
  MOEX_THROW("launched with ", launched_world_size(),
             " ranks, but this moex was built without MPI");
#else
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
  uses_mpi_ = true;
  abort_job_on_terminate();  // an uncaught error on one rank must not leave the others waiting
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
#endif
}

void Communicator::abort_job_on_terminate() {
  std::set_terminate([] {
    if (const std::exception_ptr error = std::current_exception()) {
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "moex: uncaught exception: %s\n", e.what());
      } catch (...) {
        std::fprintf(stderr, "moex: uncaught exception of unknown type\n");
      }
    }
    abort_job(1);
  });
}

void Communicator::abort_job(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
#ifdef MOEX_WITH_MPI
  if (in_mpi_job()) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::_Exit(code);
}

#ifdef MOEX_WITH_MPI
bool Communicator::in_mpi_job() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

Communicator::~Communicator() {
  if (uses_mpi_) MPI_Finalize();
}

void Communicator::all_reduce_sum(float* data, int64_t n) {
  if (!uses_mpi_) return;
  for (int64_t start = 0; start < n; start += kChunk)
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + start,
                            static_cast<int>(std::min(kChunk, n - start)), MPI_FLOAT, MPI_SUM,
                            MPI_COMM_WORLD));
}

void Communicator::all_reduce_sum(double* data, int64_t n) {
  if (!uses_mpi_) return;
  for (int64_t start = 0; start < n; start += kChunk)
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + start,
                            static_cast<int>(std::min(kChunk, n - start)), MPI_DOUBLE, MPI_SUM,
                            MPI_COMM_WORLD));
}

int Communicator::all_reduce_max(int value) {
  if (!uses_mpi_) return value;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  return value;
}

void Communicator::barrier() {
  if (uses_mpi_) MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
}
#else
bool Communicator::in_mpi_job() {
  return false;
}
Communicator::~Communicator() = default;
void Communicator::all_reduce_sum(float*, int64_t) {}
void Communicator::all_reduce_sum(double*, int64_t) {}
int Communicator::all_reduce_max(int value) {
  return value;
}
void Communicator::barrier() {}
#endif

}  // namespace moex::dist
