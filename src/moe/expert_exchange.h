// Expert parallelism's token exchange (docs/parallelism.md §Expert parallelism, the MoE layer's
// stage 7): the ep ranks of a group each hold E / ep consecutive experts (rank p: experts
// p*El .. p*El + El - 1, El = E / ep). After routing, every rank has its own tokens' expert buffer
// in the dispatch plan's layout over all E experts; the exchange sends each expert's rows to the
// rank that owns it and brings the results back.
//
//   capacity mode (padded plan): every peer gets a fixed [El, C, d] block (plain all-to-all), and
//     the El per-expert counts say which of its rows hold tokens;
//   dropless (packed plan): the counts go first, then each peer gets exactly its experts' rows
//     (all-to-all-v).
// The rows received are packed expert-major into the local buffer [R_local, d] (expert e_local's
// rows from peer 0, then from peer 1, ...), which local_plan() describes for experts_forward and
// experts_backward (num_experts = El, packed). source_plan(p) describes only the rows that came
// from peer p (same buffer): computing the experts block by block keeps the weight gradients'
// sums over tokens grouped per micro-batch as in the single process (docs/parallelism.md).
#pragma once

#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "moe/dispatch_plan.h"

namespace moex::moe {

// What the exchanges of a layer cost so far: bytes of expert rows this rank sent to the other
// ranks of its group (the per-expert counts of prepare() not included), bytes it sent to the
// other ranks of its tensor-parallel group in Duplicate Token Dropping's all-gathers, and seconds
// spent in the collectives, waiting for slower ranks included. Under CAC (reuse_forward) the
// exchanges a recompute did not repeat and the bytes they would have sent count as saved. Under
// expert tensor-slicing the layer also counts the bytes of the expert rows it all-reduces over its
// tensor-parallel group (MoELayer::slice_experts): each all-reduce's buffer size.
struct ExchangeStats {
  int64_t exchanges = 0;
  int64_t bytes_sent = 0;
  int64_t gather_bytes_sent = 0;
  int64_t slice_reduce_bytes = 0;
  double seconds = 0;
  int64_t exchanges_saved = 0;
  int64_t bytes_saved = 0;

  // Field by field, so sums over layers and differences over a span of calls keep every counter.
  ExchangeStats& operator+=(const ExchangeStats& o) {
    exchanges += o.exchanges;
    bytes_sent += o.bytes_sent;
    gather_bytes_sent += o.gather_bytes_sent;
    slice_reduce_bytes += o.slice_reduce_bytes;
    seconds += o.seconds;
    exchanges_saved += o.exchanges_saved;
    bytes_saved += o.bytes_saved;
    return *this;
  }
  ExchangeStats operator-(const ExchangeStats& o) const {
    ExchangeStats d = *this;
    d.exchanges -= o.exchanges;
    d.bytes_sent -= o.bytes_sent;
    d.gather_bytes_sent -= o.gather_bytes_sent;
    d.slice_reduce_bytes -= o.slice_reduce_bytes;
    d.seconds -= o.seconds;
    d.exchanges_saved -= o.exchanges_saved;
    d.bytes_saved -= o.bytes_saved;
    return d;
  }
};

class ExpertExchange {
 public:
  // Exchanges the per-expert counts of `plan` over `group` (which must outlive the later calls)
  // and builds the local plan and the row maps. Every rank of the group calls it.
  void prepare(const DispatchPlan& plan, dist::Communicator& group);
  const DispatchPlan& local_plan() const { return local_; }
  const DispatchPlan& source_plan(int peer) const { return sources_.at(peer); }
  const ExchangeStats& stats() const { return stats_; }
  // Duplicate Token Dropping (DeepSpeed-TED, docs/parallelism.md): the ranks of `tp_group` hold
  // the same tokens and the same send buffers, so each sends only its 1/tp share of every block
  // through the all-to-all (to the peers with its own tp rank), and an all-gather over the tp
  // group puts the blocks back together. The same rows arrive as without it. Null: off.
  void drop_duplicates(dist::Communicator* tp_group) { dedup_ = tp_group; }

  // rows [R, d] in the plan's layout -> local [R_local, d] on the experts' owners.
  template <typename T>
  void to_owners(const T* rows, int64_t d, T* local);
  // local [R_local, d] -> rows [R, d] in the plan's layout (padding rows zero). The reverse.
  template <typename T>
  void from_owners(const T* local, int64_t d, T* rows);
  // A recompute took the results of the last to_owners and from_owners of rows of d elements
  // (kept by the caller) instead of exchanging again: counted as saved, nothing is sent.
  template <typename T>
  void reuse_forward(int64_t d);

 private:
  template <typename T>
  void exchange(const T* send, T* recv, int64_t d, bool forward);
  // exchange() under Duplicate Token Dropping: blocks of out_rows[p] rows to peer p, in_rows[p]
  // from it.
  template <typename T>
  void exchange_shares(const T* send, T* recv, int64_t d, const std::vector<int64_t>& out_rows,
                       const std::vector<int64_t>& in_rows);
  // The receive-layout buffer for T, zeroed, sized for rows of d elements.
  template <typename T>
  T* staging(int64_t d);

  dist::Communicator* group_ = nullptr;
  dist::Communicator* dedup_ = nullptr;  // the tp group under Duplicate Token Dropping
  bool fixed_size_ = false;  // every block [El, C, d] with the same C: a plain all-to-all
  DispatchPlan local_;
  std::vector<DispatchPlan> sources_;           // [ep]
  std::vector<int64_t> send_rows_, recv_rows_;  // [ep] rows sent to / received from each peer
  std::vector<int64_t> recv_row_of_local_;      // [R_local] row of the receive buffer
  std::vector<int64_t> counts_;     // [2, ep] elements sent to / received from each peer
  std::vector<float> staging_f32_;  // [sum recv_rows_, d] the receive layout, for T = float
  std::vector<double> staging_f64_;
  ExchangeStats stats_;
};

}  // namespace moex::moe
