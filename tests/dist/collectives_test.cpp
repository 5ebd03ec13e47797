// Run under mpirun (2 and 4 ranks, see CMakeLists.txt): every collective of dist::Communicator on
// the world group and on split sub-groups, against the values each rank works out alone. Every
// value names the rank that made it (value(rank, i) below), so a received element proves where it
// came from.
#include <gtest/gtest.h>

#include <chrono>
#include <numeric>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"
#include "dist/parallel_layout.h"

namespace moex::dist {
namespace {

// What rank r puts at position i of what it sends: distinct for every (rank, position).
double value(int r, int64_t i) {
  return 1000.0 * (r + 1) + static_cast<double>(i);
}

// The collectives on one group, for element type T; `members[r]` is the world rank of group rank r.
template <typename T>
void check_collectives(Communicator& g) {
  const int n = g.size(), me = g.rank();
  const int64_t len = 5;
  std::vector<T> mine(len);
  for (int64_t i = 0; i < len; ++i) mine[i] = static_cast<T>(value(me, i));

  // all_gather: block r is rank r's data.
  std::vector<T> gathered(n * len, T(-1));
  g.all_gather(mine.data(), gathered.data(), len);
  for (int r = 0; r < n; ++r)
    for (int64_t i = 0; i < len; ++i)
      EXPECT_EQ(gathered[r * len + i], static_cast<T>(value(r, i))) << "from rank " << r;

  // broadcast from the last rank.
  std::vector<T> b = mine;
  g.broadcast(b.data(), len, n - 1);
  for (int64_t i = 0; i < len; ++i) EXPECT_EQ(b[i], static_cast<T>(value(n - 1, i)));

  // all_to_all: rank r sends value(r, p * len + i) to rank p; this rank receives, from rank r,
  // value(r, me * len + i).
  std::vector<T> send(n * len), recv(n * len, T(-1));
  for (int64_t j = 0; j < n * len; ++j) send[j] = static_cast<T>(value(me, j));
  g.all_to_all(send.data(), recv.data(), len);
  for (int r = 0; r < n; ++r)
    for (int64_t i = 0; i < len; ++i)
      EXPECT_EQ(recv[r * len + i], static_cast<T>(value(r, me * len + i))) << "from rank " << r;
}

template <typename T>
void check_float_collectives(Communicator& g) {
  const int n = g.size(), me = g.rank();
  const int64_t len = 3;
  // reduce_scatter_sum: rank r sends value(r, j) at j; this rank gets sum_r value(r, me*len + i).
  std::vector<T> send(n * len), recv(len, T(-1));
  for (int64_t j = 0; j < n * len; ++j) send[j] = static_cast<T>(value(me, j));
  g.reduce_scatter_sum(send.data(), recv.data(), len);
  for (int64_t i = 0; i < len; ++i) {
    double want = 0;
    for (int r = 0; r < n; ++r) want += value(r, me * len + i);
    EXPECT_EQ(recv[i], static_cast<T>(want));
  }
  // all_reduce_sum
  std::vector<T> data(len);
  for (int64_t i = 0; i < len; ++i) data[i] = static_cast<T>(value(me, i));
  g.all_reduce_sum(data.data(), len);
  for (int64_t i = 0; i < len; ++i) {
    double want = 0;
    for (int r = 0; r < n; ++r) want += value(r, i);
    EXPECT_EQ(data[i], static_cast<T>(want));
  }

  // all_to_all_v: rank r sends (r + p) % 3 elements to rank p, value(r, 100 * p + i); the counts
  // are exchanged first with the plain all_to_all, as the MoE dispatch does.
  std::vector<int64_t> send_counts(n), recv_counts(n, -1);
  for (int p = 0; p < n; ++p) send_counts[p] = (me + p) % 3;
  g.all_to_all(send_counts.data(), recv_counts.data(), 1);
  std::vector<T> vsend;
  for (int p = 0; p < n; ++p)
    for (int64_t i = 0; i < send_counts[p]; ++i)
      vsend.push_back(static_cast<T>(value(me, 100 * p + i)));
  const int64_t total = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  std::vector<T> vrecv(total, T(-1));
  g.all_to_all_v(vsend.data(), send_counts.data(), vrecv.data(), recv_counts.data());
  int64_t at = 0;
  for (int r = 0; r < n; ++r) {
    ASSERT_EQ(recv_counts[r], (r + me) % 3) << "count from rank " << r;
    for (int64_t i = 0; i < recv_counts[r]; ++i)
      EXPECT_EQ(vrecv[at++], static_cast<T>(value(r, 100 * me + i))) << "from rank " << r;
  }
}

void check_group(Communicator& g) {
  check_collectives<float>(g);
  check_collectives<double>(g);
  check_collectives<int64_t>(g);
  check_float_collectives<float>(g);
  check_float_collectives<double>(g);
}

TEST(Collectives, WorldGroup) {
  Communicator& world = Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  check_group(world);
}

// The yielding broadcast: the root sends late (past the waiting ranks' 50 ms of polling, so they
// sleep between polls), from every rank in turn, each value naming its root; and it still orders
// with the blocking collectives around it.
TEST(Collectives, YieldingBroadcastDeliversTheRootsValue) {
  Communicator& world = Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  for (int root = 0; root < world.size(); ++root) {
    int64_t v = world.rank() == root ? 7000 + root : -1;
    if (world.rank() == root) std::this_thread::sleep_for(std::chrono::milliseconds(120));
    world.broadcast_yielding(v, root);
    EXPECT_EQ(v, 7000 + root) << "root " << root;
    int64_t sum = 1;
    world.all_reduce_sum(&sum, 1);
    EXPECT_EQ(sum, world.size());
  }
}

// Past message_limit() elements a rank, a collective goes in pieces (MPI counts are ints): with
// the limit at 2 every collective above (3 or 5 elements a rank) is cut into 2 or 3 pieces, and
// must still give every element its place. all_to_all_v takes no pieces (its counts fit).
TEST(Collectives, MessagesPastTheLimitGoInPieces) {
  Communicator& world = Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const int64_t limit = Communicator::message_limit();
  Communicator::set_message_limit(2);
  check_group(world);
  auto halves = world.split(world.rank() % 2, world.rank());
  check_group(*halves);
  Communicator::set_message_limit(limit);
  EXPECT_THROW(Communicator::set_message_limit(0), Error);
}

TEST(Collectives, SizeOneGroupsCopyLocally) {
  check_group(Communicator::local());
  // A split where every rank has its own color: groups of one, no MPI traffic.
  Communicator& world = Communicator::world();
  auto alone = world.split(world.rank(), 0);
  ASSERT_EQ(alone->size(), 1);
  EXPECT_EQ(alone->rank(), 0);
  check_group(*alone);
}

TEST(Collectives, SplitGroupsFollowColorAndKey) {
  Communicator& world = Communicator::world();
  // Even and odd ranks, ordered backwards by key: group rank = position from the end.
  auto parity = world.split(world.rank() % 2, -world.rank());
  const int same_parity = (world.size() + 1 - world.rank() % 2) / 2;
  ASSERT_EQ(parity->size(), same_parity);
  EXPECT_EQ(parity->rank(), (same_parity - 1) - world.rank() / 2);
  // Which world ranks are in it, in group order: all_gather of the world rank.
  std::vector<int64_t> members(parity->size());
  const int64_t me = world.rank();
  parity->all_gather(&me, members.data(), 1);
  for (int r = 0; r < parity->size(); ++r)
    EXPECT_EQ(members[r], world.rank() % 2 + 2 * (same_parity - 1 - r));
  check_group(*parity);
}

// The layout's groups hold the ranks its mapping names (parallel_layout.h), for every ep that
// divides the world size.
TEST(Collectives, ProcessGroupsFollowTheLayout) {
  Communicator& world = Communicator::world();
  for (int ep = 1; ep <= world.size(); ++ep) {
    if (world.size() % ep != 0) continue;
    ParallelConfig config;
    config.ep = ep;
    const ParallelLayout l = ParallelLayout::make(world.size(), world.rank(), config, "test");
    EXPECT_EQ(l.dp, world.size());
    EXPECT_EQ(l.edp, world.size() / ep);
    ProcessGroups g = ProcessGroups::make(world, l);
    EXPECT_EQ(g.ep->size(), ep);
    EXPECT_EQ(g.ep->rank(), l.ep_rank);
    EXPECT_EQ(g.edp->size(), l.edp);
    EXPECT_EQ(g.edp->rank(), l.edp_rank);
    EXPECT_EQ(g.dp->size(), world.size());
    EXPECT_EQ(g.tp->size(), 1);
    // ep group: consecutive ranks; edp group: ranks ep apart.
    const int64_t me = world.rank();
    std::vector<int64_t> ep_members(ep), edp_members(l.edp);
    g.ep->all_gather(&me, ep_members.data(), 1);
    g.edp->all_gather(&me, edp_members.data(), 1);
    for (int r = 0; r < ep; ++r) EXPECT_EQ(ep_members[r], l.edp_rank * ep + r);
    for (int r = 0; r < l.edp; ++r) EXPECT_EQ(edp_members[r], r * ep + l.ep_rank);
    check_group(*g.ep);
    check_group(*g.edp);
  }
}

// With tensor parallelism (mapped only: tp > 1 is not built yet) on 4 ranks, tp 2, ep 2: the tp
// groups are neighbours, the dp, ep groups the ranks tp apart (parallel_layout.h), edp groups of
// one.
TEST(Collectives, ProcessGroupsWithTensorParallelism) {
  Communicator& world = Communicator::world();
  if (world.size() % 4 != 0) {
    // 2 ranks: tp 2 leaves dp 1, so ep must be 1; the tp group is the world.
    const ParallelLayout l = ParallelLayout::map(world.size(), world.rank(), 2, 1);
    ProcessGroups g = ProcessGroups::make(world, l);
    EXPECT_EQ(g.tp->size(), 2);
    EXPECT_EQ(g.tp->rank(), world.rank() % 2);
    EXPECT_EQ(g.dp->size(), world.size() / 2);
    check_group(*g.tp);
    return;
  }
  const ParallelLayout l = ParallelLayout::map(world.size(), world.rank(), 2, 2);
  ProcessGroups g = ProcessGroups::make(world, l);
  const int64_t me = world.rank();
  auto members = [&](Communicator& c) {
    std::vector<int64_t> out(c.size());
    c.all_gather(&me, out.data(), 1);
    return out;
  };
  const int64_t base = me - me % 2;
  EXPECT_EQ(members(*g.tp), (std::vector<int64_t>{base, base + 1}));
  std::vector<int64_t> dp;
  for (int64_t r = me % 2; r < world.size(); r += 2) dp.push_back(r);
  EXPECT_EQ(members(*g.dp), dp);
  // ep groups: dp ranks 2k, 2k+1 of one tp rank, i.e. world ranks 4k + tp_rank and 4k + 2 +
  // tp_rank.
  const int64_t block = me - me % 4 + me % 2;
  EXPECT_EQ(members(*g.ep), (std::vector<int64_t>{block, block + 2}));
  EXPECT_EQ(g.edp->size(), world.size() / 4);
  check_group(*g.tp);
  check_group(*g.ep);
}

}  // namespace
}  // namespace moex::dist
