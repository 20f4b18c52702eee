// The communicator contract, run against every engine (in-process threads, and Gloo with
// each rank its own endpoint over loopback TCP, as threads of this process): every
// collective against naive loops over the members' data on groups of 1, 2, 3, 4, 6 and 8
// (sizes that do not divide evenly included), element counts from 0 to 10^6, sub-groups used
// concurrently, point-to-point order; and the failure paths: timeouts, desynchronised groups
// (in-process), bad shapes, and abort stopping everyone.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <thread>

#include "graph/error.h"
#include "runtime/gloo_comm.h"
#include "runtime/inprocess_comm.h"

namespace tessel::runtime {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

// Runs fn on every rank of a world of `engine` in its own thread; returns each rank's error
// ("" if none). Gloo endpoints are made on their rank's thread (making one waits for the
// others) and live until every rank is done (a finished rank still serves the others).
std::vector<std::string> on_ranks(const std::string& engine, int64_t n, const std::function<void(Communicator&)>& fn,
                                  CommOptions o = {}) {
  std::vector<std::string> err(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  if (engine == "inprocess") {
    InProcessWorld world(n, o);
    for (int64_t r = 0; r < n; ++r)
      threads.emplace_back([&, r] {
        try {
          fn(world.rank(r));
        } catch (const std::exception& e) {
          err[static_cast<size_t>(r)] = e.what();
        }
      });
    for (auto& t : threads) t.join();
    return err;
  }
  auto rdv = gloo_memory_rendezvous();
  std::vector<std::unique_ptr<Communicator>> comms(static_cast<size_t>(n));
  GlooOptions go;
  go.timeout_s = o.timeout_s;
  for (int64_t r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        comms[static_cast<size_t>(r)] = gloo_communicator(r, n, rdv, go);
        fn(*comms[static_cast<size_t>(r)]);
      } catch (const std::exception& e) {
        err[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return err;
}

class Comm : public ::testing::TestWithParam<std::string> {
 protected:
  std::vector<std::string> on_ranks(int64_t n, const std::function<void(Communicator&)>& fn, CommOptions o = {}) {
    return runtime::on_ranks(GetParam(), n, fn, o);
  }
};

struct Buf {
  std::vector<int64_t> shape;
  std::vector<float> v;
  Buf(std::vector<int64_t> s, float fill = 0) : shape(std::move(s)), v(static_cast<size_t>(numel_of(shape)), fill) {}
  static int64_t numel_of(const std::vector<int64_t>& s) {
    return std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<>());
  }
  TensorRef ref() { return TensorRef{v.data(), DType::f32, shape, static_cast<int64_t>(v.size())}; }
};

// Member r's input value at flat index i: distinct per member and element.
float value(int64_t r, int64_t i) { return static_cast<float>(r * 1000 + i % 997) * 0.5f - 3.f; }

std::vector<int64_t> all_of(int64_t n) {
  std::vector<int64_t> g(static_cast<size_t>(n));
  std::iota(g.begin(), g.end(), 0);
  return g;
}

TEST_P(Comm, AllReduceOfABucketMatchesNaiveSumsMeansAndMaxima) {
  for (int64_t n : {1, 2, 3, 4, 8})
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max})
      for (bool in_place : {false, true}) {
        SCOPED_TRACE(std::to_string(n) + " ranks " + std::string(reduce_op_name(op)) + (in_place ? " in place" : ""));
        const std::vector<int64_t> sizes{7, 0, 1, 4099, 13};  // a bucket: odd sizes, an empty one
        std::vector<std::vector<Buf>> got(static_cast<size_t>(n));
        auto err = on_ranks(n, [&](Communicator& c) {
          auto& mine = got[static_cast<size_t>(c.rank())];
          std::vector<Buf> in;
          for (int64_t s : sizes) {
            in.emplace_back(std::vector<int64_t>{s});
            for (int64_t i = 0; i < s; ++i) in.back().v[static_cast<size_t>(i)] = value(c.rank(), i + s);
          }
          for (int64_t s : sizes) mine.emplace_back(std::vector<int64_t>{s});
          std::vector<TensorRef> ri, ro;
          for (auto& b : in) ri.push_back(b.ref());
          for (auto& b : mine) ro.push_back(b.ref());
          const auto g = all_of(n);
          c.all_reduce(ri, in_place ? ri : ro, op, g);
          if (in_place) mine = in;
        });
        for (auto& e : err) ASSERT_EQ(e, "");
        for (size_t s = 0; s < sizes.size(); ++s)
          for (int64_t i = 0; i < sizes[s]; ++i) {
            float want = op == ReduceOp::max ? -1e30f : 0.f;
            for (int64_t r = 0; r < n; ++r)
              want = op == ReduceOp::max ? std::max(want, value(r, i + sizes[s])) : want + value(r, i + sizes[s]);
            if (op == ReduceOp::mean) want /= static_cast<float>(n);
            for (int64_t r = 0; r < n; ++r)
              ASSERT_FLOAT_EQ(got[static_cast<size_t>(r)][s].v[static_cast<size_t>(i)], want) << "rank " << r << " tensor " << s << " [" << i << "]";
          }
      }
}

TEST_P(Comm, ReduceScatterAllGatherAllToAllAndBroadcastMatchNaiveLoops) {
  const std::vector<int64_t> shape{2, 6, 5};
  auto at = [&](int64_t a, int64_t b, int64_t c, const std::vector<int64_t>& s) { return (a * s[1] + b) * s[2] + c; };
  for (int64_t n : {1, 2, 3, 6}) {
    SCOPED_TRACE(std::to_string(n) + " ranks");
    std::vector<Buf> rs, ag, a2a, bc;
    for (int64_t r = 0; r < n; ++r) {
      rs.emplace_back(std::vector<int64_t>{2, 6 / n, 5});
      ag.emplace_back(std::vector<int64_t>{2, 6 * n, 5});
      a2a.emplace_back(std::vector<int64_t>{2 * n, 6 / n, 5});
      bc.emplace_back(shape);
    }
    auto err = on_ranks(n, [&](Communicator& c) {
      Buf in(shape);
      for (size_t i = 0; i < in.v.size(); ++i) in.v[i] = value(c.rank(), static_cast<int64_t>(i));
      const auto g = all_of(n);
      const size_t r = static_cast<size_t>(c.rank());
      c.reduce_scatter(in.ref(), rs[r].ref(), 1, ReduceOp::sum, g);
      c.all_gather(in.ref(), ag[r].ref(), 1, g);
      c.all_to_all(in.ref(), a2a[r].ref(), 1, 0, g);
      c.broadcast(in.ref(), bc[r].ref(), n - 1, g);
      c.barrier(g);
    });
    for (auto& e : err) ASSERT_EQ(e, "");
    const int64_t part = 6 / n;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t a = 0; a < 2; ++a)
        for (int64_t c = 0; c < 5; ++c) {
          for (int64_t b = 0; b < part; ++b) {
            float sum = 0;
            for (int64_t q = 0; q < n; ++q) sum += value(q, at(a, r * part + b, c, shape));
            EXPECT_FLOAT_EQ(rs[r].v[at(a, b, c, rs[r].shape)], sum);
            for (int64_t q = 0; q < n; ++q)  // slice r of member q's dim 1, stacked along dim 0
              EXPECT_EQ(a2a[r].v[at(q * 2 + a, b, c, a2a[r].shape)], value(q, at(a, r * part + b, c, shape)));
          }
          for (int64_t q = 0; q < n; ++q)
            for (int64_t b = 0; b < 6; ++b) EXPECT_EQ(ag[r].v[at(a, q * 6 + b, c, ag[r].shape)], value(q, at(a, b, c, shape)));
          for (int64_t b = 0; b < 6; ++b) EXPECT_EQ(bc[r].v[at(a, b, c, shape)], value(n - 1, at(a, b, c, shape)));
        }
  }
}

TEST_P(Comm, SubGroupsOfAMeshWorkConcurrentlyAndPointToPointKeepsOrder) {
  // A 2 x 2 mesh: dp groups {0,2} {1,3}, tp groups {0,1} {2,3}; many calls interleaved.
  std::vector<float> dp_sum(4), tp_sum(4), got_msgs(4, 0);
  auto err = on_ranks(4, [&](Communicator& c) {
    const int64_t r = c.rank();
    const std::vector<int64_t> dp{r % 2, r % 2 + 2}, tp{r / 2 * 2, r / 2 * 2 + 1};
    float acc_dp = 0, acc_tp = 0;
    for (int i = 0; i < 200; ++i) {
      Buf x({3}, static_cast<float>(r + i)), y({3});
      c.all_reduce(x.ref(), y.ref(), ReduceOp::sum, tp);
      acc_tp += y.v[2];
      c.all_reduce(y.ref(), x.ref(), ReduceOp::sum, dp);
      acc_dp += x.v[0];
    }
    dp_sum[static_cast<size_t>(r)] = acc_dp;
    tp_sum[static_cast<size_t>(r)] = acc_tp;
    // Pipeline-style messages: stage pair (r, r ^ 2), two tags, order kept per tag.
    const int64_t peer = r ^ 2;
    for (int i = 0; i < 50; ++i) {
      Buf m({2}, static_cast<float>(i));
      c.send(m.ref(), peer, 1);
      m.v[0] = -static_cast<float>(i);
      c.send(m.ref(), peer, 2);
    }
    for (int i = 0; i < 50; ++i) {
      Buf a({2}), b({2});
      c.recv(b.ref(), peer, 2);
      c.recv(a.ref(), peer, 1);
      if (a.v[0] == static_cast<float>(i) && b.v[0] == -static_cast<float>(i)) got_msgs[static_cast<size_t>(r)]++;
    }
  });
  for (auto& e : err) ASSERT_EQ(e, "");
  for (int64_t r = 0; r < 4; ++r) {
    // sum_i over tp pair of (r + i), then over the dp pair of that.
    float tp_want = 0, dp_want = 0;
    for (int i = 0; i < 200; ++i) {
      const int64_t a = r / 2 * 2;
      tp_want += static_cast<float>(a + i + a + 1 + i);
      dp_want += static_cast<float>(4 * i + 6);
    }
    EXPECT_FLOAT_EQ(tp_sum[static_cast<size_t>(r)], tp_want);
    EXPECT_FLOAT_EQ(dp_sum[static_cast<size_t>(r)], dp_want);
    EXPECT_EQ(got_msgs[static_cast<size_t>(r)], 50);
  }
}

TEST(InProcessComm, ATimeoutNamesTheRanksThatNeverArrivedAndStopsTheOthers) {
  CommOptions o;
  o.timeout_s = 0.3;
  const auto t0 = std::chrono::steady_clock::now();
  auto err = on_ranks("inprocess", 3, [&](Communicator& c) {
    Buf x({4}, 1.f);
    if (c.rank() == 0) c.all_reduce(x.ref(), x.ref(), ReduceOp::sum, std::vector<int64_t>{0, 1, 2});
    if (c.rank() == 1) c.recv(x.ref(), 2, 9);  // rank 2 sends nothing
  }, o);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  // Whichever wait expires first names what it waited for; the other is stopped with that message.
  const std::string all = err[0] + "\n" + err[1];
  EXPECT_THAT(all, AnyOf(HasSubstr("ranks 1, 2 never arrived"), HasSubstr("rank 2 sent nothing")));
  EXPECT_THAT(all, HasSubstr("timed out after 0.3 s"));
  EXPECT_NE(err[0], "");
  EXPECT_NE(err[1], "");
  EXPECT_EQ(err[2], "");
}

TEST(InProcessComm, DesynchronisedGroupsAndBadShapesAreReportedNotHung) {
  auto err = on_ranks("inprocess", 2, [&](Communicator& c) {
    Buf x({4, 2}, 1.f), y({8, 2});
    const std::vector<int64_t> g{0, 1};
    if (c.rank() == 0) c.all_reduce(x.ref(), x.ref(), ReduceOp::sum, g);
    else c.all_gather(x.ref(), y.ref(), 0, g);
  });
  EXPECT_THAT(err[0], HasSubstr("desynchronised group [0,1]: rank 0 calls all_reduce of f32[4,2] (sum), rank 1 calls all_gather of f32[4,2] dim 0"));
  EXPECT_EQ(err[0], err[1]);

  err = on_ranks("inprocess", 2, [&](Communicator& c) {
    Buf x({5}, 1.f), y({2});
    c.reduce_scatter(x.ref(), y.ref(), 0, ReduceOp::sum, std::vector<int64_t>{0, 1});
  });
  EXPECT_THAT(err[0] + err[1], HasSubstr("dim 0 of [5] does not split over 2 ranks"));

  err = on_ranks("inprocess", 2, [&](Communicator& c) {
    Buf x({4}, 1.f);
    if (c.rank() == 0) c.send(x.ref(), 1, 3);
    else {
      Buf y({3});
      c.recv(y.ref(), 0, 3);
    }
  });
  EXPECT_THAT(err[1], HasSubstr("rank 1: recv from rank 0 (tag 3): rank 0 sent 16 bytes, f32[3] needs 12"));
}

TEST(InProcessComm, AbortStopsEveryRankWithTheReason) {
  auto err = on_ranks("inprocess", 3, [&](Communicator& c) {
    Buf x({4}, 1.f);
    if (c.rank() == 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      c.abort("rank 2 failed: out of memory in fc1/matmul");
      return;
    }
    if (c.rank() == 0) c.recv(x.ref(), 2, 0);
    else c.all_reduce(x.ref(), x.ref(), ReduceOp::sum, std::vector<int64_t>{1, 2});
  });
  EXPECT_THAT(err[0], HasSubstr("rank 0: recv from rank 2 (tag 0) stopped: rank 2 failed: out of memory in fc1/matmul"));
  EXPECT_THAT(err[1], HasSubstr("stopped: rank 2 failed"));
}

TEST_P(Comm, ElementCountsFromNoneToAMillion) {
  for (int64_t n : {2, 3})
    for (int64_t count : {0, 1, 4, 100, 1000, 1000000}) {
      SCOPED_TRACE(std::to_string(n) + " ranks, " + std::to_string(count) + " elements");
      std::vector<std::string> bad(static_cast<size_t>(n));
      auto err = on_ranks(n, [&](Communicator& c) {
        const int64_t r = c.rank();
        const auto g = all_of(n);
        Buf x({count}), sum({count}), gathered({count * n}), scattered({count}), whole({count * n});
        for (int64_t i = 0; i < count; ++i) x.v[static_cast<size_t>(i)] = value(r, i);
        c.all_reduce(x.ref(), sum.ref(), ReduceOp::sum, g);
        c.all_gather(x.ref(), gathered.ref(), 0, g);
        for (int64_t i = 0; i < count * n; ++i) whole.v[static_cast<size_t>(i)] = value(r, i);
        c.reduce_scatter(whole.ref(), scattered.ref(), 0, ReduceOp::sum, g);
        std::string& b = bad[static_cast<size_t>(r)];
        for (int64_t i = 0; i < count && b.empty(); ++i) {
          float want = 0;
          for (int64_t q = 0; q < n; ++q) want += value(q, i);
          if (sum.v[static_cast<size_t>(i)] != want) b = "all_reduce [" + std::to_string(i) + "]";
          float rs = 0;
          for (int64_t q = 0; q < n; ++q) rs += value(q, r * count + i);
          if (scattered.v[static_cast<size_t>(i)] != rs) b = "reduce_scatter [" + std::to_string(i) + "]";
        }
        for (int64_t i = 0; i < count * n && b.empty(); ++i)
          if (gathered.v[static_cast<size_t>(i)] != value(i / count, i % count)) b = "all_gather [" + std::to_string(i) + "]";
      });
      for (int64_t r = 0; r < n; ++r) {
        EXPECT_EQ(err[static_cast<size_t>(r)], "") << "rank " << r;
        EXPECT_EQ(bad[static_cast<size_t>(r)], "") << "rank " << r << " got a wrong value";
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Engines, Comm, ::testing::Values("inprocess", "gloo"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// Gloo's failure paths: a call that never completes fails within its timeout on the rank
// that made it, and stops the rank waiting on it with the reason; an abort reaches a rank
// blocked on the aborting one through the rendezvous store; bad shapes are refused before
// anything moves.
// Groups made before the first step (connect_groups, as Executor calls it: each rank its
// own groups, in lexicographic order) serve the collectives after; a member that never comes
// to make one fails the others within the timeout, naming the group.
TEST_P(Comm, GroupsConnectedUpFrontServeTheCollectives) {
  const std::vector<std::vector<std::vector<int64_t>>> mine = {
      {{0, 1}, {0, 1, 2, 3}, {0, 2}}, {{0, 1}, {0, 1, 2, 3}, {1, 3}}, {{0, 1, 2, 3}, {0, 2}, {2, 3}},
      {{0, 1, 2, 3}, {1, 3}, {2, 3}}};
  auto err = on_ranks(4, [&](Communicator& c) {
    const auto& groups = mine[static_cast<size_t>(c.rank())];
    c.connect_groups(groups);
    for (const auto& g : groups) {
      Buf b({3}, static_cast<float>(c.rank() + 1));
      c.all_reduce(b.ref(), b.ref(), ReduceOp::sum, g);
      float want = 0;
      for (int64_t r : g) want += static_cast<float>(r + 1);
      EXPECT_EQ(b.v[2], want) << "group of " << g.size() << " on rank " << c.rank();
    }
  });
  for (auto& e : err) EXPECT_EQ(e, "");
}

TEST(GlooComm, AMemberThatNeverConnectsItsGroupIsNamedWithinTheTimeout) {
  CommOptions o;
  o.timeout_s = 2;
  const auto t0 = std::chrono::steady_clock::now();
  auto err = on_ranks("gloo", 3, [&](Communicator& c) {
    if (c.rank() == 2) return;  // never makes the group [1,2]
    const std::vector<std::vector<int64_t>> g = {{c.rank(), 2}};
    c.connect_groups(g);
  }, o);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_THAT(err[0], HasSubstr("[0,2]"));
  EXPECT_THAT(err[0], HasSubstr("rank 2 never arrived"));
  EXPECT_LT(s, 15);
}

// Members that call different collectives on one group (another shape, dtype, op or order)
// are stopped before any data moves, each error naming what every member called.
TEST(GlooComm, MismatchedCollectivesAreCaughtBeforeDataMovesNamingBothSides) {
  struct Mismatch {
    const char* what;
    std::function<void(Communicator&, Buf&)> call;  // rank 1 makes a different call than rank 0
    const char* rank1_says;
  };
  const std::vector<Mismatch> cases = {
      {"shape", [](Communicator& c, Buf&) {
         Buf b(c.rank() == 0 ? std::vector<int64_t>{4} : std::vector<int64_t>{8}, 1);
         c.all_reduce(b.ref(), b.ref(), ReduceOp::sum, std::vector<int64_t>{0, 1});
       }, "all_reduce (sum) of f32[8]"},
      {"op", [](Communicator& c, Buf& b) {
         if (c.rank() == 0) c.all_reduce(b.ref(), b.ref(), ReduceOp::sum, std::vector<int64_t>{0, 1});
         else c.broadcast(b.ref(), b.ref(), 0, std::vector<int64_t>{0, 1});
       }, "broadcast from member 0 of f32[4]"},
      {"reduction", [](Communicator& c, Buf& b) {
         c.all_reduce(b.ref(), b.ref(), c.rank() == 0 ? ReduceOp::sum : ReduceOp::max, std::vector<int64_t>{0, 1});
       }, "all_reduce (max) of f32[4]"},
      {"empty against full", [](Communicator& c, Buf&) {
         Buf b(c.rank() == 0 ? std::vector<int64_t>{0} : std::vector<int64_t>{3}, 1);
         c.all_reduce(b.ref(), b.ref(), ReduceOp::sum, std::vector<int64_t>{0, 1});
       }, "all_reduce (sum) of f32[3]"},
  };
  for (const Mismatch& m : cases) {
    CommOptions o;
    o.timeout_s = 10;
    Buf canary({4}, 7);
    auto err = on_ranks("gloo", 2, [&](Communicator& c) {
      Buf b({4}, static_cast<float>(c.rank() + 1));
      c.all_reduce(b.ref(), b.ref(), ReduceOp::sum, std::vector<int64_t>{0, 1});  // one call that agrees
      Buf mine({4}, 7);
      m.call(c, mine);
      if (c.rank() == 0) canary = mine;
    }, o);
    for (int r = 0; r < 2; ++r) {
      EXPECT_THAT(err[r], HasSubstr("caught before any data moved")) << m.what;
      EXPECT_THAT(err[r], HasSubstr("rank 1 calls " + std::string(m.rank1_says))) << m.what << ": " << err[r];
      EXPECT_THAT(err[r], HasSubstr("rank 0 calls all_reduce (sum) of f32[")) << m.what << ": " << err[r];
      EXPECT_THAT(err[r], HasSubstr("its call 2 on this group")) << m.what << ": " << err[r];
    }
    EXPECT_EQ(canary.v[0], 7) << m.what << ": data moved";
  }
}

TEST(GlooComm, ATimeoutFailsInTimeAndStopsTheOthersWithTheReason) {
  CommOptions o;
  o.timeout_s = 0.3;
  const auto t0 = std::chrono::steady_clock::now();
  auto err = on_ranks("gloo", 3, [&](Communicator& c) {
    Buf x({4}, 1.f);
    if (c.rank() == 0) c.all_reduce(x.ref(), x.ref(), ReduceOp::sum, std::vector<int64_t>{0, 1, 2});
    if (c.rank() == 1) c.recv(x.ref(), 2, 9);  // rank 2 sends nothing
  }, o);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  const std::string all = err[0] + "\n" + err[1];
  EXPECT_THAT(all, AnyOf(HasSubstr("rank 0: all_reduce over ranks [0,1,2] failed (timeout 0.3 s)"),
                         HasSubstr("rank 1: recv from rank 2 (tag 9) failed (timeout 0.3 s)")));
  EXPECT_NE(err[0], "");
  EXPECT_NE(err[1], "");
  EXPECT_EQ(err[2], "");
}

TEST(GlooComm, AbortStopsARankWaitingOnTheAbortingOneWithTheReason) {
  CommOptions o;
  o.timeout_s = 20;  // the abort, not the timeout, must end the wait
  const auto t0 = std::chrono::steady_clock::now();
  auto err = on_ranks("gloo", 3, [&](Communicator& c) {
    Buf x({4}, 1.f);
    if (c.rank() == 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      c.abort("rank 2 failed: out of memory in fc1/matmul");
      return;
    }
    if (c.rank() == 0) c.recv(x.ref(), 2, 0);
  }, o);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  EXPECT_THAT(err[0], HasSubstr("rank 0: recv from rank 2 (tag 0) stopped: rank 2 failed: out of memory in fc1/matmul"));
  EXPECT_EQ(err[1], "");
}

// A large all-reduce runs as one ring per lane on parts of the buffer and sums right; a
// member that aborts in the middle of it stops every lane of the others, with its reason,
// within the timeout (usually at once: its closed connections fail their calls; under load
// a peer sometimes waits its call's timeout out, with one lane as with two). The aborting
// member's own call, if another of its threads is inside one, ends at its timeout: Gloo
// does not wake a call whose connections its own rank closed.
TEST(GlooComm, ALargeAllReduceOverLanesIsRightAndStopsEveryLaneOnAbort) {
  const int64_t n = int64_t{16} << 20;  // 64 MiB of f32: two lanes, a few tens of ms on loopback
  auto err = on_ranks("gloo", 2, [&](Communicator& c) {
    Buf x({n});
    for (int64_t i = 0; i < n; ++i) x.v[static_cast<size_t>(i)] = value(c.rank(), i);
    c.all_reduce(x.ref(), x.ref(), ReduceOp::sum, std::vector<int64_t>{0, 1});
    for (int64_t i = 0; i < n; i += 4093)
      ASSERT_EQ(x.v[static_cast<size_t>(i)], value(0, i) + value(1, i)) << "element " << i;
    ASSERT_EQ(x.v.back(), value(0, n - 1) + value(1, n - 1));
  });
  EXPECT_EQ(err[0], "");
  EXPECT_EQ(err[1], "");

  CommOptions o;
  o.timeout_s = 4;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<double> ended(2);
  err = on_ranks("gloo", 2, [&](Communicator& c) {
    Buf x({n}, 1.f);
    std::thread stopper;
    if (c.rank() == 1)
      stopper = std::thread([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(15));
        c.abort("rank 1 failed: disk full");
      });
    auto done = [&] {
      ended[static_cast<size_t>(c.rank())] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (stopper.joinable()) stopper.join();
    };
    try {
      for (int i = 0; i < 50; ++i) c.all_reduce(x.ref(), x.ref(), ReduceOp::sum, std::vector<int64_t>{0, 1});
    } catch (...) {
      done();
      throw;
    }
    done();
  }, o);
  EXPECT_LT(ended[0], 6.0) << err[0];  // the 4 s timeout, and the moment to read the reason
  EXPECT_LT(ended[1], 6.0) << err[1];
  EXPECT_THAT(err[0], HasSubstr("rank 1 failed: disk full")) << err[0];
  EXPECT_THAT(err[1], HasSubstr("rank 1 failed: disk full")) << err[1];
}

TEST(GlooComm, BadShapesAreRefusedBeforeAnythingMoves) {
  CommOptions o;
  o.timeout_s = 5;
  auto err = on_ranks("gloo", 2, [&](Communicator& c) {
    Buf x({5}, 1.f), y({2});
    c.reduce_scatter(x.ref(), y.ref(), 0, ReduceOp::sum, std::vector<int64_t>{0, 1});
  }, o);
  // Each rank refuses the call itself, before any byte moves; a rank still connecting its
  // world when the other refuses is stopped by that rank's abort, which carries the reason.
  const std::string why = "reduce_scatter: dim 0 of [5] does not split over 2 ranks";
  EXPECT_THAT(err[0], HasSubstr(why));
  EXPECT_THAT(err[1], HasSubstr(why));
  EXPECT_TRUE(err[0].starts_with("rank 0: " + why) || err[1].starts_with("rank 1: " + why)) << err[0] << "\n" << err[1];
  err = on_ranks("gloo", 2, [&](Communicator& c) {
    Buf x({4}, 1.f);
    c.all_reduce(x.ref(), x.ref(), ReduceOp::sum, std::vector<int64_t>{0, 5});
  }, o);
  EXPECT_THAT(err[0], HasSubstr("group [0,5] names rank 5 of a world of 2"));
  EXPECT_THROW(gloo_communicator(2, 2, gloo_memory_rendezvous()), Error);
}

}  // namespace
}  // namespace tessel::runtime
