// The process group of a run (docs/architecture.md §Parallelism): MPI when the program was
// started by mpirun with more than one rank, a single local process otherwise (no MPI calls at all
// then). CPU traffic goes through MPI; a GPU communicator (NCCL) is not written yet.
#pragma once

#include <cstdint>

namespace moex::dist {

class Communicator {
 public:
  // The world group, set up on first use (MPI_Init when launched with several ranks).
  static Communicator& world();
  // A group of this process alone (size 1), e.g. for a single-process reference run under mpirun.
  static Communicator& local();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }

  // In place: data[i] = sum over ranks of data[i]. Every rank must call with the same n.
  void all_reduce_sum(float* data, int64_t n);
  void all_reduce_sum(double* data, int64_t n);
  // Largest value over ranks (e.g. "did any rank get Ctrl-C").
  int all_reduce_max(int value);
  void barrier();

  // Ends the whole job with exit status `code`: MPI_Abort on every rank when this process is one
  // rank of an MPI job, a plain exit otherwise. Use it where a failing rank would leave the others
  // waiting in a collective forever (a thrown error, a failed test).
  [[noreturn]] static void abort_job(int code);
  // True when MPI has been initialized in this process (and not finalized).
  static bool in_mpi_job();
  // Makes std::terminate (an uncaught exception anywhere) end the whole job via abort_job(1).
  static void abort_job_on_terminate();

  ~Communicator();

 private:
  explicit Communicator(bool join_world);
  int rank_ = 0;
  int size_ = 1;
  bool uses_mpi_ = false;
};

}  // namespace moex::dist
