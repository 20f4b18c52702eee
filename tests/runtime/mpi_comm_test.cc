// The MPI engine against naive values, run as one process per rank under mpirun (ctest runs
// it with -n 1, 2, 3 and 4). Every rank knows every rank's input (a formula of the rank and
// the index), so each checks its own result alone: all-reduce (sum, mean, max; one tensor
// and buckets) over element counts 0 to 10^6, reduce-scatter, all-gather and all-to-all
// along dims 0 and 1, broadcast from every member, on the world and on a sub-group, and
// crossed sends that must not deadlock.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <vector>

#include "runtime/mpi_comm.h"

namespace tessel::runtime {
namespace {

Communicator& comm() {
  static std::unique_ptr<Communicator> c = [] {
    CommOptions o;
    o.timeout_s = 60;
    return mpi_communicator(o);
  }();
  return *c;
}

struct Buf {
  std::vector<int64_t> shape;
  std::vector<float> v;
  explicit Buf(std::vector<int64_t> s) : shape(std::move(s)) {
    v.resize(static_cast<size_t>(std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>())));
  }
  TensorRef ref() { return TensorRef{v.data(), DType::f32, shape, static_cast<int64_t>(v.size())}; }
};

float x(int64_t rank, int64_t i) { return static_cast<float>((rank + 1) * (i % 7 + 1)); }

std::vector<std::vector<int64_t>> groups() {
  const int64_t n = comm().size();
  std::vector<int64_t> world(static_cast<size_t>(n));
  std::iota(world.begin(), world.end(), 0);
  std::vector<std::vector<int64_t>> g{world};
  if (n >= 3) g.push_back({0, n - 1});  // a sub-group; the others sit it out
  return g;
}

bool in(const std::vector<int64_t>& g, int64_t r) { return std::find(g.begin(), g.end(), r) != g.end(); }

TEST(MpiComm, AllReduceMatchesNaiveSumsMeansAndMaximaOverEveryCount) {
  Communicator& c = comm();
  auto gs = groups();
  std::vector<std::vector<int64_t>> mine;  // connect_groups takes this rank's groups only
  for (const auto& g : gs)
    if (in(g, c.rank())) mine.push_back(g);
  c.connect_groups(mine);
  for (const auto& g : gs) {
    if (!in(g, c.rank())) continue;
    for (int64_t n : {0, 1, 4, 100, 1000, 1000000})
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max}) {
        Buf b({n});
        for (int64_t i = 0; i < n; ++i) b.v[static_cast<size_t>(i)] = x(c.rank(), i);
        c.all_reduce(b.ref(), b.ref(), op, g);
        for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 97)) {
          float want = op == ReduceOp::max ? -1e30f : 0;
          for (int64_t r : g) want = op == ReduceOp::max ? std::max(want, x(r, i)) : want + x(r, i);
          if (op == ReduceOp::mean) want /= static_cast<float>(g.size());
          ASSERT_FLOAT_EQ(b.v[static_cast<size_t>(i)], want) << "n " << n << " op " << reduce_op_name(op) << " i " << i;
        }
      }
    // A bucket of three tensors goes as one call.
    Buf a({3}), m({2, 5}), z({0});
    for (size_t i = 0; i < a.v.size(); ++i) a.v[i] = x(c.rank(), static_cast<int64_t>(i));
    for (size_t i = 0; i < m.v.size(); ++i) m.v[i] = x(c.rank(), static_cast<int64_t>(i) + 3);
    std::vector<TensorRef> t{a.ref(), m.ref(), z.ref()};
    c.all_reduce(t, t, ReduceOp::sum, g);
    float want = 0;
    for (int64_t r : g) want += x(r, 3 + 9);
    EXPECT_FLOAT_EQ(m.v[9], want);
  }
}

TEST(MpiComm, ReduceScatterAllGatherAllToAllAndBroadcastMatchNaiveLoops) {
  Communicator& c = comm();
  for (const auto& g : groups()) {
    if (!in(g, c.rank())) continue;
    const int64_t k = static_cast<int64_t>(g.size());
    int64_t me = std::find(g.begin(), g.end(), c.rank()) - g.begin();
    for (int dim : {0, 1}) {
      // in: [2k, 3] or [3, 2k]; element (a, b) of rank r = x(r, a * 7 + b).
      const std::vector<int64_t> shape = dim == 0 ? std::vector<int64_t>{2 * k, 3} : std::vector<int64_t>{3, 2 * k};
      Buf b(shape);
      for (int64_t a = 0; a < shape[0]; ++a)
        for (int64_t e = 0; e < shape[1]; ++e) b.v[static_cast<size_t>(a * shape[1] + e)] = x(c.rank(), a * 7 + e);
      std::vector<int64_t> part = shape;
      part[static_cast<size_t>(dim)] /= k;
      Buf rs(part);
      c.reduce_scatter(b.ref(), rs.ref(), dim, ReduceOp::sum, g);
      for (int64_t a = 0; a < part[0]; ++a)
        for (int64_t e = 0; e < part[1]; ++e) {
          const int64_t ga = dim == 0 ? a + me * part[0] : a, ge = dim == 1 ? e + me * part[1] : e;
          float want = 0;
          for (int64_t r : g) want += x(r, ga * 7 + ge);
          ASSERT_FLOAT_EQ(rs.v[static_cast<size_t>(a * part[1] + e)], want) << "reduce_scatter dim " << dim;
        }
      std::vector<int64_t> whole = shape;
      whole[static_cast<size_t>(dim)] *= k;
      Buf ag(whole);
      c.all_gather(b.ref(), ag.ref(), dim, g);
      for (int64_t a = 0; a < whole[0]; ++a)
        for (int64_t e = 0; e < whole[1]; ++e) {
          const int64_t from = dim == 0 ? a / shape[0] : e / shape[1];
          const int64_t la = dim == 0 ? a % shape[0] : a, le = dim == 1 ? e % shape[1] : e;
          ASSERT_FLOAT_EQ(ag.v[static_cast<size_t>(a * whole[1] + e)], x(g[static_cast<size_t>(from)], la * 7 + le))
              << "all_gather dim " << dim;
        }
      // All-to-all: split along dim, concatenate along the other.
      const int other = 1 - dim;
      std::vector<int64_t> at = shape;
      at[static_cast<size_t>(dim)] /= k;
      at[static_cast<size_t>(other)] *= k;
      Buf aa(at);
      c.all_to_all(b.ref(), aa.ref(), dim, other, g);
      for (int64_t a = 0; a < at[0]; ++a)
        for (int64_t e = 0; e < at[1]; ++e) {
          // Block q along `other` came from member q: its slice `me` along `dim`.
          const int64_t q = other == 0 ? a / shape[0] : e / shape[1];
          int64_t sa = other == 0 ? a % shape[0] : a, se = other == 1 ? e % shape[1] : e;
          if (dim == 0) sa += me * at[0];
          else se += me * at[1];
          ASSERT_FLOAT_EQ(aa.v[static_cast<size_t>(a * at[1] + e)], x(g[static_cast<size_t>(q)], sa * 7 + se))
              << "all_to_all dim " << dim;
        }
    }
    for (int64_t root = 0; root < k; ++root) {
      Buf b({5});
      for (int64_t i = 0; i < 5; ++i) b.v[static_cast<size_t>(i)] = x(c.rank(), i);
      c.broadcast(b.ref(), b.ref(), root, g);
      EXPECT_FLOAT_EQ(b.v[4], x(g[static_cast<size_t>(root)], 4)) << "root " << root;
    }
    c.barrier(g);
  }
}

TEST(MpiComm, CrossedSendsDoNotDeadlockAndKeepOrder) {
  Communicator& c = comm();
  const int64_t n = c.size();
  if (n < 2) GTEST_SKIP() << "one rank";
  const int64_t next = (c.rank() + 1) % n, prev = (c.rank() + n - 1) % n;
  for (int64_t count : {1, 1000, 300000}) {
    Buf s1({count}), s2({count}), r1({count}), r2({count});
    for (int64_t i = 0; i < count; ++i) {
      s1.v[static_cast<size_t>(i)] = x(c.rank(), i);
      s2.v[static_cast<size_t>(i)] = -x(c.rank(), i);
    }
    c.send(s1.ref(), next, int64_t{1} << 40);  // both sends before any receive
    c.send(s2.ref(), next, int64_t{1} << 40);
    c.recv(r1.ref(), prev, int64_t{1} << 40);
    c.recv(r2.ref(), prev, int64_t{1} << 40);
    EXPECT_FLOAT_EQ(r1.v[static_cast<size_t>(count - 1)], x(prev, count - 1));
    EXPECT_FLOAT_EQ(r2.v[static_cast<size_t>(count - 1)], -x(prev, count - 1));
  }
  c.barrier(groups()[0]);
}

// An endpoint of its own for a test whose failure ends the job (run alone, with
// TESSEL_MPI_MISMATCH=1, on 2 or more ranks); null otherwise.
std::unique_ptr<Communicator> job_ending_endpoint(double timeout_s) {
  if (!std::getenv("TESSEL_MPI_MISMATCH")) return nullptr;
  CommOptions o;
  o.timeout_s = timeout_s;
  std::unique_ptr<Communicator> c = mpi_communicator(o);
  return c->size() < 2 ? nullptr : std::move(c);
}

// Ranks that issue different collectives are stopped before any data moves, each naming
// what every member called. A mismatch ends its endpoint (and, at exit, the job: a process
// whose MPI engine failed exits without finalizing, so mpirun reports it), so ctest runs this
// one alone (MpiComm.FailuresRanks2) and reads the verdict from the output.
TEST(MpiComm, MismatchedCollectivesAreCaughtBeforeDataMovesNamingBothSides) {
  std::unique_ptr<Communicator> c = job_ending_endpoint(30);
  if (!c) GTEST_SKIP() << "run alone on 2 or more ranks, with TESSEL_MPI_MISMATCH=1";
  const std::vector<int64_t> world{0, 1};
  if (c->rank() > 1) return;
  Buf a({c->rank() == 0 ? int64_t{4} : int64_t{8}});
  std::fill(a.v.begin(), a.v.end(), 3.f);
  try {
    const TensorRef t = a.ref();
    c->all_reduce(t, t, ReduceOp::sum, world);
    ADD_FAILURE() << "the mismatch went through";
  } catch (const std::exception& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("caught before any data moved: rank 0 calls all_reduce (sum) of f32[4]"), std::string::npos) << m;
    EXPECT_NE(m.find("rank 1 calls all_reduce (sum) of f32[8]"), std::string::npos) << m;
  }
  for (float v : a.v) EXPECT_EQ(v, 3.f);  // untouched
}

// MPI_Comm_create_group waits for every member with no timeout of its own: a member that
// never makes the group fails the others within the engine's timeout, naming the group.
// Ends the job like a mismatch: run alone (MpiComm.FailuresRanks2).
TEST(MpiComm, AGroupAMemberNeverJoinsFailsWithinTheTimeout) {
  std::unique_ptr<Communicator> c = job_ending_endpoint(1);
  if (!c) GTEST_SKIP() << "run alone on 2 or more ranks, with TESSEL_MPI_MISMATCH=1";
  if (c->rank() != 0) {
    std::this_thread::sleep_for(std::chrono::seconds(3));  // never joins
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    c->barrier(std::vector<int64_t>{0, 1});
    ADD_FAILURE() << "the group was made without rank 1";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("making the group [0,1] failed (timeout 1 s): a member never joined it"),
              std::string::npos)
        << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.5);
}

}  // namespace
}  // namespace tessel::runtime

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  if (!std::getenv("TESSEL_MPI_MISMATCH")) tessel::runtime::comm();  // MPI is finalized at exit, once every rank is done
  return rc;
}
