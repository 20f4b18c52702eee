// Reference kernels of the neural-network ops (gather, scatter_add, one_hot, causal_mask,
// dropout_mask), the sources (input, parameter initializers, state, constant) and
// lr_schedule, against naive code and statistics written here.
#include <gmock/gmock.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "graph/error.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "planner/partition.h"
#include "runtime/executor.h"
#include "tests/ops/harness.h"

namespace tessel::test {
namespace {

// ---- gather / scatter_add ---------------------------------------------------------------

HostTensor naive_gather(const HostTensor& table, const HostTensor& idx) {
  Shape os = idx.shape;
  os.insert(os.end(), table.shape.begin() + 1, table.shape.end());
  const int64_t row = table.shape[0] ? table.numel() / table.shape[0] : 0;
  HostTensor out = zeros(table.dtype, os);
  for (int64_t i = 0; i < idx.numel(); ++i)
    for (int64_t c = 0; c < row; ++c)
      out.v[i * row + c] = table.v[static_cast<int64_t>(idx.v[i]) * row + c];
  return out;
}

HostTensor naive_scatter_add(const HostTensor& idx, const HostTensor& upd, int64_t size) {
  Shape os{size};
  os.insert(os.end(), upd.shape.begin() + idx.shape.size(), upd.shape.end());
  HostTensor out = zeros(upd.dtype, os);
  const int64_t row = idx.numel() ? upd.numel() / idx.numel() : 0;
  for (int64_t i = 0; i < idx.numel(); ++i)
    for (int64_t c = 0; c < row; ++c)
      out.v[static_cast<int64_t>(idx.v[i]) * row + c] += upd.v[i * row + c];
  return out;
}

TEST(KernelGather, MatchesNaive) {
  Parallels par;
  Rng rng(30);
  const std::pair<Shape, Shape> cases[] = {// table, indices
                                           {{5, 3}, {2, 4}},    {{7}, {13}},       {{13, 33}, {}},
                                           {{13, 33}, {0}},     {{0, 3}, {0}},     {{1, 1}, {1}},
                                           {{3, 2, 5}, {4, 1}}, {{50, 64}, {2000}}};
  for (DType dt : {DType::f32, DType::f64, DType::i32, DType::i64, DType::boolean})
    for (DType it : {DType::i32, DType::i64})
      for (auto& [ts, is] : cases) {
        HostTensor table = dt == DType::boolean ? index_tensor(rng, dt, ts, 0, 1)
                                                : random_tensor(rng, dt, ts, -9, 9);
        // Few rows, many indices: repeats guaranteed.
        HostTensor idx = index_tensor(rng, it, is, 0, std::max<int64_t>(ts[0] - 1, 0));
        expect_op(par, "gather", {table, idx}, {}, naive_gather(table, idx), 0, 0,
                  attr_str(dt) + shape_str(ts) + " idx " + attr_str(it) + shape_str(is));
      }
}

TEST(KernelScatterAdd, MatchesNaive) {
  Parallels par;
  Rng rng(31);
  struct C {
    Shape idx, upd;
    int64_t size;
  };
  const C cases[] = {{{6}, {6, 3}, 4}, {{2, 3}, {2, 3, 2}, 3}, {{}, {5}, 2},
                     {{0}, {0, 4}, 3}, {{0}, {0, 4}, 0},       {{7}, {7}, 13},
                     {{1}, {1, 1}, 1}, {{13}, {13, 33}, 7},    {{1000}, {1000, 200}, 10}};
  for (DType dt : {DType::f32, DType::f64})
    for (DType it : {DType::i32, DType::i64})
      for (const C& c : cases) {
        HostTensor idx = index_tensor(rng, it, c.idx, 0, std::max<int64_t>(c.size - 1, 0));
        HostTensor upd = quantized_tensor(rng, dt, c.upd);  // exact sums in any order
        expect_op(par, "scatter_add", {idx, upd}, {{"size", c.size}},
                  naive_scatter_add(idx, upd, c.size), 0, 0,
                  attr_str(dt) + " idx " + attr_str(it) + shape_str(c.idx) + " updates " +
                      shape_str(c.upd));
      }
}

// A shard of the result's rows (attributes size = its row count, offset = its first row, as
// the partitioner localizes a vocabulary-parallel embedding's gradient) adds only the updates
// whose index falls in its range: the shards side by side are the whole result.
TEST(KernelScatterAdd, RowShardsSideBySideAreTheWhole) {
  Parallels par;
  Rng rng(32);
  struct C {
    Shape idx, upd;
    int64_t size;
  };
  const C cases[] = {{{6}, {6, 3}, 4}, {{2, 3}, {2, 3, 2}, 6}, {{13}, {13, 33}, 7}, {{1000}, {1000, 200}, 10}};
  for (DType dt : {DType::f32, DType::f64})
    for (DType it : {DType::i32, DType::i64})
      for (const C& c : cases) {
        HostTensor idx = index_tensor(rng, it, c.idx, 0, c.size - 1);
        HostTensor upd = quantized_tensor(rng, dt, c.upd);
        const HostTensor whole = naive_scatter_add(idx, upd, c.size);
        const int64_t row = c.size ? whole.numel() / c.size : 0;
        for (int64_t parts : {int64_t{1}, int64_t{2}, c.size})
          for (int64_t off = 0; off < c.size; off += (c.size + parts - 1) / parts) {
            const int64_t rows = std::min((c.size + parts - 1) / parts, c.size - off);
            Shape os = whole.shape;
            os[0] = rows;
            HostTensor want = zeros(dt, os);
            std::copy(whole.v.begin() + off * row, whole.v.begin() + (off + rows) * row, want.v.begin());
            expect_op(par, "scatter_add", {idx, upd}, {{"size", rows}, {"offset", off}}, want, 0, 0,
                      attr_str(dt) + " idx " + attr_str(it) + shape_str(c.idx) + " rows " + std::to_string(off) +
                          ".." + std::to_string(off + rows) + " of " + std::to_string(c.size));
          }
      }
}

// Out-of-range indices are an Error naming the node, on any thread, never a crash.
TEST(KernelIndex, OutOfRangeThrows) {
  Parallels par;
  for (Parallel* p : par.all())
    for (DType it : {DType::i32, DType::i64})
      for (double bad : {-1.0, 5.0, 1e9}) {
        std::vector<double> iv(5000, 1.0);
        iv[4321] = bad;  // far into the index list: found by a worker thread
        HostTensor idx = make_tensor(it, {5000}, iv);
        const RunConfig cfg{.parallel = p};
        EXPECT_THROW(run_op("gather", {zeros(DType::f32, {5, 8}), idx}, {}, cfg), Error) << bad;
        EXPECT_THROW(
            run_op("scatter_add", {idx, zeros(DType::f32, {5000, 8})}, {{"size", int64_t{5}}}, cfg),
            Error)
            << bad;
        EXPECT_THROW(
            run_op("one_hot", {idx}, {{"depth", int64_t{5}}, {"dtype", std::string("f32")}}, cfg),
            Error)
            << bad;
      }
  try {
    run_op("gather", {zeros(DType::f32, {5, 2}), make_tensor(DType::i64, {2}, {0, 7})});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("index 7"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("under_test"), std::string::npos) << e.what();
  }
}

TEST(KernelOneHot, MatchesNaive) {
  Parallels par;
  Rng rng(32);
  const std::pair<Shape, int64_t> cases[] = {{{7}, 5}, {{2, 3}, 4}, {{}, 3},
                                             {{0}, 3}, {{13}, 1},   {{20000}, 10}};
  for (DType dt : {DType::f32, DType::f64, DType::i32, DType::i64})
    for (DType it : {DType::i32, DType::i64})
      for (auto& [s, depth] : cases) {
        HostTensor labels = index_tensor(rng, it, s, 0, depth - 1);
        Shape os = s;
        os.push_back(depth);
        HostTensor want = zeros(dt, os);
        for (int64_t i = 0; i < labels.numel(); ++i)
          want.v[i * depth + static_cast<int64_t>(labels.v[i])] = 1;
        expect_op(par, "one_hot", {labels}, {{"depth", depth}, {"dtype", attr_str(dt)}}, want, 0, 0,
                  attr_str(dt) + " labels " + attr_str(it) + shape_str(s) + " depth " +
                      std::to_string(depth));
      }
}

// ---- causal_mask, dropout_mask ----------------------------------------------------------

TEST(KernelCausalMask, Values) {
  Parallels par;
  for (DType dt : {DType::f32, DType::f64})
    for (auto [r, c] : std::vector<std::pair<int64_t, int64_t>>{
             {4, 4}, {3, 7}, {0, 5}, {1, 1}, {13, 33}, {0, 0}}) {
      HostTensor want = zeros(dt, {r, c});
      for (int64_t i = 0; i < r; ++i)
        for (int64_t j = 0; j < c; ++j) want.v[i * c + j] = j - i <= c - r ? 0.0 : -INFINITY;
      expect_op(par, "causal_mask", {}, {{"rows", r}, {"cols", c}, {"dtype", attr_str(dt)}}, want,
                0, 0, attr_str(dt) + " " + std::to_string(r) + "x" + std::to_string(c));
    }
  EXPECT_THROW(run_op("causal_mask", {},
                      {{"rows", int64_t{5}}, {"cols", int64_t{4}}, {"dtype", std::string("f32")}}),
               Error);
}

HostTensor dropout_mask(double p, int64_t counter, int64_t seed_attr, const RunConfig& cfg,
                        DType dt = DType::f32, int64_t n = 100000) {
  return run_op("dropout_mask", {make_tensor(DType::i64, {}, {double(counter)})},
                {{"shape", Shape{n}}, {"p", p}, {"seed", seed_attr}, {"dtype", attr_str(dt)}}, cfg);
}

int64_t count_differences(const HostTensor& a, const HostTensor& b) {
  int64_t n = 0;
  for (int64_t i = 0; i < a.numel(); ++i) n += a.v[i] != b.v[i];
  return n;
}

TEST(KernelDropoutMask, Statistics) {
  Parallels par;
  constexpr int64_t n = 100000;
  for (DType dt : {DType::f32, DType::f64})
    for (double p : {0.1, 0.3, 0.5, 0.9}) {
      const HostTensor m = dropout_mask(p, 3, 42, {.parallel = &par.pool, .seed = 1}, dt);
      const double keep = dt == DType::f32 ? double(float(1 / (1 - p))) : 1 / (1 - p);
      int64_t kept = 0;
      for (double v : m.v) {
        ASSERT_TRUE(v == 0 || v == keep) << v;
        kept += v != 0;
      }
      const double sigma = std::sqrt(p * (1 - p) / n);
      EXPECT_NEAR(double(kept) / n, 1 - p, 3 * sigma) << "p " << p << " " << dtype_name(dt);
      // Same (seed, counter) on one thread: the same mask.
      EXPECT_EQ(
          count_differences(m, dropout_mask(p, 3, 42, {.parallel = &par.serial, .seed = 1}, dt)),
          0);
    }
  const HostTensor base = dropout_mask(0.5, 3, 42, {.seed = 1});
  // Another counter, attribute seed or run seed: a different mask (about half the
  // elements differ at p = 0.5).
  for (const HostTensor& other :
       {dropout_mask(0.5, 4, 42, {.seed = 1}), dropout_mask(0.5, 3, 43, {.seed = 1}),
        dropout_mask(0.5, 3, 42, {.seed = 2})})
    EXPECT_NEAR(double(count_differences(base, other)) / n, 0.5, 0.02);
  // p = 0 keeps everything; size 0 and 1 work.
  for (double v : dropout_mask(0, 1, 1, {}, DType::f64, 1000).v) EXPECT_EQ(v, 1.0);
  EXPECT_EQ(dropout_mask(0.5, 1, 1, {}, DType::f32, 0).numel(), 0);
  EXPECT_EQ(dropout_mask(0.5, 1, 1, {}, DType::f32, 1).numel(), 1);
  // An i32 counter gives the same mask as the same i64 counter.
  const HostTensor m32 = run_op(
      "dropout_mask", {make_tensor(DType::i32, {}, {3})},
      {{"shape", Shape{n}}, {"p", 0.5}, {"seed", int64_t{42}}, {"dtype", std::string("f32")}},
      {.seed = 1});
  EXPECT_EQ(count_differences(m32, base), 0);
}

// ---- sources ----------------------------------------------------------------------------

// Values of parameter `name` (built after `before` other parameters) after initialize().
HostTensor init_parameter(const std::string& name, Shape shape, ops::Init init, double scale,
                          uint64_t seed, Parallel* par, DType dt = DType::f32, int before = 0) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  for (int i = 0; i < before; ++i)
    e.parameter("other" + std::to_string(i), {3}, ops::Init::normal, 1);
  g.set_output("w", e.parameter(name, std::move(shape), init, scale, dt));
  runtime::Executor ex(planner::one_device(g, {"w"}, ""), {.seed = seed, .use_blas = false, .parallel = par});
  ex.initialize();
  return load(ex.output("w"));
}

std::pair<double, double> mean_std(const std::vector<double>& v) {
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  double ss = 0;
  for (double x : v) ss += (x - mean) * (x - mean);
  return {mean, std::sqrt(ss / v.size())};
}

TEST(KernelParameter, Initializers) {
  Parallels par;
  constexpr int64_t n = 100000;  // past the parallel grain
  for (DType dt : {DType::f32, DType::f64}) {
    const HostTensor w = init_parameter("w", {n}, ops::Init::normal, 0.5, 1, &par.pool, dt);
    auto [mean, std] = mean_std(w.v);
    EXPECT_NEAR(mean, 0, 3 * 0.5 / std::sqrt(n)) << dtype_name(dt);
    EXPECT_NEAR(std, 0.5, 3 * 0.5 / std::sqrt(2.0 * n)) << dtype_name(dt);
    const HostTensor u = init_parameter("u", {n}, ops::Init::uniform, 0.25, 1, &par.pool, dt);
    for (double x : u.v) ASSERT_LE(std::fabs(x), 0.25);
    std::tie(mean, std) = mean_std(u.v);
    EXPECT_NEAR(mean, 0, 3 * 0.25 / std::sqrt(3.0 * n));
    EXPECT_NEAR(std, 0.25 / std::sqrt(3.0), 0.002);
    for (auto [init, value] :
         {std::pair{ops::Init::zeros, 0.0}, {ops::Init::ones, 1.0}, {ops::Init::constant, 0.75}})
      for (double x : init_parameter("c", {7, 13}, init, 0.75, 1, &par.serial, dt).v)
        ASSERT_EQ(x, value);
  }
  EXPECT_EQ(init_parameter("empty", {0, 4}, ops::Init::normal, 1, 1, &par.pool).numel(), 0);
}

TEST(KernelParameter, SeedingIsByNameAndRunSeed) {
  Parallels par;
  constexpr int64_t n = 50000;
  const HostTensor w = init_parameter("layer/w", {n}, ops::Init::normal, 1, 7, &par.serial);
  // Same name and run seed: identical on any thread count and whatever was built before.
  EXPECT_EQ(
      count_differences(w, init_parameter("layer/w", {n}, ops::Init::normal, 1, 7, &par.pool)), 0);
  EXPECT_EQ(count_differences(w, init_parameter("layer/w", {n}, ops::Init::normal, 1, 7, &par.pool,
                                                DType::f32, 3)),
            0);
  // Another run seed or another name: different values.
  EXPECT_GT(
      count_differences(w, init_parameter("layer/w", {n}, ops::Init::normal, 1, 8, &par.serial)),
      n * 9 / 10);
  EXPECT_GT(
      count_differences(w, init_parameter("layer/b", {n}, ops::Init::normal, 1, 7, &par.serial)),
      n * 9 / 10);
  const HostTensor u = init_parameter("layer/w", {n}, ops::Init::uniform, 1, 7, &par.serial);
  EXPECT_EQ(
      count_differences(u, init_parameter("layer/w", {n}, ops::Init::uniform, 1, 7, &par.pool)), 0);
  EXPECT_GT(
      count_differences(u, init_parameter("layer/w", {n}, ops::Init::uniform, 1, 9, &par.pool)),
      n * 9 / 10);
}

// state and constant are filled with their value (or stored data); inputs keep what the
// caller wrote across runs.
TEST(KernelSource, StateConstantInput) {
  Parallels par;
  for (Parallel* p : par.all())
    for (DType dt : {DType::f32, DType::f64, DType::i32, DType::i64, DType::boolean}) {
      Graph g(ops::registry());
      ops::Emitter e(g, Origin::here());
      const Value s = e.state("s", {40000}, dt, 1);
      const Value c = e.constant(dt == DType::boolean ? 1 : -3, dt, {7, 13});
      const Value stored = e.constant(1, dt, {5});  // its data (zeros) wins
      const Value x = e.input("x", dt, {7, 13});
      g.set_data(stored.node, std::vector<std::byte>(5 * dtype_size(dt), std::byte{0}));
      g.set_output("s", s);
      g.set_output("c", c);
      g.set_output("stored", stored);
      g.set_output("x", x);
      runtime::Executor ex(planner::one_device(g, {"s", "c", "stored", "x"}, ""), {.seed = 0, .use_blas = false, .parallel = p});
      ex.initialize();
      Rng rng(33);
      const HostTensor xv = dt == DType::boolean ? index_tensor(rng, dt, {7, 13}, 0, 1)
                                                 : random_tensor(rng, dt, {7, 13});
      store(ex.input("x"), xv);
      ex.step();
      ex.step();
      for (double v : load(ex.output("s")).v) ASSERT_EQ(v, 1.0) << dtype_name(dt);
      for (double v : load(ex.output("c")).v)
        ASSERT_EQ(v, dt == DType::boolean ? 1.0 : -3.0) << dtype_name(dt);
      for (double v : load(ex.output("stored")).v) ASSERT_EQ(v, 0.0) << dtype_name(dt);
      EXPECT_TRUE(all_close(load(ex.output("x")), xv, 0, 0)) << dtype_name(dt);
    }
  // Stored data wins over the fill value.
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  const Value c = e.constant(9, DType::f64, {3});
  const double data[3] = {1.5, -2.5, 4};
  std::vector<std::byte> bytes(sizeof data);
  std::memcpy(bytes.data(), data, sizeof data);
  g.set_data(c.node, bytes);
  g.set_output("c", c);
  runtime::Executor ex(planner::one_device(g, {"c"}, ""), {.seed = 0, .use_blas = false, .parallel = &par.serial});
  ex.initialize();
  EXPECT_EQ(load(ex.output("c")).v, (std::vector<double>{1.5, -2.5, 4}));
}

// ---- lr_schedule ------------------------------------------------------------------------

double lr(const std::string& kind, double base, double min, int64_t warmup, int64_t total,
          int64_t step, DType dt = DType::f64, DType step_dt = DType::i64) {
  Attrs a{{"kind", kind},
          {"base", base},
          {"warmup", warmup},
          {"total", total},
          {"dtype", attr_str(dt)}};
  if (!std::isnan(min)) a.set("min", min);
  return run_op("lr_schedule", {make_tensor(step_dt, {}, {double(step)})}, a).v[0];
}

TEST(KernelLrSchedule, ConstantWarmupCosine) {
  const double pi = std::acos(-1.0);
  // Constant.
  for (int64_t step : {0, 1, 99, 100000})
    EXPECT_DOUBLE_EQ(lr("constant", 0.1, NAN, 0, 100, step), 0.1);
  // Linear warmup over 10 steps, to the base rate at the last warmup step.
  EXPECT_DOUBLE_EQ(lr("constant", 0.1, NAN, 10, 100, 0), 0.01);
  EXPECT_DOUBLE_EQ(lr("constant", 0.1, NAN, 10, 100, 4), 0.05);
  EXPECT_DOUBLE_EQ(lr("constant", 0.1, NAN, 10, 100, 9), 0.1);
  EXPECT_DOUBLE_EQ(lr("constant", 0.1, NAN, 10, 100, 10), 0.1);
  EXPECT_DOUBLE_EQ(lr("constant", 0.1, NAN, 10, 100, 1000), 0.1);
  // Cosine from base to min over [warmup, total]: endpoints, midpoint, a quarter, and flat after.
  EXPECT_DOUBLE_EQ(lr("cosine", 1, 0.1, 0, 100, 0), 1);
  EXPECT_DOUBLE_EQ(lr("cosine", 1, 0.1, 0, 100, 50), 0.55);
  EXPECT_DOUBLE_EQ(lr("cosine", 1, 0.1, 0, 100, 25), 0.1 + 0.45 * (1 + std::cos(pi / 4)));
  EXPECT_DOUBLE_EQ(lr("cosine", 1, 0.1, 0, 100, 100), 0.1);
  EXPECT_DOUBLE_EQ(lr("cosine", 1, 0.1, 0, 100, 500), 0.1);
  EXPECT_DOUBLE_EQ(lr("cosine", 1, 0.1, 10, 110, 5), 0.6);
  EXPECT_DOUBLE_EQ(lr("cosine", 1, 0.1, 10, 110, 10), 1);
  EXPECT_DOUBLE_EQ(lr("cosine", 1, 0.1, 10, 110, 60), 0.55);
  EXPECT_DOUBLE_EQ(lr("cosine", 1, 0.1, 10, 110, 110), 0.1);
  EXPECT_NEAR(lr("cosine", 2, NAN, 0, 10, 10), 0, 1e-15);  // min defaults to 0
  // f32 output and an i32 step.
  EXPECT_EQ(lr("cosine", 1, 0.1, 0, 100, 50, DType::f32, DType::i32), double(0.55f));
  EXPECT_THROW(lr("linear", 1, 0, 0, 10, 0), Error);
}

}  // namespace
}  // namespace tessel::test

namespace tessel::test {
namespace {

// Collectives: shapes follow the group size; a group of one runs locally as the identity;
// larger groups and point-to-point transfers say they need the multi-device runtime.
TEST(KernelCollective, GroupOfOneIsLocalLargerNeedsTheRuntime) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value x = e.input("x", DType::f32, {4, 6});
  const std::vector<int64_t> one{3}, four{0, 1, 2, 3};
  Value ar = e.op("all_reduce", {x}, {{"ranks", one}});
  EXPECT_EQ(g.type(e.op("all_gather", {x}, {{"ranks", four}, {"dim", int64_t{1}}})).shape, (Shape{4, 24}));
  EXPECT_EQ(g.type(e.op("reduce_scatter", {x}, {{"ranks", four}, {"dim", int64_t{0}}})).shape, (Shape{1, 6}));
  EXPECT_EQ(g.type(e.op("all_to_all", {x}, {{"ranks", std::vector<int64_t>{0, 1}}, {"split_dim", int64_t{1}},
                                            {"concat_dim", int64_t{0}}})).shape,
            (Shape{8, 3}));
  EXPECT_THROW(e.op("reduce_scatter", {x}, {{"ranks", std::vector<int64_t>{0, 1, 2}}, {"dim", int64_t{0}}}), Error);
  EXPECT_THROW(e.op("all_reduce", {x}, {{"ranks", std::vector<int64_t>{1, 1}}}), Error);
  EXPECT_THROW(e.op("all_reduce", {x}, {{"ranks", one}, {"reduce", std::string("mean")}}), Error);
  Value big = e.op("all_reduce", {x}, {{"ranks", four}});
  Value sent = e.op("send", {x}, {{"peer", int64_t{1}}, {"tag", int64_t{7}}});
  Value got = e.op("recv", {}, {{"peer", int64_t{0}}, {"tag", int64_t{7}}, {"dtype", std::string("f32")}, {"shape", Shape{2}}});
  EXPECT_EQ(g.type(sent).dtype, DType::boolean);
  EXPECT_EQ(g.type(got).shape, (Shape{2}));
  g.set_output("local", ar);
  g.set_output("big", big);
  g.set_output("sent", sent);
  runtime::Executor ex(planner::one_device(g, {"local"}, ""));
  ex.initialize();
  float* in = ex.input("x").as<float>();
  for (int i = 0; i < 24; ++i) in[i] = static_cast<float>(i);
  ex.step();
  for (int i = 0; i < 24; ++i) EXPECT_EQ(ex.output("local").as<float>()[i], static_cast<float>(i));
  for (const std::string out : {"big", "sent"}) {
    try {
      runtime::Executor alone(planner::one_device(g, {out}, ""));
      FAIL() << out;
    } catch (const Error& err) {
      EXPECT_THAT(err.what(), ::testing::HasSubstr("a world of several ranks")) << out;
      EXPECT_THAT(err.what(), ::testing::HasSubstr(out == "big" ? "all_reduce" : "send")) << out;
    }
  }
}

}  // namespace
}  // namespace tessel::test
