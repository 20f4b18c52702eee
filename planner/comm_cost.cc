#include "planner/comm_cost.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <map>
#include <vector>

#include "graph/error.h"

namespace tessel::planner {

namespace {

constexpr std::array<std::string_view, kNumCommAlgorithms> kAlgorithmNames = {
    "ring", "tree", "hierarchical", "best"};
static_assert(static_cast<int>(CommAlgorithm::best) + 1 == kNumCommAlgorithms,
              "algorithm names out of step");

// An alpha-beta cost on one link level: `steps` latencies plus `bus` bytes sent per rank.
struct Terms {
  double steps = 0;
  double bus = 0;
};

double time_on(const LinkLevel& l, Terms t) { return t.steps * l.latency_s + t.bus / l.bandwidth; }

Terms ring_terms(Collective op, int64_t n, double s) {
  const double k = static_cast<double>(n);
  switch (op) {
    case Collective::all_reduce:
      return {2 * (k - 1), 2 * (k - 1) / k * s};
    case Collective::reduce_scatter:
    case Collective::all_gather:
    case Collective::all_to_all:
      return {k - 1, (k - 1) / k * s};
    case Collective::broadcast:
      return {k - 1, s};  // a pipelined chain: S crosses each hop once
    case Collective::send_recv:
      return {1, s};
    case Collective::barrier:
      return {2 * (k - 1), 0};  // an all-reduce of nothing
  }
  return {};
}

bool tree_models(Collective op) {
  return op == Collective::all_reduce || op == Collective::broadcast;
}

// Binary tree of depth ceil(log2 n). all_reduce goes up and down it; an inner node sends to two
// children, so per-rank traffic is ~2 S, as in NCCL's model (tree algorithm bandwidth = bus / 2).
Terms tree_terms(Collective op, int64_t n, double s) {
  const double depth = std::bit_width(static_cast<uint64_t>(n - 1));
  if (op == Collective::all_reduce) return {2 * depth, 2 * s};
  return {depth, n > 2 ? 2 * s : s};  // broadcast
}

CommEstimate estimate(const ClusterSpec& c, int level, CommAlgorithm alg, Terms t) {
  return {time_on(c.levels[static_cast<size_t>(level)], t), alg, level, t.bus};
}

CommEstimate cost(const ClusterSpec& c, Collective op, double s, std::span<const int64_t> ranks,
                  CommAlgorithm alg);

// Two-level split at the outermost level crossed, L: groups are the level L-1 groups the ranks
// fall in ("nodes"); the parts inside groups recurse, so deeper hierarchies split again.
CommEstimate hierarchical(const ClusterSpec& c, Collective op, double s,
                          std::span<const int64_t> ranks, int level) {
  const int64_t g = c.levels[static_cast<size_t>(level - 1)].group_size;
  std::map<int64_t, std::vector<int64_t>> groups;
  for (int64_t r : ranks) groups[r / g].push_back(r);
  const auto m = static_cast<int64_t>(groups.size());
  size_t k_min = ranks.size();
  for (auto& [id, members] : groups) k_min = std::min(k_min, members.size());
  const double k = static_cast<double>(k_min), n = static_cast<double>(ranks.size());
  // Groups work concurrently; the slowest one counts.
  auto inside = [&](Collective inner_op, auto bytes_of) {
    double t = 0;
    for (auto& [id, members] : groups)
      t = std::max(t,
                   cost(c, inner_op, bytes_of(members.size()), members, CommAlgorithm::hierarchical)
                       .seconds);
    return t;
  };
  auto full = [s](size_t) { return s; };
  // Across groups: k rails run side by side (local rank i of every group, each on its own
  // link), each carrying 1/k of the data; the group with fewest ranks carries the most.
  const LinkLevel& outer = c.levels[static_cast<size_t>(level)];
  Terms across;
  double t = 0;
  switch (op) {
    case Collective::all_reduce:
      across = ring_terms(Collective::all_reduce, m, s / k);
      t = inside(Collective::reduce_scatter, full) + time_on(outer, across) +
          inside(Collective::all_gather, full);
      break;
    case Collective::reduce_scatter:
      across = ring_terms(Collective::reduce_scatter, m, s / k);
      t = inside(Collective::reduce_scatter, full) + time_on(outer, across);
      break;
    case Collective::all_gather:
      across = ring_terms(Collective::all_gather, m, s / k);
      t = time_on(outer, across) + inside(Collective::all_gather, full);
      break;
    case Collective::broadcast:
      // Scatter in the root's group (costed as a reduce-scatter: same bytes), broadcast 1/k of
      // the buffer on each rail, all-gather in every group.
      across = ring_terms(Collective::broadcast, m, s / k);
      t = inside(Collective::reduce_scatter, full) + time_on(outer, across) +
          inside(Collective::all_gather, full);
      break;
    case Collective::all_to_all: {
      // Traffic to the rank's own group (k_i / n of the buffer) and to other groups ((n - k) / n)
      // use different links and overlap. Messages to one remote group go out together: m - 1
      // latency steps.
      across = {static_cast<double>(m - 1), (n - k) / n * s};
      t = std::max(inside(Collective::all_to_all,
                          [&](size_t ki) { return s * static_cast<double>(ki) / n; }),
                   time_on(outer, across));
      break;
    }
    case Collective::send_recv:
      return estimate(c, level, CommAlgorithm::ring, ring_terms(op, 2, s));
    case Collective::barrier:
      return estimate(c, level, CommAlgorithm::ring, ring_terms(op, static_cast<int64_t>(ranks.size()), s));
  }
  return {t, CommAlgorithm::hierarchical, level, across.bus};
}

// `ranks` are distinct and in range; `s` > 0.
CommEstimate cost(const ClusterSpec& c, Collective op, double s, std::span<const int64_t> ranks,
                  CommAlgorithm alg) {
  const int level = c.level_spanned(ranks);
  const auto n = static_cast<int64_t>(ranks.size());
  if (n <= 1 || s == 0)
    return {0, alg == CommAlgorithm::best ? CommAlgorithm::ring : alg, level, 0};
  if (op == Collective::send_recv)
    return estimate(c, level, CommAlgorithm::ring, ring_terms(op, n, s));
  switch (alg) {
    case CommAlgorithm::ring:
      return estimate(c, level, alg, ring_terms(op, n, s));
    case CommAlgorithm::tree:
      return estimate(c, level, alg, tree_terms(op, n, s));
    case CommAlgorithm::hierarchical:
      if (level == 0) return estimate(c, level, CommAlgorithm::ring, ring_terms(op, n, s));
      return hierarchical(c, op, s, ranks, level);
    case CommAlgorithm::best:
      break;
  }
  // Ties go to the first: ring, then tree, then hierarchical.
  CommEstimate best = estimate(c, level, CommAlgorithm::ring, ring_terms(op, n, s));
  if (tree_models(op)) {
    CommEstimate e = estimate(c, level, CommAlgorithm::tree, tree_terms(op, n, s));
    if (e.seconds < best.seconds) best = e;
  }
  if (level > 0) {
    CommEstimate e = hierarchical(c, op, s, ranks, level);
    if (e.seconds < best.seconds) best = e;
  }
  return best;
}

}  // namespace

std::string_view algorithm_name(CommAlgorithm alg) {
  return kAlgorithmNames.at(static_cast<size_t>(alg));
}

CommEstimate collective_time(const ClusterSpec& c, Collective op, double bytes,
                             std::span<const int64_t> ranks, CommAlgorithm alg) {
  auto what = [&] { return std::string(collective_name(op)) + " on cluster '" + c.name + "'"; };  // for errors only
  if (ranks.empty()) throw Error(what() + ": no ranks given");
  if (!(bytes >= 0) || !std::isfinite(bytes))
    throw Error(what() + ": bytes must be a finite number >= 0 (got " + std::to_string(bytes) + ")");
  if (op == Collective::send_recv && ranks.size() > 2)
    throw Error(what() + ": send_recv takes two ranks, sender and receiver (got " +
                std::to_string(ranks.size()) + ")");
  if (alg == CommAlgorithm::tree && !tree_models(op) && op != Collective::send_recv)
    throw Error(what() + ": the tree algorithm is modelled for all_reduce and broadcast only; use " +
                "ring, hierarchical or best");
  for (int64_t r : ranks)
    if (r < 0 || r >= c.num_devices)
      throw Error(what() + ": rank " + std::to_string(r) + " is outside [0, " +
                  std::to_string(c.num_devices) + ")");
  // Groups are small and usually ascending (mesh groups): check for repeats without sorting.
  for (size_t i = 1; i < ranks.size(); ++i)
    if (ranks[i] <= ranks[i - 1])
      for (size_t j = 0; j < i; ++j)
        if (ranks[j] == ranks[i]) throw Error(what() + ": rank " + std::to_string(ranks[i]) + " is listed more than once");
  return cost(c, op, bytes, ranks, alg);
}

}  // namespace tessel::planner
