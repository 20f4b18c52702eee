// The collective cost model: hand-checked alpha-beta times on the A100 preset, the algorithm
// each regime picks, degenerate and bad inputs, and a sweep over awkward world sizes and
// message sizes.
#include "planner/comm_cost.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "graph/error.h"

namespace tessel::planner {
namespace {

constexpr double kGiB = 1024.0 * 1024 * 1024;

std::vector<int64_t> iota_ranks(int64_t n, int64_t first = 0, int64_t stride = 1) {
  std::vector<int64_t> r;
  for (int64_t i = 0; i < n; ++i) r.push_back(first + i * stride);
  return r;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CommCost, Names) {
  EXPECT_EQ(collective_name(Collective::all_reduce), "all_reduce");
  EXPECT_EQ(collective_name(Collective::send_recv), "send_recv");
  EXPECT_EQ(algorithm_name(CommAlgorithm::hierarchical), "hierarchical");
  EXPECT_EQ(algorithm_name(CommAlgorithm::best), "best");
}

// 1 GiB ring all-reduce on the 8 GPUs of one A100 node: 2(n-1)/n x S over NVLink's 300 GB/s
// per direction, plus 2(n-1) = 14 latency steps.
TEST(CommCost, RingAllReduceOneA100NodeByHand) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=1");
  ASSERT_EQ(c.levels[0].bandwidth, 300e9);  // NVLink 3: 600 GB/s total = 300 GB/s per direction
  const double lat = c.levels[0].latency_s;
  CommEstimate e =
      collective_time(c, Collective::all_reduce, kGiB, iota_ranks(8), CommAlgorithm::ring);
  EXPECT_DOUBLE_EQ(e.seconds, 2.0 * 7 / 8 * kGiB / 300e9 + 14 * lat);
  EXPECT_EQ(e.algorithm, CommAlgorithm::ring);
  EXPECT_EQ(e.level, 0);
  EXPECT_DOUBLE_EQ(e.bus_bytes, 2.0 * 7 / 8 * kGiB);
  // Large messages: the ring is bandwidth-optimal, so `best` keeps it.
  EXPECT_EQ(collective_time(c, Collective::all_reduce, kGiB, iota_ranks(8)).algorithm,
            CommAlgorithm::ring);
}

TEST(CommCost, RingReduceScatterAllGatherByHand) {
  ClusterSpec c = parse_cluster("h100-80g:nodes=1");
  const LinkLevel& nv = c.levels[0];
  for (Collective op : {Collective::reduce_scatter, Collective::all_gather}) {
    CommEstimate e = collective_time(c, op, kGiB, iota_ranks(8), CommAlgorithm::ring);
    EXPECT_DOUBLE_EQ(e.seconds, 7.0 / 8 * kGiB / nv.bandwidth + 7 * nv.latency_s);
    EXPECT_DOUBLE_EQ(e.bus_bytes, 7.0 / 8 * kGiB);
  }
  // 3 ranks, not a power of two.
  CommEstimate e = collective_time(c, Collective::all_reduce, 3e6, std::vector<int64_t>{1, 4, 6},
                                   CommAlgorithm::ring);
  EXPECT_DOUBLE_EQ(e.seconds, 2.0 * 2 / 3 * 3e6 / nv.bandwidth + 4 * nv.latency_s);
}

TEST(CommCost, FlatRingAcrossNodesIsLimitedByInfiniBand) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=2");
  const LinkLevel& ib = c.levels[1];
  ASSERT_EQ(ib.bandwidth, 25e9);  // HDR 200 Gb/s per GPU
  CommEstimate e =
      collective_time(c, Collective::all_reduce, kGiB, iota_ranks(16), CommAlgorithm::ring);
  EXPECT_EQ(e.level, 1);
  EXPECT_DOUBLE_EQ(e.seconds, 2.0 * 15 / 16 * kGiB / ib.bandwidth + 30 * ib.latency_s);
  // Far slower than a ring of the same size at NVLink speed would be.
  EXPECT_GT(e.seconds, 10 * (2.0 * 15 / 16 * kGiB / c.levels[0].bandwidth));
}

TEST(CommCost, HierarchicalBeatsFlatRingAcrossNodes) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=2");
  const LinkLevel &nv = c.levels[0], &ib = c.levels[1];
  const auto ranks = iota_ranks(16);
  CommEstimate ring = collective_time(c, Collective::all_reduce, kGiB, ranks, CommAlgorithm::ring);
  CommEstimate hier =
      collective_time(c, Collective::all_reduce, kGiB, ranks, CommAlgorithm::hierarchical);
  // Reduce-scatter in the node, all-reduce of S/8 across the 2 nodes on 8 rails, all-gather.
  const double in_node = 7.0 / 8 * kGiB / nv.bandwidth + 7 * nv.latency_s;
  const double across = 2.0 * 1 / 2 * (kGiB / 8) / ib.bandwidth + 2 * ib.latency_s;
  EXPECT_DOUBLE_EQ(hier.seconds, in_node + across + in_node);
  EXPECT_EQ(hier.algorithm, CommAlgorithm::hierarchical);
  EXPECT_EQ(hier.level, 1);
  EXPECT_DOUBLE_EQ(hier.bus_bytes, kGiB / 8);
  EXPECT_LT(hier.seconds, ring.seconds);
  EXPECT_EQ(collective_time(c, Collective::all_reduce, kGiB, ranks).algorithm,
            CommAlgorithm::hierarchical);
  for (Collective op : {Collective::reduce_scatter, Collective::all_gather, Collective::broadcast,
                        Collective::all_to_all}) {
    SCOPED_TRACE(collective_name(op));
    EXPECT_LT(collective_time(c, op, kGiB, ranks, CommAlgorithm::hierarchical).seconds,
              collective_time(c, op, kGiB, ranks, CommAlgorithm::ring).seconds);
  }
}

TEST(CommCost, TreeBeatsRingForTinyMessages) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=1");
  const LinkLevel& nv = c.levels[0];
  const auto ranks = iota_ranks(8);
  CommEstimate tree = collective_time(c, Collective::all_reduce, 8, ranks, CommAlgorithm::tree);
  CommEstimate ring = collective_time(c, Collective::all_reduce, 8, ranks, CommAlgorithm::ring);
  EXPECT_DOUBLE_EQ(tree.seconds, 2 * 3 * nv.latency_s + 2 * 8 / nv.bandwidth);  // 2 log2(8) steps
  EXPECT_LT(tree.seconds, ring.seconds);
  EXPECT_EQ(collective_time(c, Collective::all_reduce, 8, ranks).algorithm, CommAlgorithm::tree);
  // ... and loses for large ones (2 S per rank against 2(n-1)/n S).
  EXPECT_GT(collective_time(c, Collective::all_reduce, kGiB, ranks, CommAlgorithm::tree).seconds,
            collective_time(c, Collective::all_reduce, kGiB, ranks, CommAlgorithm::ring).seconds);
}

TEST(CommCost, SendRecvUsesTheSharedLevel) {
  ClusterSpec c = parse_cluster("h100-80g:nodes=2");
  const LinkLevel &nv = c.levels[0], &ib = c.levels[1];
  CommEstimate in_node = collective_time(c, Collective::send_recv, 1e8, std::vector<int64_t>{2, 5});
  EXPECT_EQ(in_node.level, 0);
  EXPECT_DOUBLE_EQ(in_node.seconds, nv.latency_s + 1e8 / nv.bandwidth);
  CommEstimate across = collective_time(c, Collective::send_recv, 1e8, std::vector<int64_t>{5, 13},
                                        CommAlgorithm::tree);  // one transfer, whatever alg
  EXPECT_EQ(across.level, 1);
  EXPECT_DOUBLE_EQ(across.seconds, ib.latency_s + 1e8 / ib.bandwidth);
  EXPECT_DOUBLE_EQ(across.bus_bytes, 1e8);
}

TEST(CommCost, DegenerateCasesCostNothing) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=2");
  for (int op = 0; op < kNumCollectives; ++op) {
    auto col = static_cast<Collective>(op);
    SCOPED_TRACE(collective_name(col));
    CommEstimate one = collective_time(c, col, kGiB, std::vector<int64_t>{3});
    EXPECT_EQ(one.seconds, 0);
    EXPECT_EQ(one.level, -1);
    CommEstimate empty = collective_time(c, col, 0, std::vector<int64_t>{0, 9});
    EXPECT_EQ(empty.seconds, 0);
    EXPECT_EQ(empty.level, 1);
  }
}

TEST(CommCost, BadInputsThrow) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=2");
  struct Case {
    Collective op;
    double bytes;
    std::vector<int64_t> ranks;
    CommAlgorithm alg;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {Collective::all_reduce,
       1e6,
       {0, 3, 3},
       CommAlgorithm::best,
       "rank 3 is listed more than once"},
      {Collective::all_gather, 1e6, {2, 2}, CommAlgorithm::ring, "rank 2 is listed more than once"},
      {Collective::all_reduce, 1e6, {}, CommAlgorithm::best, "no ranks given"},
      {Collective::all_reduce, 1e6, {0, 16}, CommAlgorithm::best, "rank 16 is outside [0, 16)"},
      {Collective::broadcast, 1e6, {-1, 0}, CommAlgorithm::best, "rank -1 is outside"},
      {Collective::all_reduce, -1, {0, 1}, CommAlgorithm::best, "bytes must be a finite number"},
      {Collective::all_reduce, NAN, {0, 1}, CommAlgorithm::best, "bytes must be a finite number"},
      {Collective::all_reduce, INFINITY, {0, 1}, CommAlgorithm::best, "bytes must be"},
      {Collective::send_recv, 1e6, {0, 1, 2}, CommAlgorithm::best, "send_recv takes two ranks"},
      {Collective::all_gather, 1e6, {0, 1}, CommAlgorithm::tree, "tree algorithm is modelled for"},
  };
  for (const Case& k : cases) {
    std::string e = error_of([&] { collective_time(c, k.op, k.bytes, k.ranks, k.alg); });
    EXPECT_NE(e.find(k.expect), std::string::npos) << "expected '" << k.expect << "' in: " << e;
    EXPECT_NE(e.find(collective_name(k.op)), std::string::npos) << e;
  }
}

// Every world size 1..16 on two A100 nodes (contiguous and strided rank sets), message sizes
// from empty to a GiB: times are finite and non-negative, grow with the message, `best` is
// no slower than any algorithm that applies, and hierarchical inside one node is the ring.
TEST(CommCost, SweepWorldSizesAndMessageSizes) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=2");
  const std::vector<double> sizes = {0, 4, 100, 1000, 10000, 1e6, kGiB};
  for (int64_t n = 1; n <= 16; ++n) {
    std::vector<std::vector<int64_t>> sets = {iota_ranks(n)};
    if (n <= 8) sets.push_back(iota_ranks(n, 16 - n, 1));  // the end of node 1
    if (n <= 8) sets.push_back(iota_ranks(n, 1, 2));       // strided
    if (n >= 2 && n <= 16 && 16 % n == 0) sets.push_back(iota_ranks(n, 0, 16 / n));
    for (const auto& ranks : sets) {
      for (int op = 0; op < kNumCollectives; ++op) {
        auto col = static_cast<Collective>(op);
        if (col == Collective::send_recv && n > 2) continue;
        double prev_best = -1;
        for (double bytes : sizes) {
          SCOPED_TRACE(std::string(collective_name(col)) + " n=" + std::to_string(n) +
                       " first=" + std::to_string(ranks[0]) + " bytes=" + std::to_string(bytes));
          CommEstimate best = collective_time(c, col, bytes, ranks);
          EXPECT_TRUE(std::isfinite(best.seconds));
          EXPECT_GE(best.seconds, 0);
          EXPECT_GE(best.seconds, prev_best);
          EXPECT_NE(best.algorithm, CommAlgorithm::best);
          EXPECT_EQ(best.level, c.level_spanned(ranks));
          prev_best = best.seconds;
          for (CommAlgorithm alg :
               {CommAlgorithm::ring, CommAlgorithm::tree, CommAlgorithm::hierarchical}) {
            if (alg == CommAlgorithm::tree && col != Collective::all_reduce &&
                col != Collective::broadcast && col != Collective::send_recv)
              continue;
            CommEstimate e = collective_time(c, col, bytes, ranks, alg);
            EXPECT_TRUE(std::isfinite(e.seconds));
            EXPECT_LE(best.seconds, e.seconds) << algorithm_name(alg);
          }
          if (best.level == 0) {
            EXPECT_EQ(collective_time(c, col, bytes, ranks, CommAlgorithm::hierarchical).seconds,
                      collective_time(c, col, bytes, ranks, CommAlgorithm::ring).seconds);
          }
        }
      }
    }
  }
}

// A three-level hierarchy (2 GPUs per board, 8 per node, 32 in all): hierarchical recurses.
TEST(CommCost, ThreeLevels) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=4");
  c.name = "three-level";
  c.levels = {{"board", 2, 400e9, 1e-6}, {"node", 8, 200e9, 2e-6}, {"net", 32, 20e9, 5e-6}};
  ASSERT_NO_THROW(validate(c));
  const auto all = iota_ranks(32);
  CommEstimate hier =
      collective_time(c, Collective::all_reduce, kGiB, all, CommAlgorithm::hierarchical);
  CommEstimate ring = collective_time(c, Collective::all_reduce, kGiB, all, CommAlgorithm::ring);
  EXPECT_EQ(hier.level, 2);
  EXPECT_LT(hier.seconds, ring.seconds);
  // In-node phases are themselves hierarchical over the board level.
  const auto node = iota_ranks(8);
  const double rs_node =
      collective_time(c, Collective::reduce_scatter, kGiB, node, CommAlgorithm::hierarchical)
          .seconds;
  const double across = 2.0 * 3 / 4 * (kGiB / 8) / 20e9 + 6 * 5e-6;
  EXPECT_DOUBLE_EQ(hier.seconds, 2 * rs_node + across);
  // That in-node reduce-scatter: boards first (1 step over 2), then 4 boards on 2 rails.
  EXPECT_DOUBLE_EQ(rs_node, (0.5 * kGiB / 400e9 + 1e-6) + (0.75 * kGiB / 2 / 200e9 + 3 * 2e-6));
}

TEST(CommCost, LocalClusterUsesMemoryCopies) {
  ClusterSpec c = local_cluster(4, [] {
    HostInfo h;
    h.logical_cpus = 4;
    h.clock_hz = 2e9;
    h.clock_measured = true;
    h.avx2 = h.fma = true;
    h.ram_bytes = 16e9;
    return h;
  }());
  CommEstimate e =
      collective_time(c, Collective::all_reduce, 1e6, iota_ranks(4), CommAlgorithm::ring);
  EXPECT_EQ(e.level, 0);
  EXPECT_DOUBLE_EQ(e.seconds, 2.0 * 3 / 4 * 1e6 / (20e9 / 2 / 4) + 6 * 5e-6);
}

}  // namespace
}  // namespace tessel::planner
