// GPU tests of the NCCL communicator (dist/nccl_communicator.h) at one rank, bootstrapped through
// the id file as a job without MPI is: every collective on random data (f32, bf16, f64, i64)
// against what the host expects of a group of one, outputs poisoned with 0xFF bytes first; the
// ordering against the caller's stream (the collective waits for work queued before it, work
// queued after it sees the result, the host is not blocked); the watchdog ending the process when
// a collective does not finish in time. Several ranks need several GPUs (docs/parallelism.md).
#include "dist/nccl_communicator.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "dist/communicator.h"
#include "ops/collective.h"
#include "ops/elementwise.h"
#include "unit/cpu_kernel_checks.h"

namespace moex::dist {
namespace {

std::string temp_path(const char* name) {
  const std::string dir = ::testing::TempDir();
  return dir + (dir.empty() || dir.back() == '/' ? "" : "/") + "moex_nccl_gpu_" + name + "_" +
         std::to_string(::getpid());
}
// A temporary path where no file is yet.
std::string fresh_path(const char* name) {
  std::string path = temp_path(name);
  std::remove(path.c_str());
  return path;
}

bool file_exists(const std::string& path) {
  return access(path.c_str(), F_OK) == 0;
}

// Random host bytes of `n` elements of `dtype` (finite values, never all zero).
std::vector<unsigned char> random_bytes(int64_t n, DType dtype, uint64_t seed) {
  std::vector<unsigned char> out(static_cast<size_t>(n) * dtype_size(dtype));
  for (int64_t i = 0; i < n; ++i) {
    const float u = philox_uniform(seed, 0x4cc1, static_cast<uint64_t>(i));
    unsigned char* at = out.data() + static_cast<size_t>(i) * dtype_size(dtype);
    if (dtype == DType::kF32) {
      const float v = 4.0f * u - 2.0f;
      std::memcpy(at, &v, 4);
    } else if (dtype == DType::kBF16) {
      const uint16_t v = f32_to_bf16(4.0f * u - 2.0f);
      std::memcpy(at, &v, 2);
    } else if (dtype == DType::kF64) {
      const double v = 4.0 * u - 2.0 + 1e-9 * i;
      std::memcpy(at, &v, 8);
    } else {
      const int64_t v = static_cast<int64_t>(u * 1e12) - 500000000000 + i;
      std::memcpy(at, &v, 8);
    }
  }
  return out;
}

// Device memory filled with 0xFF (NaN in f32/bf16/f64, -1 in i64) until written.
struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes) : bytes(bytes) {
    CUDA_CHECK(cudaMalloc(&ptr, bytes > 0 ? bytes : 1));
    CUDA_CHECK(cudaMemset(ptr, 0xFF, bytes > 0 ? bytes : 1));
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const std::vector<unsigned char>& host) {
    CUDA_CHECK(cudaMemcpy(ptr, host.data(), host.size(), cudaMemcpyHostToDevice));
  }
  std::vector<unsigned char> download() const {
    std::vector<unsigned char> host(bytes);
    CUDA_CHECK(cudaMemcpy(host.data(), ptr, bytes, cudaMemcpyDeviceToHost));
    return host;
  }
  void* ptr = nullptr;
  size_t bytes;
};

// First differing element, for a failure message that says where and what.
std::string first_difference(const std::vector<unsigned char>& got,
                             const std::vector<unsigned char>& want, DType dtype) {
  if (got.size() != want.size())
    return "sizes " + std::to_string(got.size()) + " vs " + std::to_string(want.size());
  const size_t es = dtype_size(dtype);
  for (size_t i = 0; i < got.size(); i += es) {
    if (std::memcmp(got.data() + i, want.data() + i, es) != 0) {
      char line[160];
      uint64_t g = 0, w = 0;
      std::memcpy(&g, got.data() + i, es);
      std::memcpy(&w, want.data() + i, es);
      std::snprintf(line, sizeof(line), "element %zu of %zu (%s): got bits %#llx, want %#llx",
                    i / es, got.size() / es, dtype_name(dtype), (unsigned long long)g,
                    (unsigned long long)w);
      return line;
    }
  }
  return "";
}

// Makes `stream` wait `ms` milliseconds on the host before running what is queued after.
void delay_stream(cudaStream_t stream, int ms) {
  CUDA_CHECK(cudaLaunchHostFunc(
      stream,
      [](void* p) {
        std::this_thread::sleep_for(std::chrono::milliseconds(reinterpret_cast<intptr_t>(p)));
      },
      reinterpret_cast<void*>(static_cast<intptr_t>(ms))));
}

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (cuda::device_count() == 0) return;
    NcclOptions options;
    options.id_file = fresh_path("suite");
    options.bootstrap_timeout_s = 60;
    try {
      comm_ = new NcclCommunicator(0, 1, options);
    } catch (const std::exception& e) {
      setup_error_ = e.what();  // reported by every test of the suite
    }
  }
  static void TearDownTestSuite() {
    delete comm_;
    comm_ = nullptr;
  }
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no GPU visible";
    ASSERT_NE(comm_, nullptr) << "the one-rank NCCL communicator did not come up: " << setup_error_;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  static NcclCommunicator* comm_;
  static std::string setup_error_;
  cudaStream_t stream_ = nullptr;
};
NcclCommunicator* NcclCommunicatorTest::comm_ = nullptr;
std::string NcclCommunicatorTest::setup_error_;

const DType kTypes[] = {DType::kF32, DType::kBF16, DType::kF64, DType::kI64};

TEST_F(NcclCommunicatorTest, BootstrapsOneRankThroughTheIdFile) {
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->size(), 1);
  EXPECT_NE(comm_->stream(), nullptr);
  // Rank 0 wrote the id and removed it once every rank (here: itself) had joined.
  EXPECT_FALSE(file_exists(temp_path("suite")));

  // The environment variable and a Communicator group of one (no MPI) work the same way.
  const std::string path = fresh_path("env");
  setenv("MOEX_NCCL_ID_FILE", path.c_str(), 1);
  {
    NcclCommunicator from_group(Communicator::local());
    EXPECT_EQ(from_group.size(), 1);
    EXPECT_FALSE(file_exists(path)) << path << " should be removed once the group is up";
    DeviceBuffer data(64 * 4);
    const auto host = random_bytes(64, DType::kF32, 7);
    data.upload(host);
    CUDA_CHECK(cudaEventSynchronize(from_group.all_reduce_sum(data.ptr, 64, DType::kF32, stream_)));
    EXPECT_EQ(first_difference(data.download(), host, DType::kF32), "");
  }
  unsetenv("MOEX_NCCL_ID_FILE");
}

TEST_F(NcclCommunicatorTest, MissingOrGarbledIdFileIsAClearErrorWithinTheWait) {
  NcclOptions options;
  options.id_file = fresh_path("missing");
  options.bootstrap_timeout_s = 1.0;
  const auto start = std::chrono::steady_clock::now();
  testing::expect_error_naming([&] { NcclCommunicator rank1(1, 2, options); },
                               {options.id_file, "the NCCL unique id", "1 s"});
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(waited, 10.0) << "the wait is bounded by bootstrap_timeout_s";

  {
    FILE* f = std::fopen(options.id_file.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("a leftover that is not an id", f);
    std::fclose(f);
  }
  testing::expect_error_naming([&] { NcclCommunicator rank1(1, 2, options); },
                               {options.id_file, "not a moex store file"});
  std::remove(options.id_file.c_str());
}

TEST_F(NcclCommunicatorTest, AllReduceOfOneRankIsTheIdentity) {
  for (DType dtype : kTypes) {
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{1} << 20}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " n=" + std::to_string(n));
      const auto host = random_bytes(n, dtype, 1 + n);
      DeviceBuffer data(host.size());
      data.upload(host);
      cudaEvent_t done = comm_->all_reduce_sum(data.ptr, n, dtype, stream_);
      ASSERT_NE(done, nullptr);
      CUDA_CHECK(cudaEventSynchronize(done));
      EXPECT_EQ(first_difference(data.download(), host, dtype), "");
    }
  }
}

// The op the trainer sums GPU gradients with (ops/collective.h): queued on the model device's
// stream between the ops that write and read the tensor. One rank: the sum is the tensor.
TEST_F(NcclCommunicatorTest, OpsAllReduceOnTheDeviceStreamKeepsOneRanksValues) {
  const int64_t n = 1 << 20;
  Tensor host = Tensor::empty(Shape{n}, DType::kF32);
  for (int64_t i = 0; i < n; ++i)
    host.data<float>()[i] = 0.25f * static_cast<float>(i % 977) - 3.0f;
  Tensor dev = Tensor::empty(Shape{n}, DType::kF32, Device::cuda());
  ops::copy(host, dev);
  ops::all_reduce_sum(dev, *comm_);
  ops::add_into(dev, dev);  // a later op on the same stream sees the sum: 2 x the values
  Tensor back = Tensor::empty(Shape{n}, DType::kF32);
  ops::copy(dev, back);
  for (int64_t i = 0; i < n; i += 4099)
    ASSERT_EQ(back.data<float>()[i], 2.0f * host.data<float>()[i]) << "element " << i;
  testing::expect_error_naming([&] { ops::all_reduce_sum(host, *comm_); },
                               {"all_reduce_sum", "GPU tensors"});
}

TEST_F(NcclCommunicatorTest, AllGatherReduceScatterBroadcastAllToAllCopyAtOneRank) {
  for (DType dtype : kTypes) {
    const int64_t n = 4099;  // odd: no size that happens to be a multiple of a vector width
    SCOPED_TRACE(dtype_name(dtype));
    const auto host = random_bytes(n, dtype, 99);
    DeviceBuffer send(host.size());
    send.upload(host);
    {
      DeviceBuffer recv(host.size());
      comm_->all_gather(send.ptr, recv.ptr, n, dtype, stream_);
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      EXPECT_EQ(first_difference(recv.download(), host, dtype), "") << "all_gather";
    }
    {
      DeviceBuffer recv(host.size());
      comm_->reduce_scatter_sum(send.ptr, recv.ptr, n, dtype, stream_);
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      EXPECT_EQ(first_difference(recv.download(), host, dtype), "") << "reduce_scatter_sum";
    }
    {
      DeviceBuffer recv(host.size());
      comm_->all_to_all(send.ptr, recv.ptr, n, dtype, stream_);
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      EXPECT_EQ(first_difference(recv.download(), host, dtype), "") << "all_to_all";
    }
    {
      DeviceBuffer data(host.size());
      data.upload(host);
      comm_->broadcast(data.ptr, n, dtype, 0, stream_);
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      EXPECT_EQ(first_difference(data.download(), host, dtype), "") << "broadcast";
    }
  }
}

TEST_F(NcclCommunicatorTest, AllToAllVMovesExactlyTheCountedRows) {
  for (DType dtype : kTypes) {
    for (int64_t count : {int64_t{0}, int64_t{1}, int64_t{777}, int64_t{3000}}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " count=" + std::to_string(count));
      const int64_t capacity = 3000;  // the buffers are padded; only `count` elements move
      const auto host = random_bytes(capacity, dtype, 5 + count);
      DeviceBuffer send(host.size()), recv(host.size());
      send.upload(host);
      const int64_t send_counts[1] = {count}, recv_counts[1] = {count};
      comm_->all_to_all_v(send.ptr, send_counts, recv.ptr, recv_counts, dtype, stream_);
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      std::vector<unsigned char> want(host.size(), 0xFF);
      std::memcpy(want.data(), host.data(), static_cast<size_t>(count) * dtype_size(dtype));
      EXPECT_EQ(first_difference(recv.download(), want, dtype), "")
          << "the first " << count << " elements are the sent ones, the rest stay untouched";
    }
  }
}

TEST_F(NcclCommunicatorTest, CollectiveWaitsForTheCallerStreamAndTheCallerWaitsForIt) {
  const int64_t n = 1 << 22;  // 16 MiB of f32
  const auto host = random_bytes(n, DType::kF32, 2024);
  DeviceBuffer send(host.size()), recv(host.size());
  void* pinned = nullptr;
  CUDA_CHECK(cudaMallocHost(&pinned, host.size()));
  std::memcpy(pinned, host.data(), host.size());

  // The input only arrives after a 1 s stall on the caller's stream: an all-gather that did
  // not wait for it would copy the 0xFF poison.
  delay_stream(stream_, 1000);
  CUDA_CHECK(cudaMemcpyAsync(send.ptr, pinned, host.size(), cudaMemcpyHostToDevice, stream_));
  const auto start = std::chrono::steady_clock::now();
  cudaEvent_t done = comm_->all_gather(send.ptr, recv.ptr, n, DType::kF32, stream_);
  const double issue_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(issue_s, 0.5) << "queuing a collective must not block the host";
  EXPECT_EQ(cudaEventQuery(done), cudaErrorNotReady)
      << "the collective finished while the caller's stream was still stalled before its input";
  (void)cudaGetLastError();  // the query's cudaErrorNotReady must not reach a later launch check
  CUDA_CHECK(cudaEventSynchronize(done));
  EXPECT_EQ(first_difference(recv.download(), host, DType::kF32), "")
      << "after the returned event the result is there";

  // The other direction: the collective itself is held back on the communicator's stream; a copy
  // queued on the caller's stream after it must still see its result.
  DeviceBuffer recv2(host.size());
  delay_stream(comm_->stream(), 1000);
  comm_->all_gather(send.ptr, recv2.ptr, n, DType::kF32, stream_);
  CUDA_CHECK(cudaMemcpyAsync(pinned, recv2.ptr, host.size(), cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::vector<unsigned char> got(host.size());
  std::memcpy(got.data(), pinned, host.size());
  EXPECT_EQ(first_difference(got, host, DType::kF32), "")
      << "work queued on the caller's stream after the collective ran before it finished";
  CUDA_CHECK(cudaFreeHost(pinned));
}

// The detached forms (parallel.overlap_comm): the caller's stream runs on past the collective
// while the communicator's stream is held back, and once the caller's stream waits for the
// returned event, what it queues afterwards sees the result.
TEST_F(NcclCommunicatorTest, DetachedCollectivesLetTheCallerRunOnUntilItWaits) {
  const int64_t n = 1 << 20;
  const auto host = random_bytes(n, DType::kF32, 77);
  DeviceBuffer data(host.size()), recv(host.size());
  data.upload(host);
  void* pinned = nullptr;
  CUDA_CHECK(cudaMallocHost(&pinned, host.size()));
  for (const bool reduce_scatter : {false, true}) {
    SCOPED_TRACE(reduce_scatter ? "reduce_scatter_sum_detached" : "all_reduce_sum_detached");
    void* out = reduce_scatter ? recv.ptr : data.ptr;
    CUDA_CHECK(cudaMemset(recv.ptr, 0xFF, host.size()));
    CUDA_CHECK(cudaDeviceSynchronize());
    delay_stream(comm_->stream(), 1000);
    cudaEvent_t done =
        reduce_scatter
            ? comm_->reduce_scatter_sum_detached(data.ptr, recv.ptr, n, DType::kF32, stream_)
            : comm_->all_reduce_sum_detached(data.ptr, n, DType::kF32, stream_);
    cudaEvent_t ahead = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&ahead, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(ahead, stream_));
    CUDA_CHECK(cudaEventSynchronize(ahead));  // the caller's stream got past the collective
    EXPECT_EQ(cudaEventQuery(done), cudaErrorNotReady)
        << "the caller's stream waited for a detached collective";
    (void)cudaGetLastError();
    CUDA_CHECK(cudaStreamWaitEvent(stream_, done, 0));
    CUDA_CHECK(cudaMemcpyAsync(pinned, out, host.size(), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<unsigned char> got(host.size());
    std::memcpy(got.data(), pinned, host.size());
    EXPECT_EQ(first_difference(got, host, DType::kF32), "") << "one rank's sum is its own data";
    CUDA_CHECK(cudaEventDestroy(ahead));
  }
  CUDA_CHECK(cudaFreeHost(pinned));
}

TEST_F(NcclCommunicatorTest, ManyQueuedCollectivesRecycleTheirEvents) {
  const int64_t n = 4096;
  auto host = random_bytes(n, DType::kI64, 3);
  DeviceBuffer data(host.size());
  data.upload(host);
  for (int i = 0; i < 500; ++i) comm_->all_reduce_sum(data.ptr, n, DType::kI64, stream_);
  comm_->synchronize();
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  EXPECT_EQ(first_difference(data.download(), host, DType::kI64), "");
}

TEST_F(NcclCommunicatorTest, BadArgumentsAreErrorsNamingTheCollective) {
  DeviceBuffer data(64);
  testing::expect_error_naming([&] { comm_->all_reduce_sum(data.ptr, 8, DType::kU8, stream_); },
                               {"all_reduce_sum", "U8"});
  testing::expect_error_naming([&] { comm_->broadcast(data.ptr, 8, DType::kF32, 1, stream_); },
                               {"broadcast", "root 1"});
  testing::expect_error_naming(
      [&] { comm_->all_gather(data.ptr, data.ptr, -1, DType::kF32, stream_); },
      {"all_gather", "-1"});
  const int64_t bad[1] = {-3};
  testing::expect_error_naming(
      [&] { comm_->all_to_all_v(data.ptr, bad, data.ptr, bad, DType::kF32, stream_); },
      {"all_to_all_v", "-3"});
  // The communicator is still usable afterwards.
  CUDA_CHECK(cudaEventSynchronize(comm_->all_reduce_sum(data.ptr, 16, DType::kF32, stream_)));
}

// A collective that cannot finish (its stream is stalled far beyond the timeout) ends the process
// with one line naming it: the stand-in for a peer rank that died (docs/parallelism.md).
TEST(NcclCommunicatorWatchdog, UnfinishedCollectiveEndsTheJob) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no GPU visible";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        NcclOptions options;
        options.op_timeout_s = 0.5;
        NcclCommunicator comm(0, 1, options);
        DeviceBuffer data(1024);
        delay_stream(comm.stream(), 4000);
        comm.all_reduce_sum(data.ptr, 256, DType::kF32, nullptr);
        std::this_thread::sleep_for(std::chrono::seconds(30));  // the watchdog ends it first
        std::exit(0);
      },
      ::testing::ExitedWithCode(1), "all_reduce_sum has not finished after 0.5 s");
}

}  // namespace
}  // namespace moex::dist
