#include "moe/expert_exchange.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "moe/row_share.h"

namespace moex::moe {

void ExpertExchange::prepare(const DispatchPlan& plan, dist::Communicator& group) {
  const int ep = group.size();
  const int64_t num_e = plan.num_experts;
  MOEX_CHECK(num_e % ep == 0, "ExpertExchange: ", num_e, " experts cannot be split over ", ep,
             " expert-parallel ranks");
  const int64_t el = num_e / ep;
  group_ = &group;

  // Per peer: the counts of its El experts, then this rank's capacity (padded rows per expert).
  std::vector<int64_t> send(ep * (el + 1)), recv(ep * (el + 1));
  for (int p = 0; p < ep; ++p) {
    std::copy(plan.counts.begin() + p * el, plan.counts.begin() + (p + 1) * el,
              send.begin() + p * (el + 1));
    send[p * (el + 1) + el] = plan.padded ? plan.capacity : 0;
  }
  group.all_to_all(send.data(), recv.data(), el + 1);

  send_rows_.assign(ep, 0);
  recv_rows_.assign(ep, 0);
  for (int p = 0; p < ep; ++p) {
    send_rows_[p] = plan.offsets[(p + 1) * el] - plan.offsets[p * el];
    const int64_t* from_p = recv.data() + p * (el + 1);
    recv_rows_[p] = plan.padded ? el * from_p[el] : 0;
    if (!plan.padded)
      for (int64_t e = 0; e < el; ++e) recv_rows_[p] += from_p[e];
  }

  // Every rank sees every capacity, so all of them make the same choice here.
  fixed_size_ = plan.padded;
  for (int p = 0; p < ep; ++p) fixed_size_ &= recv[p * (el + 1) + el] == plan.capacity;

  local_ = DispatchPlan();
  local_.num_experts = el;
  local_.top_k = plan.top_k;
  local_.padded = false;
  local_.counts.assign(el, 0);
  local_.offsets.assign(el + 1, 0);
  for (int64_t e = 0; e < el; ++e) {
    for (int p = 0; p < ep; ++p) local_.counts[e] += recv[p * (el + 1) + e];
    local_.offsets[e + 1] = local_.offsets[e] + local_.counts[e];
    local_.capacity = std::max(local_.capacity, local_.counts[e]);
  }
  // Local row -> receive-buffer row: peer p's block, then expert e's rows within it.
  recv_row_of_local_.resize(local_.num_rows());
  sources_.assign(ep, DispatchPlan());
  std::vector<int64_t> filled(el, 0);
  int64_t block = 0;
  for (int p = 0; p < ep; ++p) {
    const int64_t* from_p = recv.data() + p * (el + 1);
    DispatchPlan& source = sources_[p];
    source.num_experts = el;
    source.top_k = plan.top_k;
    source.padded = false;
    source.counts.assign(from_p, from_p + el);
    source.offsets.assign(el + 1, local_.num_rows());  // offsets[El] = the buffer's row count
    int64_t start = block;
    for (int64_t e = 0; e < el; ++e) {
      source.offsets[e] = local_.offsets[e] + filled[e];
      source.capacity = std::max(source.capacity, from_p[e]);
      for (int64_t i = 0; i < from_p[e]; ++i)
        recv_row_of_local_[local_.offsets[e] + filled[e]++] = start + i;
      start += plan.padded ? from_p[el] : from_p[e];
    }
    block += recv_rows_[p];
  }
}

template <typename T>
void ExpertExchange::exchange_shares(const T* send, T* recv, int64_t d,
                                     const std::vector<int64_t>& out_rows,
                                     const std::vector<int64_t>& in_rows) {
  const int ep = group_->size(), parts = dedup_->size(), me = dedup_->rank();
  // 1. This rank's share of every block to its peer (the peers with this tp rank).
  std::vector<int64_t> counts(2 * ep), slot_rows(ep);  // send, receive elements; slot per peer
  int64_t send_total = 0, recv_total = 0, slot_total = 0;
  for (int p = 0; p < ep; ++p) {
    counts[p] = row_share(out_rows[p], parts, me).count * d;
    counts[ep + p] = row_share(in_rows[p], parts, me).count * d;
    send_total += counts[p];
    recv_total += counts[ep + p];
    slot_rows[p] = row_share(in_rows[p], parts, 0).count;  // share 0 is the largest
    slot_total += slot_rows[p];
    if (p != group_->rank()) stats_.bytes_sent += counts[p] * static_cast<int64_t>(sizeof(T));
  }
  std::vector<T> shares(send_total), got(recv_total);
  int64_t block = 0, at = 0;
  for (int p = 0; p < ep; ++p) {
    const RowShare s = row_share(out_rows[p], parts, me);
    std::memcpy(shares.data() + at, send + (block + s.begin) * d, sizeof(T) * s.count * d);
    at += s.count * d;
    block += out_rows[p];
  }
  group_->all_to_all_v(shares.data(), counts.data(), got.data(), counts.data() + ep);

  // 2. Every tp rank's received shares, each peer's in a fixed slot, gathered over tp.
  std::vector<T> mine(slot_total * d, T(0)), all(parts * slot_total * d);
  int64_t slot = 0;
  at = 0;
  for (int p = 0; p < ep; ++p) {
    std::memcpy(mine.data() + slot * d, got.data() + at, sizeof(T) * counts[ep + p]);
    at += counts[ep + p];
    slot += slot_rows[p];
  }
  dedup_->all_gather(mine.data(), all.data(), slot_total * d);
  stats_.gather_bytes_sent += (parts - 1) * slot_total * d * static_cast<int64_t>(sizeof(T));

  // 3. Block p = share 0, share 1, ... of peer p, as the plain all-to-all would have put it.
  block = slot = 0;
  for (int p = 0; p < ep; ++p) {
    for (int j = 0; j < parts; ++j) {
      const RowShare s = row_share(in_rows[p], parts, j);
      std::memcpy(recv + (block + s.begin) * d, all.data() + (j * slot_total + slot) * d,
                  sizeof(T) * s.count * d);
    }
    block += in_rows[p];
    slot += slot_rows[p];
  }
}

template <typename T>
void ExpertExchange::exchange(const T* send, T* recv, int64_t d, bool forward) {
  const std::vector<int64_t>& out_rows = forward ? send_rows_ : recv_rows_;
  const std::vector<int64_t>& in_rows = forward ? recv_rows_ : send_rows_;
  const int ep = group_->size();
  ++stats_.exchanges;
  const auto start = std::chrono::steady_clock::now();
  if (dedup_ != nullptr && dedup_->size() > 1) {
    exchange_shares(send, recv, d, out_rows, in_rows);  // counts the bytes of its shares
  } else {
    for (int p = 0; p < ep; ++p)
      if (p != group_->rank())
        stats_.bytes_sent += out_rows[p] * d * static_cast<int64_t>(sizeof(T));
    if (fixed_size_) {
      group_->all_to_all(send, recv, out_rows[0] * d);
    } else {
      counts_.resize(2 * ep);
      for (int p = 0; p < ep; ++p) {
        counts_[p] = out_rows[p] * d;
        counts_[ep + p] = in_rows[p] * d;
      }
      group_->all_to_all_v(send, counts_.data(), recv, counts_.data() + ep);
    }
  }
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

template <typename T>
T* ExpertExchange::staging(int64_t d) {
  std::vector<T>* buffer = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    buffer = &staging_f32_;
  } else {
    buffer = &staging_f64_;
  }
  int64_t rows = 0;
  for (int64_t n : recv_rows_) rows += n;
  buffer->assign(rows * d, T(0));  // padding rows stay zero
  return buffer->data();
}

template <typename T>
void ExpertExchange::to_owners(const T* rows, int64_t d, T* local) {
  T* recv = staging<T>(d);
  exchange(rows, recv, d, true);
  const int64_t n = local_.num_rows();
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(local + i * d, recv + recv_row_of_local_[i] * d, sizeof(T) * d);
}

template <typename T>
void ExpertExchange::from_owners(const T* local, int64_t d, T* rows) {
  T* send = staging<T>(d);
  const int64_t n = local_.num_rows();
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(send + recv_row_of_local_[i] * d, local + i * d, sizeof(T) * d);
  exchange(send, rows, d, false);
}

template <typename T>
void ExpertExchange::reuse_forward(int64_t d) {
  MOEX_CHECK(group_ != nullptr, "ExpertExchange::reuse_forward: no exchange was prepared");
  const int ep = group_->size();
  // Under DTD the exchanges would have sent this rank's shares only.
  const int parts = dedup_ != nullptr ? dedup_->size() : 1,
            me = dedup_ != nullptr ? dedup_->rank() : 0;
  for (int p = 0; p < ep; ++p)
    if (p != group_->rank())
      stats_.bytes_saved +=
          (row_share(send_rows_[p], parts, me).count + row_share(recv_rows_[p], parts, me).count) *
          d * static_cast<int64_t>(sizeof(T));
  stats_.exchanges_saved += 2;
}

template void ExpertExchange::to_owners<float>(const float*, int64_t, float*);
template void ExpertExchange::to_owners<double>(const double*, int64_t, double*);
template void ExpertExchange::from_owners<float>(const float*, int64_t, float*);
template void ExpertExchange::from_owners<double>(const double*, int64_t, double*);
template void ExpertExchange::reuse_forward<float>(int64_t);
template void ExpertExchange::reuse_forward<double>(int64_t);

}  // namespace moex::moe
