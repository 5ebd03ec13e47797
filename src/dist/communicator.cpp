#include "dist/communicator.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

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

#ifdef MOEX_WITH_MPI
struct Communicator::Handle {
  MPI_Comm comm = MPI_COMM_NULL;
};
#else
struct Communicator::Handle {};
#endif

namespace {

// Ranks launched by Open MPI's or MPICH's mpirun carry their world size in the environment.
int launched_world_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* v = std::getenv(var)) return std::max(1, std::atoi(v));
  }
  return 1;
}

// MPI counts are ints: a collective of more than message_limit() elements a rank goes in pieces.
int64_t g_message_limit = int64_t{1} << 30;
// Pieces that need a staging buffer (all_gather, reduce_scatter_sum, all_to_all) stage at most
// this many elements over all ranks at once.
[[maybe_unused]] constexpr int64_t kStagingElements = int64_t{1} << 26;

[[maybe_unused]] int mpi_count(int64_t n, const char* op) {
  MOEX_CHECK(n >= 0 && n <= INT_MAX, "Communicator::", op, ": ", n,
             " elements do not fit an MPI count");
  return static_cast<int>(n);
}

// Elements a rank moves per piece of a staged collective over `ranks` ranks.
[[maybe_unused]] int64_t staged_piece(int ranks) {
  return std::max<int64_t>(1, std::min(g_message_limit, kStagingElements / ranks));
}

#ifdef MOEX_WITH_MPI
template <typename T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}
template <>
MPI_Datatype mpi_type<int64_t>() {
  return MPI_INT64_T;
}
template <>
MPI_Datatype mpi_type<uint8_t>() {
  return MPI_BYTE;
}
#endif

template <typename T>
void copy_elems(const T* src, T* dst, int64_t n) {
  if (src != dst && n > 0) std::memmove(dst, src, static_cast<size_t>(n) * sizeof(T));
}

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
  // Serialized: one thread at a time, not always the main one (the server's engine thread runs
  // the tensor-parallel serving steps; docs/parallelism.md).
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided));
  serialized_ = provided >= MPI_THREAD_SERIALIZED;
  owns_world_ = true;
  abort_job_on_terminate();  // an uncaught error on one rank must not leave the others waiting
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  if (size_ > 1) handle_ = std::make_unique<Handle>(Handle{MPI_COMM_WORLD});
#endif
}

bool Communicator::calls_from_any_thread() {
  return serialized_;
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

bool Communicator::in_mpi_job() {
#ifdef MOEX_WITH_MPI
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
#else
  return false;
#endif
}

Communicator::~Communicator() {
#ifdef MOEX_WITH_MPI
  if (owns_world_) {
    MPI_Finalize();
  } else if (handle_ && in_mpi_job()) {
    MPI_Comm_free(&handle_->comm);
  }
#endif
}

std::unique_ptr<Communicator> Communicator::split(int color, int key) const {
  std::unique_ptr<Communicator> out(new Communicator());
  if (!handle_) return out;  // a group of one splits into itself
#ifdef MOEX_WITH_MPI
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split(handle_->comm, color, key, &comm));
  MPI_CHECK(MPI_Comm_rank(comm, &out->rank_));
  MPI_CHECK(MPI_Comm_size(comm, &out->size_));
  if (out->size_ > 1) {
    out->handle_ = std::make_unique<Handle>(Handle{comm});
  } else {
    MPI_Comm_free(&comm);  // alone in its group: collectives are local copies
  }
#endif
  return out;
}

// ---- collectives: a size-1 group (no handle) copies locally, otherwise one MPI call ----

template <typename T>
void Communicator::all_reduce_sum(T* data, int64_t n) {
  if (!handle_) return;
#ifdef MOEX_WITH_MPI
  for (int64_t start = 0; start < n; start += g_message_limit)
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + start,
                            static_cast<int>(std::min(g_message_limit, n - start)), mpi_type<T>(),
                            MPI_SUM, handle_->comm));
#endif
}

template <typename T>
void Communicator::all_gather(const T* send, T* recv, int64_t n) {
  if (!handle_) return copy_elems(send, recv, n);
#ifdef MOEX_WITH_MPI
  if (n <= g_message_limit) {
    MPI_CHECK(MPI_Allgather(send, static_cast<int>(n), mpi_type<T>(), recv, static_cast<int>(n),
                            mpi_type<T>(), handle_->comm));
    return;
  }
  // Piece [s, s + c) of every rank's block: gathered side by side, then put in place.
  const int64_t piece = staged_piece(size_);
  std::vector<T> staged(static_cast<size_t>(size_ * piece));
  for (int64_t s = 0; s < n; s += piece) {
    const int64_t c = std::min(piece, n - s);
    MPI_CHECK(MPI_Allgather(send + s, static_cast<int>(c), mpi_type<T>(), staged.data(),
                            static_cast<int>(c), mpi_type<T>(), handle_->comm));
    for (int p = 0; p < size_; ++p) copy_elems(staged.data() + p * c, recv + p * n + s, c);
  }
#endif
}

template <typename T>
void Communicator::reduce_scatter_sum(const T* send, T* recv, int64_t n) {
  if (!handle_) return copy_elems(send, recv, n);
#ifdef MOEX_WITH_MPI
  if (n <= g_message_limit) {
    MPI_CHECK(MPI_Reduce_scatter_block(send, recv, static_cast<int>(n), mpi_type<T>(), MPI_SUM,
                                       handle_->comm));
    return;
  }
  // Piece [s, s + c) of every block, packed side by side, reduced and scattered.
  const int64_t piece = staged_piece(size_);
  std::vector<T> staged(static_cast<size_t>(size_ * piece));
  for (int64_t s = 0; s < n; s += piece) {
    const int64_t c = std::min(piece, n - s);
    for (int p = 0; p < size_; ++p) copy_elems(send + p * n + s, staged.data() + p * c, c);
    MPI_CHECK(MPI_Reduce_scatter_block(staged.data(), recv + s, static_cast<int>(c), mpi_type<T>(),
                                       MPI_SUM, handle_->comm));
  }
#endif
}

template <typename T>
void Communicator::broadcast(T* data, int64_t n, int root) {
  MOEX_CHECK(root >= 0 && root < size_, "Communicator::broadcast: root ", root,
             " is not a rank of a group of ", size_);
  if (!handle_) return;
#ifdef MOEX_WITH_MPI
  for (int64_t s = 0; s < n; s += g_message_limit)
    MPI_CHECK(MPI_Bcast(data + s, static_cast<int>(std::min(g_message_limit, n - s)), mpi_type<T>(),
                        root, handle_->comm));
#endif
}

void Communicator::broadcast_yielding(int64_t& value, int root) {
  MOEX_CHECK(root >= 0 && root < size_, "Communicator::broadcast_yielding: root ", root,
             " is not a rank of a group of ", size_);
  if (!handle_) return;
#ifdef MOEX_WITH_MPI
  MPI_Request request;
  MPI_CHECK(MPI_Ibcast(&value, 1, MPI_INT64_T, root, handle_->comm, &request));
  const auto start = std::chrono::steady_clock::now();
  int64_t sleep_us = 0;
  for (int done = 0;;) {
    MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) return;
    if (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(50)) continue;
    sleep_us = std::min<int64_t>(1000, sleep_us + 50);
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
  }
#endif
}

template <typename T>
void Communicator::all_to_all(const T* send, T* recv, int64_t n) {
  if (!handle_) return copy_elems(send, recv, n);
#ifdef MOEX_WITH_MPI
  if (n <= g_message_limit) {
    MPI_CHECK(MPI_Alltoall(send, static_cast<int>(n), mpi_type<T>(), recv, static_cast<int>(n),
                           mpi_type<T>(), handle_->comm));
    return;
  }
  // Piece [s, s + c) of every block: packed, exchanged, unpacked.
  const int64_t piece = staged_piece(size_);
  std::vector<T> out(static_cast<size_t>(size_ * piece)), in(out.size());
  for (int64_t s = 0; s < n; s += piece) {
    const int64_t c = std::min(piece, n - s);
    for (int p = 0; p < size_; ++p) copy_elems(send + p * n + s, out.data() + p * c, c);
    MPI_CHECK(MPI_Alltoall(out.data(), static_cast<int>(c), mpi_type<T>(), in.data(),
                           static_cast<int>(c), mpi_type<T>(), handle_->comm));
    for (int p = 0; p < size_; ++p) copy_elems(in.data() + p * c, recv + p * n + s, c);
  }
#endif
}

template <typename T>
void Communicator::all_to_all_v(const T* send, const int64_t* send_counts, T* recv,
                                const int64_t* recv_counts) {
  if (!handle_) return copy_elems(send, recv, send_counts[0]);
#ifdef MOEX_WITH_MPI
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  int64_t send_at = 0, recv_at = 0;
  for (int p = 0; p < size_; ++p) {
    sc[p] = mpi_count(send_counts[p], "all_to_all_v");
    rc[p] = mpi_count(recv_counts[p], "all_to_all_v");
    sd[p] = mpi_count(send_at, "all_to_all_v");
    rd[p] = mpi_count(recv_at, "all_to_all_v");
    send_at += send_counts[p];
    recv_at += recv_counts[p];
  }
  MPI_CHECK(MPI_Alltoallv(send, sc.data(), sd.data(), mpi_type<T>(), recv, rc.data(), rd.data(),
                          mpi_type<T>(), handle_->comm));
#endif
}

int64_t Communicator::message_limit() {
  return g_message_limit;
}

void Communicator::set_message_limit(int64_t elements) {
  MOEX_CHECK(elements >= 1 && elements <= INT_MAX, "Communicator::set_message_limit: ", elements,
             " is not in [1, 2^31 - 1]");
  g_message_limit = elements;
}

int Communicator::local_rank() const {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    const char* v = std::getenv(name);
    if (v != nullptr && *v != '\0') return std::atoi(v);
  }
  return rank_;
}

int Communicator::all_reduce_max(int value) {
  if (!handle_) return value;
#ifdef MOEX_WITH_MPI
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_MAX, handle_->comm));
#endif
  return value;
}

void Communicator::barrier() {
#ifdef MOEX_WITH_MPI
  if (handle_) MPI_CHECK(MPI_Barrier(handle_->comm));
#endif
}

template void Communicator::all_reduce_sum(float*, int64_t);
template void Communicator::all_reduce_sum(double*, int64_t);
template void Communicator::all_reduce_sum(int64_t*, int64_t);
template void Communicator::all_gather(const float*, float*, int64_t);
template void Communicator::all_gather(const double*, double*, int64_t);
template void Communicator::all_gather(const int64_t*, int64_t*, int64_t);
template void Communicator::all_gather(const uint8_t*, uint8_t*, int64_t);
template void Communicator::reduce_scatter_sum(const float*, float*, int64_t);
template void Communicator::reduce_scatter_sum(const double*, double*, int64_t);
template void Communicator::broadcast(float*, int64_t, int);
template void Communicator::broadcast(double*, int64_t, int);
template void Communicator::broadcast(int64_t*, int64_t, int);
template void Communicator::all_to_all(const float*, float*, int64_t);
template void Communicator::all_to_all(const double*, double*, int64_t);
template void Communicator::all_to_all(const int64_t*, int64_t*, int64_t);
template void Communicator::all_to_all_v(const float*, const int64_t*, float*, const int64_t*);
template void Communicator::all_to_all_v(const double*, const int64_t*, double*, const int64_t*);
template void Communicator::all_to_all_v(const uint8_t*, const int64_t*, uint8_t*, const int64_t*);

}  // namespace moex::dist
