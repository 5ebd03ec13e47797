// The ranks of one device group as threads of this process on one GPU, each rank issuing its work
// on its own stream: what the GPU tests use to run expert parallelism's exchanges where only one
// GPU is lent (NCCL refuses two ranks on one GPU). The collectives are device-to-device copies
// ordered by events, so they keep dist::DeviceGroup's contract: ordered after the work queued on
// the caller's stream, seen by the work queued after them, no host synchronization of the stream.
//
//   ThreadDeviceGroups groups(2);
//   groups.run([&](int rank) { ... layer with options.expert_group = &groups.member(rank) ... });
#pragma once

#include <cuda_runtime.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cuda/cuda_check.h"
#include "dist/device_group.h"

namespace moex::testing {

class ThreadDeviceGroups {
 public:
  explicit ThreadDeviceGroups(int size) : posts_(size), ready_(size), done_(size) {
    for (int r = 0; r < size; ++r) {
      CUDA_CHECK(cudaEventCreateWithFlags(&ready_[r], cudaEventDisableTiming));
      CUDA_CHECK(cudaEventCreateWithFlags(&done_[r], cudaEventDisableTiming));
      members_.push_back(std::make_unique<Member>(*this, r));
    }
  }
  ~ThreadDeviceGroups() {
    for (cudaEvent_t e : ready_) cudaEventDestroy(e);
    for (cudaEvent_t e : done_) cudaEventDestroy(e);
  }
  int size() const { return static_cast<int>(members_.size()); }
  dist::DeviceGroup& member(int rank) { return *members_.at(rank); }

  // Wakes every rank waiting in a collective of this group with an error: for threads that are
  // members of several groups (a tp x ep layout), whose failure run() cannot see in the others.
  void abort() {
    std::lock_guard<std::mutex> lock(mutex_);
    failed_ = true;
    cv_.notify_all();
  }

  // fn(rank) on size() threads. A rank that throws wakes the others' collectives with an error
  // instead of leaving them waiting; the first exception is rethrown once all have joined.
  void run(const std::function<void(int)>& fn) {
    std::vector<std::thread> threads;
    std::vector<std::exception_ptr> errors(members_.size());
    for (int r = 0; r < size(); ++r)
      threads.emplace_back([&, r] {
        try {
          fn(r);
        } catch (...) {
          errors[r] = std::current_exception();
          abort();
        }
      });
    for (std::thread& t : threads) t.join();
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
  }

 private:
  // What a rank offers in a collective: its send buffer and where each peer's block starts.
  struct Post {
    const char* send = nullptr;
    std::vector<int64_t> offset, count;  // [size] elements
  };

  class Member final : public dist::DeviceGroup {
   public:
    Member(ThreadDeviceGroups& g, int rank) : g_(g), rank_(rank) {}
    int rank() const override { return rank_; }
    int size() const override { return g_.size(); }
    // The sums (f32, or bf16 summed in f32 and rounded once) go through the host: the ranks wait
    // for their streams here, unlike the copies below.
    Event all_reduce_sum(void* data, int64_t n, DType dtype, Stream stream) override {
      return sum_blocks(data, data, n, 0, dtype, stream);
    }
    Event reduce_scatter_sum(const void* send, void* recv, int64_t n, DType dtype,
                             Stream stream) override {
      return sum_blocks(send, recv, n, rank_ * n, dtype, stream);
    }
    Event all_gather(const void* send, void* recv, int64_t n, DType dtype, Stream stream) override {
      const std::vector<int64_t> counts(size(), n);
      // Every peer gets the same block: all offsets 0.
      return exchange(send, std::vector<int64_t>(size(), 0), counts, recv, counts, dtype, stream);
    }
    Event all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                       const int64_t* recv_counts, DType dtype, Stream stream) override {
      std::vector<int64_t> offset(size()), count(send_counts, send_counts + size());
      for (int p = 1; p < size(); ++p) offset[p] = offset[p - 1] + count[p - 1];
      return exchange(send, offset, count, recv,
                      std::vector<int64_t>(recv_counts, recv_counts + size()), dtype, stream);
    }

   private:
    // recv [n] = the sum over ranks of their send[at .. at + n).
    Event sum_blocks(const void* send, void* recv, int64_t n, int64_t at, DType dtype,
                     Stream stream) {
      MOEX_CHECK(dtype == DType::kF32 || dtype == DType::kBF16,
                 "ThreadDeviceGroups: sums in f32 or bf16 only");
      const bool bf16 = dtype == DType::kBF16;
      const size_t es = dtype_size(dtype), bytes = static_cast<size_t>(n) * es;
      CUDA_CHECK(cudaStreamSynchronize(stream));
      g_.posts_[rank_] = Post{static_cast<const char*>(send), {}, {}};
      g_.barrier();  // every rank's buffer is written
      std::vector<float> sum(static_cast<size_t>(n), 0.0f), part(sum.size());
      std::vector<uint16_t> half(bf16 ? sum.size() : 0);
      for (int p = 0; p < size(); ++p) {
        CUDA_CHECK(cudaMemcpy(bf16 ? static_cast<void*>(half.data()) : part.data(),
                              g_.posts_[p].send + at * es, bytes, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < part.size(); ++i) sum[i] += bf16 ? bf16_to_f32(half[i]) : part[i];
      }
      g_.barrier();  // every rank has read every buffer
      if (bf16)
        for (size_t i = 0; i < sum.size(); ++i) half[i] = f32_to_bf16(sum[i]);
      CUDA_CHECK(cudaMemcpyAsync(recv, bf16 ? static_cast<void*>(half.data()) : sum.data(), bytes,
                                 cudaMemcpyHostToDevice, stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));
      CUDA_CHECK(cudaEventRecord(g_.done_[rank_], stream));
      return g_.done_[rank_];
    }
    Event exchange(const void* send, const std::vector<int64_t>& offset,
                   const std::vector<int64_t>& count, void* recv,
                   const std::vector<int64_t>& recv_counts, DType dtype, Stream stream) {
      const size_t es = dtype_size(dtype);
      g_.posts_[rank_] = Post{static_cast<const char*>(send), offset, count};
      CUDA_CHECK(cudaEventRecord(g_.ready_[rank_], stream));
      g_.barrier();  // every post and ready event is in place
      int64_t at = 0;
      for (int p = 0; p < size(); ++p) {
        const Post& post = g_.posts_[p];
        MOEX_CHECK(post.count[rank_] == recv_counts[p], "ThreadDeviceGroups: rank ", rank_,
                   " expects ", recv_counts[p], " elements from rank ", p, ", which sends ",
                   post.count[rank_]);
        CUDA_CHECK(cudaStreamWaitEvent(stream, g_.ready_[p], 0));
        if (recv_counts[p] > 0)
          CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(recv) + at * es,
                                     post.send + post.offset[rank_] * es, recv_counts[p] * es,
                                     cudaMemcpyDeviceToDevice, stream));
        at += recv_counts[p];
      }
      CUDA_CHECK(cudaEventRecord(g_.done_[rank_], stream));
      g_.barrier();  // every rank has queued its reads
      // This rank's send buffer may be written again only after every peer has read it.
      for (int p = 0; p < size(); ++p) CUDA_CHECK(cudaStreamWaitEvent(stream, g_.done_[p], 0));
      return g_.done_[rank_];
    }
    ThreadDeviceGroups& g_;
    int rank_;
  };

  void barrier() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == size()) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != generation || failed_; });
    MOEX_CHECK(!failed_, "ThreadDeviceGroups: another rank failed");
  }

  std::vector<std::unique_ptr<Member>> members_;
  std::vector<Post> posts_;
  std::vector<cudaEvent_t> ready_, done_;  // [size] a rank's sends are ready / its reads queued
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool failed_ = false;
};

}  // namespace moex::testing
