// NCCL backend of the GPU communicator (dist/nccl_communicator.h). Compiled only in a CUDA build
// that found NCCL (CMakeLists.txt); nccl_communicator_stub.cpp stands in otherwise.
#include "dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/env.h"
#include "core/error.h"
#include "cuda/cuda_check.h"
#include "dist/communicator.h"
#include "dist/file_store.h"

// Like CUDA_CHECK: one error naming the collective, the NCCL call and NCCL's own explanation.
// ncclInProgress is not an error: the communicator is nonblocking and the caller polls.
#define NCCL_CHECK(op, expr)                                                                     \
  do {                                                                                           \
    const ncclResult_t moex_nccl_r_ = (expr);                                                    \
    if (moex_nccl_r_ != ncclSuccess && moex_nccl_r_ != ncclInProgress) {                         \
      ::moex::detail::throw_error(__FILE__, __LINE__, #expr,                                     \
                                  ::moex::detail::cat("NcclCommunicator::", op, ": NCCL error ", \
                                                      ncclGetErrorString(moex_nccl_r_), " (",    \
                                                      ncclGetLastError(nullptr), ")"));          \
    }                                                                                            \
  } while (0)

namespace moex::dist {
namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

constexpr char kIdWhat[] = "the NCCL unique id";

ncclDataType_t nccl_type(DType dtype, const char* op) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF64:
      return ncclFloat64;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    default:
      break;
  }
  MOEX_THROW("NcclCommunicator::", op, ": dtype ", dtype_name(dtype),
             " is not supported (F32, BF16, F64, I32 or I64)");
}

double op_timeout_from(double option) {
  if (option >= 0) return option;
  return env_positive("MOEX_NCCL_TIMEOUT_S", 600);  // seconds
}

std::string id_file_from(const std::string& option) {
  if (!option.empty()) return option;
  const char* env = std::getenv("MOEX_NCCL_ID_FILE");
  return env ? env : "";
}

}  // namespace

struct NcclCommunicator::Impl {
  // `started` is recorded on the caller's stream: our stream waits for it, and the timeout counts
  // from when it has passed and the collective is the oldest unfinished one, so the caller's own
  // work queued ahead of a collective is not mistaken for a hang.
  struct Pending {
    cudaEvent_t started, done;
    const char* op;
    bool running = false;
    Clock::time_point since;  // when first seen oldest with `started` passed
  };

  int rank = 0, size = 1, device = 0;
  double op_timeout_s = 600;
  ncclComm_t comm = nullptr;
  bool up = false;  // init finished: tear down with finalize + destroy rather than abort
  cudaStream_t stream = nullptr;

  // Shared with the watchdog thread.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Pending> pending;           // queued collectives, oldest first
  std::vector<cudaEvent_t> free_events;  // finished, ready to be recorded again
  std::vector<cudaEvent_t> all_events;   // every event made, destroyed at the end
  bool stop = false;
  std::thread watchdog;

  ~Impl();

  // The collectives with a detached form (DeviceGroup): the public members call these.
  cudaEvent_t all_reduce_sum(void* data, int64_t n, DType dtype, cudaStream_t caller,
                             bool detached);
  cudaEvent_t reduce_scatter_sum(const void* send, void* recv, int64_t n, DType dtype,
                                 cudaStream_t caller, bool detached);

  [[noreturn]] void fail(const std::string& why) {
    std::fprintf(stderr, "moex: NCCL rank %d of %d: %s; ending the job\n", rank, size, why.c_str());
    if (comm) ncclCommAbort(comm);  // releases kernels stuck waiting for a peer
    Communicator::abort_job(1);
  }

  // Polls the nonblocking communicator until the last call has been taken in. An NCCL error or
  // the timeout ends the job: a collective half-issued on some ranks cannot be undone.
  void wait_issued(const char* op) {
    const auto start = Clock::now();
    for (;;) {
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm, &state);
      if (state == ncclSuccess) return;
      if (state != ncclInProgress)
        fail(detail::cat(op, ": NCCL error ", ncclGetErrorString(state), " (",
                         ncclGetLastError(comm), ")"));
      if (Seconds(Clock::now() - start).count() > op_timeout_s)
        fail(detail::cat(op, ": NCCL did not take the call within ", op_timeout_s, " s"));
      std::this_thread::yield();
    }
  }

  cudaEvent_t take_event() {
    std::lock_guard<std::mutex> lock(mu);
    if (!free_events.empty()) {
      cudaEvent_t e = free_events.back();
      free_events.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    all_events.push_back(e);
    return e;
  }

  // Orders one collective between the caller's stream and ours (docs/parallelism.md): after the
  // caller's queued work, and (unless detached) before the caller's later work.
  template <typename Issue>
  cudaEvent_t run(const char* op, cudaStream_t caller, Issue&& issue, bool detached = false) {
    cudaEvent_t started = take_event(), done = take_event();
    CUDA_CHECK(cudaEventRecord(started, caller));
    CUDA_CHECK(cudaStreamWaitEvent(stream, started, 0));
    issue();
    wait_issued(op);
    CUDA_CHECK(cudaEventRecord(done, stream));
    if (!detached) CUDA_CHECK(cudaStreamWaitEvent(caller, done, 0));
    {
      std::lock_guard<std::mutex> lock(mu);
      pending.push_back({started, done, op, false, Clock::now()});
    }
    cv.notify_one();
    return done;
  }

  // Retires finished collectives; ends the job on an NCCL or CUDA error, or when the oldest
  // unfinished one has been able to run for longer than the timeout.
  void watch() {
    cudaSetDevice(device);
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      if (pending.empty()) cv.wait(lock, [&] { return stop || !pending.empty(); });
      if (stop) return;
      while (!pending.empty()) {
        const cudaError_t e = cudaEventQuery(pending.front().done);
        if (e == cudaErrorNotReady) break;
        if (e != cudaSuccess)
          fail(detail::cat(pending.front().op, ": CUDA error ", cudaGetErrorName(e), ": ",
                           cudaGetErrorString(e)));
        free_events.push_back(pending.front().started);
        free_events.push_back(pending.front().done);
        pending.pop_front();
      }
      if (pending.empty()) continue;
      Pending& oldest = pending.front();
      if (!oldest.running && cudaEventQuery(oldest.started) == cudaSuccess) {
        oldest.running = true;
        oldest.since = Clock::now();
      }
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm, &state);
      if (state != ncclSuccess && state != ncclInProgress)
        fail(detail::cat(pending.front().op, ": NCCL error ", ncclGetErrorString(state), " (",
                         ncclGetLastError(comm), ")"));
      if (oldest.running && Seconds(Clock::now() - oldest.since).count() > op_timeout_s)
        fail(detail::cat(pending.front().op, " has not finished after ", op_timeout_s,
                         " s (MOEX_NCCL_TIMEOUT_S): a peer rank is gone or stuck"));
      cv.wait_for(lock, std::chrono::milliseconds(10));
    }
  }
};

NcclCommunicator::Impl::~Impl() {
  if (watchdog.joinable()) {
    if (stream) cudaStreamSynchronize(stream);  // the watchdog still guards this wait
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv.notify_all();
    watchdog.join();
  }
  if (comm) {
    // A communicator that came up is finalized (flushes NCCL's own work) and destroyed; one that
    // failed or did not finish in time is aborted.
    ncclResult_t state = up ? ncclCommFinalize(comm) : ncclInternalError;
    const auto start = Clock::now();
    while (state == ncclInProgress && Seconds(Clock::now() - start).count() < 60) {
      std::this_thread::yield();
      ncclCommGetAsyncError(comm, &state);
    }
    if (state == ncclSuccess) {
      ncclCommDestroy(comm);
    } else {
      ncclCommAbort(comm);
    }
  }
  for (cudaEvent_t e : all_events) cudaEventDestroy(e);
  if (stream) cudaStreamDestroy(stream);
}

namespace {

// The unique id on every rank: broadcast over an MPI group, else through the id file. A rank that
// reads the file does so before touching the GPU, so a missing file is a clear error anywhere.
ncclUniqueId share_id(int rank, int size, const NcclOptions& options, Communicator* mpi_group) {
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (mpi_group != nullptr) {
    // The id travels as int64 words, plus one saying whether rank 0 made it: a rank 0 that fails
    // still broadcasts, so the others report it instead of waiting for it.
    static_assert(sizeof(ncclUniqueId) % sizeof(int64_t) == 0, "the id travels as int64 words");
    constexpr size_t kWords = sizeof(ncclUniqueId) / sizeof(int64_t);
    int64_t words[kWords + 1] = {};
    std::exception_ptr root_error;
    if (rank == 0) {
      try {
        NCCL_CHECK("bootstrap", ncclGetUniqueId(&id));
        std::memcpy(words, &id, sizeof(id));
        words[kWords] = 1;
      } catch (...) {
        root_error = std::current_exception();
      }
    }
    mpi_group->broadcast(words, static_cast<int64_t>(kWords + 1), 0);
    if (root_error) std::rethrow_exception(root_error);
    MOEX_CHECK(words[kWords] == 1, "NcclCommunicator: rank 0 of the group could not make the NCCL ",
               "unique id (its error says why)");
    std::memcpy(&id, words, sizeof(id));
    return id;
  }
  const std::string file = id_file_from(options.id_file);
  if (rank == 0) {
    NCCL_CHECK("bootstrap", ncclGetUniqueId(&id));
    if (!file.empty()) file_store_write(file, &id, sizeof(id), kIdWhat);
    return id;
  }
  MOEX_CHECK(!file.empty(), "NcclCommunicator: rank ", rank, " of ", size,
             " without MPI needs the id file rank 0 writes (NcclOptions::id_file or ",
             "MOEX_NCCL_ID_FILE)");
  file_store_read(file, &id, sizeof(id), options.bootstrap_timeout_s, kIdWhat);
  return id;
}

std::unique_ptr<NcclCommunicator::Impl> connect(int rank, int size, const NcclOptions& options,
                                                Communicator* mpi_group) {
  MOEX_CHECK(size >= 1 && rank >= 0 && rank < size, "NcclCommunicator: rank ", rank,
             " is not a rank of a group of ", size);
  auto impl = std::make_unique<NcclCommunicator::Impl>();
  impl->rank = rank;
  impl->size = size;
  impl->op_timeout_s = op_timeout_from(options.op_timeout_s);
  const ncclUniqueId id = share_id(rank, size, options, mpi_group);
  // Rank 0 removes the id file when init ends, joined or failed: once every rank has joined all
  // have read it, and a stale id must never reach the ranks of a later job.
  struct RemoveIdFile {
    std::string path;
    ~RemoveIdFile() {
      if (!path.empty()) std::remove(path.c_str());
    }
  } remove_id_file{mpi_group == nullptr && rank == 0 ? id_file_from(options.id_file) : ""};

  if (options.device >= 0) CUDA_CHECK(cudaSetDevice(options.device));
  CUDA_CHECK(cudaGetDevice(&impl->device));
  CUDA_CHECK(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));

  // Nonblocking: init and every later call return at once, so a missing peer shows up as a
  // timeout here and not as a process stuck inside NCCL.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  NCCL_CHECK("init", ncclCommInitRankConfig(&impl->comm, size, id, rank, &config));
  const auto start = Clock::now();
  for (;;) {
    ncclResult_t state = ncclSuccess;
    NCCL_CHECK("init", ncclCommGetAsyncError(impl->comm, &state));
    if (state == ncclSuccess) break;
    NCCL_CHECK("init", state);
    MOEX_CHECK(Seconds(Clock::now() - start).count() < options.bootstrap_timeout_s,
               "NcclCommunicator: rank ", rank, " of ", size, " on GPU ", impl->device,
               ": the NCCL communicator did not come up within ", options.bootstrap_timeout_s,
               " s; are all ", size, " ranks running, each on its own GPU, with the same id?");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  impl->up = true;

  impl->watchdog = std::thread([p = impl.get()] { p->watch(); });
  return impl;
}

int64_t checked_count(int64_t n, const char* op) {
  MOEX_CHECK(n >= 0, "NcclCommunicator::", op, ": negative element count ", n);
  return n;
}

}  // namespace

cudaEvent_t NcclCommunicator::Impl::all_reduce_sum(void* data, int64_t n, DType dtype,
                                                   cudaStream_t caller, bool detached) {
  const ncclDataType_t type = nccl_type(dtype, "all_reduce_sum");
  const size_t count = static_cast<size_t>(checked_count(n, "all_reduce_sum"));
  return run(
      "all_reduce_sum", caller,
      [&] {
        if (count > 0)
          NCCL_CHECK("all_reduce_sum",
                     ncclAllReduce(data, data, count, type, ncclSum, comm, stream));
      },
      detached);
}

cudaEvent_t NcclCommunicator::Impl::reduce_scatter_sum(const void* send, void* recv, int64_t n,
                                                       DType dtype, cudaStream_t caller,
                                                       bool detached) {
  const ncclDataType_t type = nccl_type(dtype, "reduce_scatter_sum");
  const size_t count = static_cast<size_t>(checked_count(n, "reduce_scatter_sum"));
  return run(
      "reduce_scatter_sum", caller,
      [&] {
        if (count > 0)
          NCCL_CHECK("reduce_scatter_sum",
                     ncclReduceScatter(send, recv, count, type, ncclSum, comm, stream));
      },
      detached);
}

bool NcclCommunicator::built() {
  return true;
}

NcclCommunicator::NcclCommunicator(Communicator& group, NcclOptions options)
    : impl_(connect(group.rank(), group.size(), options, group.size() > 1 ? &group : nullptr)) {}

NcclCommunicator::NcclCommunicator(int rank, int size, NcclOptions options)
    : impl_(connect(rank, size, options, nullptr)) {}

NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::rank() const {
  return impl_->rank;
}
int NcclCommunicator::size() const {
  return impl_->size;
}
NcclCommunicator::Stream NcclCommunicator::stream() const {
  return impl_->stream;
}

void NcclCommunicator::synchronize() {
  CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

NcclCommunicator::Event NcclCommunicator::all_reduce_sum(void* data, int64_t n, DType dtype,
                                                         Stream stream) {
  return impl_->all_reduce_sum(data, n, dtype, stream, false);
}

NcclCommunicator::Event NcclCommunicator::all_reduce_sum_detached(void* data, int64_t n,
                                                                  DType dtype, Stream stream) {
  return impl_->all_reduce_sum(data, n, dtype, stream, true);
}

NcclCommunicator::Event NcclCommunicator::all_gather(const void* send, void* recv, int64_t n,
                                                     DType dtype, Stream stream) {
  const ncclDataType_t type = nccl_type(dtype, "all_gather");
  const size_t count = static_cast<size_t>(checked_count(n, "all_gather"));
  return impl_->run("all_gather", stream, [&] {
    if (count > 0)
      NCCL_CHECK("all_gather", ncclAllGather(send, recv, count, type, impl_->comm, impl_->stream));
  });
}

NcclCommunicator::Event NcclCommunicator::reduce_scatter_sum(const void* send, void* recv,
                                                             int64_t n, DType dtype,
                                                             Stream stream) {
  return impl_->reduce_scatter_sum(send, recv, n, dtype, stream, false);
}

NcclCommunicator::Event NcclCommunicator::reduce_scatter_sum_detached(const void* send, void* recv,
                                                                      int64_t n, DType dtype,
                                                                      Stream stream) {
  return impl_->reduce_scatter_sum(send, recv, n, dtype, stream, true);
}

NcclCommunicator::Event NcclCommunicator::broadcast(void* data, int64_t n, DType dtype, int root,
                                                    Stream stream) {
  const ncclDataType_t type = nccl_type(dtype, "broadcast");
  const size_t count = static_cast<size_t>(checked_count(n, "broadcast"));
  MOEX_CHECK(root >= 0 && root < impl_->size, "NcclCommunicator::broadcast: root ", root,
             " is not a rank of a group of ", impl_->size);
  return impl_->run("broadcast", stream, [&] {
    if (count > 0)
      NCCL_CHECK("broadcast",
                 ncclBroadcast(data, data, count, type, root, impl_->comm, impl_->stream));
  });
}

namespace {

// All-to-all(-v) as one group of ncclSend/ncclRecv pairs. The group is always closed, even when
// a call in it fails, so the communicator stays usable for the error to be reported.
void send_recv_group(const char* op, const char* send, const int64_t* send_counts, char* recv,
                     const int64_t* recv_counts, int size, size_t elem, ncclDataType_t type,
                     ncclComm_t comm, cudaStream_t stream) {
  ncclResult_t first_error = ncclSuccess;
  const char* failed = nullptr;
  NCCL_CHECK(op, ncclGroupStart());
  size_t send_at = 0, recv_at = 0;
  for (int p = 0; p < size && first_error == ncclSuccess; ++p) {
    const size_t sc = static_cast<size_t>(send_counts[p]), rc = static_cast<size_t>(recv_counts[p]);
    if (sc > 0) {
      const ncclResult_t r = ncclSend(send + send_at * elem, sc, type, p, comm, stream);
      if (r != ncclSuccess && r != ncclInProgress) first_error = r, failed = "ncclSend";
    }
    if (rc > 0 && first_error == ncclSuccess) {
      const ncclResult_t r = ncclRecv(recv + recv_at * elem, rc, type, p, comm, stream);
      if (r != ncclSuccess && r != ncclInProgress) first_error = r, failed = "ncclRecv";
    }
    send_at += sc;
    recv_at += rc;
  }
  const ncclResult_t end = ncclGroupEnd();
  MOEX_CHECK(first_error == ncclSuccess, "NcclCommunicator::", op, ": NCCL error in ", failed, ": ",
             ncclGetErrorString(first_error), " (", ncclGetLastError(comm), ")");
  NCCL_CHECK(op, end);
}

}  // namespace

NcclCommunicator::Event NcclCommunicator::all_to_all(const void* send, void* recv, int64_t n,
                                                     DType dtype, Stream stream) {
  const ncclDataType_t type = nccl_type(dtype, "all_to_all");
  const std::vector<int64_t> counts(impl_->size, checked_count(n, "all_to_all"));
  return impl_->run("all_to_all", stream, [&] {
    send_recv_group("all_to_all", static_cast<const char*>(send), counts.data(),
                    static_cast<char*>(recv), counts.data(), impl_->size, dtype_size(dtype), type,
                    impl_->comm, impl_->stream);
  });
}

NcclCommunicator::Event NcclCommunicator::all_to_all_v(const void* send, const int64_t* send_counts,
                                                       void* recv, const int64_t* recv_counts,
                                                       DType dtype, Stream stream) {
  const ncclDataType_t type = nccl_type(dtype, "all_to_all_v");
  for (int p = 0; p < impl_->size; ++p) {
    MOEX_CHECK(send_counts[p] >= 0 && recv_counts[p] >= 0,
               "NcclCommunicator::all_to_all_v: ", "negative count for rank ", p, " (send ",
               send_counts[p], ", recv ", recv_counts[p], ")");
  }
  return impl_->run("all_to_all_v", stream, [&] {
    send_recv_group("all_to_all_v", static_cast<const char*>(send), send_counts,
                    static_cast<char*>(recv), recv_counts, impl_->size, dtype_size(dtype), type,
                    impl_->comm, impl_->stream);
  });
}

}  // namespace moex::dist
