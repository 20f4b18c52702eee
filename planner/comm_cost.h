// The communication side of the cost model: alpha-beta time of a collective on a set of ranks
// of a ClusterSpec, per algorithm and per link level, in the style of NCCL's performance model
// (Thakur, Rabenseifner & Gropp 2005; Patarasuk & Yuan 2009 for the bandwidth-optimal ring).
// Pure functions of their arguments; any thread may call them.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "graph/op_def.h"
#include "planner/cluster.h"

namespace tessel::planner {

// The collectives are graph/op_def.h's Collective (one list for ops, planner, runtime).
enum class CommAlgorithm : uint8_t { ring, tree, hierarchical, best };
inline constexpr int kNumCommAlgorithms = 4;

std::string_view algorithm_name(CommAlgorithm alg);

struct CommEstimate {
  double seconds = 0;
  CommAlgorithm algorithm = CommAlgorithm::ring;  // the one costed (never `best`)
  int level = -1;        // outermost link level crossed; -1 for a single rank
  double bus_bytes = 0;  // bytes each rank sends over that level's links
};

// Time of `op` on `ranks` (distinct device ranks of `c`, which must pass validate()).
//
// `bytes` follows NCCL's conventions:
//   all_reduce      the buffer each rank holds (input size = output size)
//   reduce_scatter  the full input each rank holds; each ends with bytes / n
//   all_gather      the full gathered output; each rank contributes bytes / n
//   all_to_all      each rank's whole send buffer; bytes / n goes to each rank
//   broadcast       the buffer; ranks[0] is the root (the cost does not depend on it)
//   send_recv       the message; ranks = {sender, receiver}
//
// Algorithms, each alpha-beta on the level's per-device, per-direction bandwidth and per-step
// latency (n ranks, S bytes, L = the outermost level crossed):
//   ring          flat ring (pairwise exchange for all_to_all, a pipelined chain for broadcast)
//                 over all ranks; every step waits for its slowest hop, so both terms use
//                 level L. all_reduce: 2(n-1) steps, 2(n-1)/n S per rank; reduce_scatter and
//                 all_gather: n-1 steps, (n-1)/n S; broadcast: n-1 steps, S.
//   tree          all_reduce and broadcast only: 2 ceil(log2 n) steps (ceil(log2 n) for
//                 broadcast) and ~2 S per rank (pipelined binary tree, as NCCL models it).
//   hierarchical  for ranks spanning several groups of level L-1 (nodes): reduce-scatter in the
//                 group, all-reduce across groups of S / k on k parallel rails (k ranks per
//                 group), all-gather in the group; the analogous split for the other
//                 collectives. Within one innermost group it is the ring.
//   best          the fastest of those that apply.
// send_recv is one transfer whatever `alg`: latency + S / bandwidth of the level the two ranks
// share. One rank or zero bytes costs 0 s. Throws Error for duplicated or out-of-range ranks,
// an empty rank list, negative or non-finite bytes, more than two ranks for send_recv, and tree
// asked for a collective it does not model.
CommEstimate collective_time(const ClusterSpec& c, Collective op, double bytes,
                             std::span<const int64_t> ranks,
                             CommAlgorithm alg = CommAlgorithm::best);

}  // namespace tessel::planner
