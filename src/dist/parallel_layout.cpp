#include "dist/parallel_layout.h"

#include "core/error.h"

namespace moex::dist {

ParallelLayout ParallelLayout::make(int world_size, int rank, const ParallelConfig& c,
                                    const std::string& source) {
  MOEX_CHECK(c.tp >= 1 && world_size % c.tp == 0, source, ": parallel.tp: ", c.tp,
             " must be >= 1 and divide the number of ranks (", world_size, ")");
  const int64_t dp = world_size / c.tp;
  MOEX_CHECK(c.ep >= 1 && dp % c.ep == 0, source, ": parallel.ep: ", c.ep,
             " must be >= 1 and divide dp = ranks / tp = ", world_size, " / ", c.tp, " = ", dp);
  MOEX_CHECK(!c.offload || world_size == 1 || c.zero_stage > 0, source,
             ": parallel.offload: on several ranks ZeRO-Offload needs parallel.zero_stage 1 or 2 "
             "(each rank steps its shard of the optimizer on the host)");
  MOEX_CHECK(!c.dtd || (c.tp > 1 && c.ep > 1), source,
             ": parallel.dtd: Duplicate Token Dropping needs tp > 1 and ep > 1 (it drops the "
             "copies that the tp ranks would send through the expert all-to-all)");

  return map(world_size, rank, static_cast<int>(c.tp), static_cast<int>(c.ep));
}

ParallelLayout ParallelLayout::map(int world_size, int rank, int tp, int ep) {
  MOEX_CHECK(tp >= 1 && world_size % tp == 0 && ep >= 1 && (world_size / tp) % ep == 0 &&
                 rank >= 0 && rank < world_size,
             "ParallelLayout::map: no layout of tp ", tp, " and ep ", ep, " for rank ", rank,
             " of ", world_size);
  ParallelLayout l;
  l.world = world_size;
  l.rank = rank;
  l.tp = tp;
  l.dp = world_size / tp;
  l.ep = ep;
  l.edp = l.dp / l.ep;
  l.tp_rank = rank % l.tp;
  l.dp_rank = rank / l.tp;
  l.ep_rank = l.dp_rank % l.ep;
  l.edp_rank = l.dp_rank / l.ep;
  return l;
}

ProcessGroups ProcessGroups::make(Communicator& world, const ParallelLayout& l) {
  MOEX_CHECK(world.size() == l.world && world.rank() == l.rank,
             "ProcessGroups: the layout was made for rank ", l.rank, " of ", l.world,
             ", this is rank ", world.rank(), " of ", world.size());
  // Color: what the members share; key: the position within the group.
  ProcessGroups g;
  g.tp = world.split(l.dp_rank, l.tp_rank);
  g.dp = world.split(l.tp_rank, l.dp_rank);
  g.ep = world.split(l.edp_rank * l.tp + l.tp_rank, l.ep_rank);
  g.edp = world.split(l.ep_rank * l.tp + l.tp_rank, l.edp_rank);
  return g;
}

}  // namespace moex::dist
