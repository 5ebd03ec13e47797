// The process groups of a run (docs/parallelism.md): MPI when the program was started by mpirun
// with more than one rank, a single local process otherwise (no MPI calls at all then). split()
// makes the tensor-, data- and expert-parallel sub-groups. CPU traffic goes through MPI; GPU
// traffic goes through dist/nccl_communicator.h, built from one of these groups.
//
// Every collective must be called by every rank of the group, in the same order, with the sizes
// its comment states. A group of size 1 never calls MPI: its collectives are local copies.
#pragma once

#include <cstdint>
#include <memory>

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

  // MPI_Comm_split: the ranks that pass the same color form one new group, ordered by key (ties
  // by rank in this group). Every rank of this group must call it.
  std::unique_ptr<Communicator> split(int color, int key) const;

  // The collectives below take T = float, double or int64_t (all_to_all_v and
  // reduce_scatter_sum: float or double); all_gather and all_to_all_v also move raw bytes
  // (T = uint8_t).
  // In place: data[i] = sum over ranks of data[i]. Every rank must call with the same n.
  template <typename T>
  void all_reduce_sum(T* data, int64_t n);
  // Largest value over ranks (e.g. "did any rank get Ctrl-C").
  int all_reduce_max(int value);
  void barrier();

  // recv [size, n] = every rank's send [n], in rank order.
  template <typename T>
  void all_gather(const T* send, T* recv, int64_t n);
  // send [size, n]: recv [n] = sum over ranks r of their send[rank() * n .. + n].
  template <typename T>
  void reduce_scatter_sum(const T* send, T* recv, int64_t n);
  // data [n] on every rank becomes root's data [n].
  template <typename T>
  void broadcast(T* data, int64_t n, int root);
  // value on every rank becomes root's value, with the waiting ranks polling for the first 50 ms
  // and then sleeping between polls (up to 1 ms apart), so a rank that waits long (a server's
  // mirroring rank while no request comes) leaves its core free. Every rank of the group must
  // call this one (a blocking broadcast does not match it).
  void broadcast_yielding(int64_t& value, int root);
  // send [size, n]: block p goes to rank p; recv [size, n]: block p came from rank p.
  template <typename T>
  void all_to_all(const T* send, T* recv, int64_t n);
  // Variable sizes: send_counts[p] elements go to rank p (blocks back to back in send), and
  // recv_counts[p] come from rank p (back to back in recv). Rank p's send_counts[q] must equal
  // rank q's recv_counts[p] (exchange the counts with all_to_all first). Counts and offsets must
  // fit an MPI count (2^31 - 1); the collectives above take any n, in pieces of at most
  // message_limit() elements a rank.
  template <typename T>
  void all_to_all_v(const T* send, const int64_t* send_counts, T* recv, const int64_t* recv_counts);

  // The most elements a rank sends in one MPI call of the collectives above (MPI counts are ints):
  // 2^30 unless set_message_limit lowered it (tests cut small messages into pieces that way).
  static int64_t message_limit();
  static void set_message_limit(int64_t elements);

  // This process's index among the job's processes on its node (the GPU it should use): the
  // launcher's local rank (Open MPI's OMPI_COMM_WORLD_LOCAL_RANK, MPICH's MPI_LOCALRANKID or
  // Slurm's SLURM_LOCALID), else rank() (one node).
  int local_rank() const;

  // Ends the whole job with exit status `code`: MPI_Abort on every rank when this process is one
  // rank of an MPI job, a plain exit otherwise. Use it where a failing rank would leave the others
  // waiting in a collective forever (a thrown error, a failed test).
  [[noreturn]] static void abort_job(int code);
  // True when MPI has been initialized in this process (and not finalized).
  static bool in_mpi_job();
  // Whether MPI may be called from any one thread at a time (MPI_THREAD_SERIALIZED, which the
  // world asks for): the server's engine thread runs tensor-parallel steps. True without MPI.
  static bool calls_from_any_thread();
  // Makes std::terminate (an uncaught exception anywhere) end the whole job via abort_job(1).
  static void abort_job_on_terminate();

  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  struct Handle;  // the MPI communicator (communicator.cpp)

 private:
  Communicator() = default;
  explicit Communicator(bool join_world);
  int rank_ = 0;
  int size_ = 1;
  bool owns_world_ = false;               // MPI_Finalize at exit
  static inline bool serialized_ = true;  // the thread level MPI granted allows it
  std::unique_ptr<Handle> handle_;        // null when size_ == 1: no MPI calls
};

}  // namespace moex::dist
