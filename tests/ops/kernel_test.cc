// Reference kernels of the elementwise, reduction and data-movement ops against naive
// loops written here in double, on random inputs of odd sizes, size 0 and 1, broadcasting,
// every dtype the kernel takes, and under one thread and a pool of two (sizes past the
// parallel grain, so work really splits). Also: each elementwise op's scalar expression
// (what the fusion pass lowers) against its kernel.
#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>

#include "graph/error.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "tests/ops/harness.h"

namespace tessel::test {
namespace {

const DType kFloat[] = {DType::f32, DType::f64};
const DType kNumeric[] = {DType::f32, DType::f64, DType::i32, DType::i64};

// Map over one tensor: the expected output of an elementwise op.
HostTensor map1(const HostTensor& x, DType out, const std::function<double(double)>& f) {
  HostTensor y = zeros(out, x.shape);
  for (int64_t i = 0; i < x.numel(); ++i) y.v[i] = f(x.v[i]);
  return y;
}
HostTensor map_bcast(const std::vector<HostTensor>& in, DType out,
                     const std::function<double(const std::vector<double>&)>& f) {
  Shape s;
  for (auto& t : in) {  // NumPy broadcast of the shapes, written out again here
    Shape r(std::max(s.size(), t.shape.size()), 1);
    for (size_t i = 0; i < r.size(); ++i) {
      int64_t a = i + s.size() >= r.size() ? s[i + s.size() - r.size()] : 1;
      int64_t b = i + t.shape.size() >= r.size() ? t.shape[i + t.shape.size() - r.size()] : 1;
      r[i] = a == 1 ? b : a;
    }
    s = r;
  }
  HostTensor y = zeros(out, s);
  std::vector<double> args(in.size());
  for (int64_t i = 0; i < y.numel(); ++i) {
    for (size_t k = 0; k < in.size(); ++k) args[k] = in[k].v[broadcast_index(s, in[k].shape, i)];
    y.v[i] = f(args);
  }
  return y;
}

// ---- unary ------------------------------------------------------------------------------

double naive_unary(const std::string& op, double x) {
  if (op == "neg") return -x;
  if (op == "exp") return std::exp(x);
  if (op == "log") return std::log(x);
  if (op == "sqrt") return std::sqrt(x);
  if (op == "rsqrt") return 1 / std::sqrt(x);
  if (op == "tanh") return std::tanh(x);
  if (op == "abs") return std::fabs(x);
  if (op == "relu") return x > 0 ? x : 0;
  if (op == "sigmoid") return 1 / (1 + std::exp(-x));
  if (op == "gelu") {
    const double pi = std::acos(-1.0);
    return 0.5 * x * (1 + std::tanh(std::sqrt(2 / pi) * (x + 0.044715 * x * x * x)));
  }
  ADD_FAILURE() << "no naive implementation of " << op;
  return 0;
}
bool positive_domain(const std::string& op) { return op == "log" || op == "sqrt" || op == "rsqrt"; }

const Shape kOddShapes[] = {{}, {0}, {1}, {7}, {13, 33}, {3, 0, 5}, {257, 191}};

TEST(KernelUnary, MatchesNaive) {
  Parallels par;
  Rng rng(1);
  for (const char* op :
       {"neg", "exp", "log", "sqrt", "rsqrt", "tanh", "abs", "relu", "sigmoid", "gelu"})
    for (DType dt : kFloat)
      for (const Shape& s : kOddShapes) {
        const bool pos = positive_domain(op);
        HostTensor x = random_tensor(rng, dt, s, pos ? 0.05 : -4, pos ? 5 : 4);
        HostTensor want = map1(x, dt, [&](double v) { return naive_unary(op, v); });
        expect_op(par, op, {x}, {}, want, attr_str(dt) + shape_str(s));
      }
}

// The f32 exp and tanh kernels (ops/fast_math.h) promise 2 ulp of the correctly rounded
// result over the whole float range, exp of anything whose result is below the smallest
// normal float exactly 0, and IEEE results for infinities and NaN; sigmoid 2.5 ulp where
// its result is a normal float and 6.1e-39 absolute below. Checked on a million floats
// spread over every exponent, through the executor (the JIT's kernels).
double ulps(float got, double exact) {
  const float want = static_cast<float>(exact);
  if (std::isinf(want) || std::isinf(got)) return got == want ? 0 : INFINITY;
  const float a = std::fabs(want);
  return std::fabs(double(got) - exact) / (double(std::nextafter(a, INFINITY)) - a);
}

TEST(KernelUnary, FloatExpTanhSigmoidWithinTheirUlp) {
  std::vector<double> xs;
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 4099) {
    const float x = std::bit_cast<float>(static_cast<uint32_t>(bits));
    if (!std::isnan(x)) xs.push_back(x);
  }
  for (double x : std::initializer_list<double>{
           0.0, -0.0, INFINITY, -INFINITY, NAN, 88.72283935546875, 88.7228394, 88.73, -87.33654,
           -87.34, -103.0, 0.625, 0.62499994, 9.0, 9.01, -9.01})
    xs.push_back(float(x));
  const HostTensor x = make_tensor(DType::f32, {static_cast<int64_t>(xs.size())}, xs);
  Parallels par;
  const HostTensor e = run_op("exp", {x}, {}, {.parallel = &par.pool});
  const HostTensor t = run_op("tanh", {x}, {}, {.parallel = &par.pool});
  const HostTensor s = run_op("sigmoid", {x}, {}, {.parallel = &par.pool});
  const double smallest_normal_log = std::log(double(std::numeric_limits<float>::min()));
  double worst_e = 0, worst_t = 0, worst_s = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = x.v[i];
    if (std::isnan(v)) {
      EXPECT_TRUE(std::isnan(e.v[i]) && std::isnan(t.v[i]) && std::isnan(s.v[i]));
      continue;
    }
    if (v < smallest_normal_log - 1e-5) {
      EXPECT_EQ(e.v[i], 0.0) << "exp(" << v << ")";
    } else if (v > smallest_normal_log + 1e-5) {
      const double u = ulps(float(e.v[i]), std::exp(v));
      EXPECT_LE(u, 2) << "exp(" << v << ") = " << e.v[i] << ", exact " << std::exp(v);
      worst_e = std::max(worst_e, u);
    }
    const double u = ulps(float(t.v[i]), std::tanh(v));
    EXPECT_LE(u, 2) << "tanh(" << v << ") = " << t.v[i] << ", exact " << std::tanh(v);
    worst_t = std::max(worst_t, u);
    const double sig = 1 / (1 + std::exp(-v));
    if (v == 0 || std::isinf(v)) {
      EXPECT_EQ(s.v[i], sig) << "sigmoid(" << v << ")";
    }
    if (sig >= double(std::numeric_limits<float>::min())) {
      const double us = ulps(float(s.v[i]), sig);
      EXPECT_LE(us, 2.5) << "sigmoid(" << v << ") = " << s.v[i] << ", exact " << sig;
      worst_s = std::max(worst_s, us);
    } else {
      EXPECT_LE(std::fabs(s.v[i] - sig), 6.1e-39) << "sigmoid(" << v << ") = " << s.v[i] << ", exact " << sig;
    }
  }
  RecordProperty("exp_max_ulp", std::to_string(worst_e));
  RecordProperty("tanh_max_ulp", std::to_string(worst_t));
  RecordProperty("sigmoid_max_ulp", std::to_string(worst_s));
}

// sigmoid and gelu far out in the tails, where fast_exp saturates.
TEST(KernelUnary, TailsMatchNaive) {
  Parallels par;
  std::vector<double> xs;
  for (double x = -120; x <= 120; x += 0.37) xs.push_back(x);
  for (const char* op : {"exp", "tanh", "sigmoid", "gelu", "relu", "abs", "neg"})
    for (DType dt : kFloat) {
      HostTensor x = make_tensor(dt, {static_cast<int64_t>(xs.size())}, xs);
      for (auto& v : x.v) v = dt == DType::f32 ? double(float(v)) : v;
      HostTensor want = map1(x, dt, [&](double v) {
        const double y = naive_unary(op, v);
        return dt == DType::f32 && std::fabs(y) > std::numeric_limits<float>::max()
                   ? std::copysign(INFINITY, y)
                   : y;
      });
      // Absolute tolerance: gelu's 1 + tanh(u) cancels to 0 once tanh(u) rounds to -1.
      expect_op(par, op, {x}, {}, want, dt == DType::f32 ? 1e-6 : 1e-12,
                dt == DType::f32 ? 1e-7 : 1e-15, attr_str(dt) + " tails");
    }
}

// ---- binary -----------------------------------------------------------------------------

double naive_binary(const std::string& op, DType dt, double a, double b) {
  if (op == "add") return a + b;
  if (op == "sub") return a - b;
  if (op == "mul") return a * b;
  if (op == "div")
    return is_integral(dt) ? static_cast<double>(static_cast<int64_t>(a) / static_cast<int64_t>(b))
                           : a / b;
  if (op == "maximum") return a > b ? a : b;
  if (op == "minimum") return a < b ? a : b;
  if (op == "greater") return a > b;
  if (op == "equal") return a == b;
  ADD_FAILURE() << "no naive implementation of " << op;
  return 0;
}

const std::pair<Shape, Shape> kBinaryShapes[] = {{{7}, {7}},
                                                 {{}, {13, 33}},
                                                 {{13, 33}, {}},
                                                 {{3, 1, 4}, {2, 4}},
                                                 {{13, 1}, {1, 33}},
                                                 {{5, 1, 7}, {5, 3, 1}},
                                                 {{2, 1, 3, 1}, {1, 4, 1, 5}},
                                                 {{0, 3}, {1, 3}},
                                                 {{3, 0}, {3, 1}},
                                                 {{1}, {1}},
                                                 {{1, 1}, {7}},
                                                 {{300, 1, 130}, {7, 130}},
                                                 {{64, 600}, {64, 600}}};

TEST(KernelBinary, MatchesNaive) {
  Parallels par;
  Rng rng(2);
  for (const char* op : {"add", "sub", "mul", "div", "maximum", "minimum", "greater", "equal"}) {
    const std::string o = op;
    const bool compare = o == "greater" || o == "equal";
    for (DType dt : kNumeric)
      for (auto& [sa, sb] : kBinaryShapes) {
        // Quantized values: exact in every dtype and full of ties; no zero divisors.
        HostTensor a = quantized_tensor(rng, dt, sa),
                   b = quantized_tensor(rng, dt, sb, -8, 8, o != "div");
        HostTensor want = map_bcast(
            {a, b}, compare ? DType::boolean : dt,
            [&](const std::vector<double>& v) { return naive_binary(o, dt, v[0], v[1]); });
        expect_op(par, op, {a, b}, {}, want, attr_str(dt) + shape_str(sa) + " " + shape_str(sb));
      }
  }
}

TEST(KernelBinary, FloatDivisionOnRandomValues) {
  Rng rng(3);
  for (DType dt : kFloat) {
    HostTensor a = random_tensor(rng, dt, {13, 33}), b = random_tensor(rng, dt, {33}, 0.1, 3);
    HostTensor want =
        map_bcast({a, b}, dt, [](const std::vector<double>& v) { return v[0] / v[1]; });
    EXPECT_TRUE(all_close(run_op("div", {a, b}), want)) << dtype_name(dt);
  }
}

TEST(KernelBinary, IntegerDivisionByZeroThrows) {
  Parallels par;
  for (DType dt : {DType::i32, DType::i64})
    for (Parallel* p : par.all()) {
      HostTensor a = make_tensor(dt, {4}, {1, 2, 3, 4});
      EXPECT_THROW(run_op("div", {a, make_tensor(dt, {4}, {1, 1, 0, 1})}, {}, {.parallel = p}),
                   Error);
      EXPECT_THROW(run_op("div", {a, make_tensor(dt, {}, {0})}, {}, {.parallel = p}), Error);
      EXPECT_THROW(run_op("div", {zeros(dt, {}), zeros(dt, {1})}, {}, {.parallel = p}), Error);
    }
}

// INT_MIN / -1 overflows: undefined behaviour, and a SIGFPE on x86. Library code must
// not kill the process (STYLE rule 7): either an Error or some value is acceptable.
TEST(KernelBinary, IntegerDivisionOverflowDoesNotCrash) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  for (DType dt : {DType::i32, DType::i64}) {
    const double lowest = dt == DType::i32 ? double(INT32_MIN) : double(INT64_MIN);
    EXPECT_EXIT(
        {
          try {
            run_op("div", {make_tensor(dt, {2}, {lowest, 7}), make_tensor(dt, {2}, {-1, -1})});
          } catch (const Error&) {
          }
          std::_Exit(0);
        },
        testing::ExitedWithCode(0), "")
        << dtype_name(dt) << ": " << lowest << " / -1";
  }
}

// ---- where, cast, copies ----------------------------------------------------------------

TEST(KernelWhere, MatchesNaive) {
  Parallels par;
  Rng rng(4);
  const std::array<Shape, 3> shapes[] = {{Shape{3, 2, 1}, Shape{2, 4}, Shape{3, 1, 4}},
                                         {Shape{}, Shape{5}, Shape{5}},
                                         {Shape{7}, Shape{7}, Shape{}},
                                         {Shape{13, 33}, Shape{13, 33}, Shape{13, 33}},
                                         {Shape{0, 2}, Shape{1, 2}, Shape{2}},
                                         {Shape{1}, Shape{1}, Shape{1}},
                                         {Shape{300, 1, 1}, Shape{1, 7, 130}, Shape{130}}};
  for (DType dt : kNumeric)
    for (auto& s : shapes) {
      HostTensor c = index_tensor(rng, DType::boolean, s[0], 0, 1);
      HostTensor a = random_tensor(rng, dt, s[1], -100, 100),
                 b = random_tensor(rng, dt, s[2], -100, 100);
      HostTensor want =
          map_bcast({c, a, b}, dt, [](const std::vector<double>& v) { return v[0] ? v[1] : v[2]; });
      expect_op(par, "where", {c, a, b}, {}, want,
                attr_str(dt) + shape_str(s[0]) + shape_str(s[1]) + shape_str(s[2]));
    }
}

TEST(KernelCast, MatchesNaive) {
  Parallels par;
  Rng rng(5);
  struct C {
    DType from, to;
    std::function<double(double)> f;
  };
  auto trunc = [](double x) { return std::trunc(x); };
  const C casts[] = {
      {DType::f32, DType::f64, [](double x) { return x; }},
      {DType::f64, DType::f32, [](double x) { return double(float(x)); }},
      {DType::f64, DType::f64, [](double x) { return x; }},
      {DType::i64, DType::i32, [](double x) { return x; }},
      {DType::i32, DType::i64, [](double x) { return x; }},
      {DType::f32, DType::i32, trunc},
      {DType::f64, DType::i64, trunc},
      {DType::i32, DType::f32, [](double x) { return x; }},
      {DType::f32, DType::boolean, [](double x) { return x != 0 ? 1.0 : 0.0; }},
      {DType::boolean, DType::f32, [](double x) { return x; }},
  };
  for (const C& c : casts)
    for (const Shape& s : kOddShapes) {
      HostTensor x = c.from == DType::boolean ? index_tensor(rng, c.from, s, 0, 1)
                                              : random_tensor(rng, c.from, s, -100, 100);
      if (c.to == DType::boolean)
        for (int64_t i = 0; i < x.numel(); i += 3) x.v[i] = 0;
      expect_op(par, "cast", {x}, {{"dtype", attr_str(c.to)}}, map1(x, c.to, c.f),
                attr_str(c.from) + " -> " + attr_str(c.to) + shape_str(s));
    }
  // f32 -> f64 -> f32 is exact.
  HostTensor x = random_tensor(rng, DType::f32, {33});
  HostTensor y = run_op("cast", {run_op("cast", {x}, {{"dtype", std::string("f64")}})},
                        {{"dtype", std::string("f32")}});
  EXPECT_TRUE(all_close(y, x, 0, 0));
}

// bf16 and f16 round to nearest, ties to even; f16 overflows to inf and keeps subnormals.
TEST(KernelCast, HalfPrecisionRounding) {
  auto via = [](DType half, std::vector<double> v) {
    const Shape s{static_cast<int64_t>(v.size())};
    return run_op("cast",
                  {run_op("cast", {make_tensor(DType::f32, s, v)}, {{"dtype", attr_str(half)}})},
                  {{"dtype", std::string("f32")}})
        .v;
  };
  const double b = std::ldexp(1.0, -7);  // bf16 spacing above 1
  EXPECT_EQ(via(DType::bf16, {1 + b / 2, 1 + 3 * b / 2, 1 + b / 2 + b / 8, -2.5, 0}),
            (std::vector<double>{1, 1 + 2 * b, 1 + b, -2.5, 0}));
  const double h = std::ldexp(1.0, -10);  // f16 spacing above 1
  EXPECT_EQ(via(DType::f16, {1 + h / 2, 1 + 3 * h / 2, 65504, 70000, std::ldexp(1.0, -20), -0.5}),
            (std::vector<double>{1, 1 + 2 * h, 65504, INFINITY, std::ldexp(1.0, -20), -0.5}));
  Rng rng(6);
  HostTensor x = random_tensor(rng, DType::f32, {1000}, -50, 50);
  std::vector<double> y = via(DType::bf16, x.v);
  for (size_t i = 0; i < y.size(); ++i)
    EXPECT_LE(std::fabs(y[i] - x.v[i]), std::ldexp(std::fabs(x.v[i]), -8)) << x.v[i];
}

// View ops are aliased by the executor, so their kernels are also called directly.
TEST(KernelCopy, ReshapeAndStopGradient) {
  Parallels par;
  Rng rng(7);
  for (DType dt : {DType::f32, DType::f64, DType::i64, DType::boolean, DType::bf16}) {
    HostTensor x = dt == DType::boolean ? index_tensor(rng, dt, {7, 13}, 0, 1)
                                        : random_tensor(rng, dt, {7, 13});
    HostTensor r = x;
    r.shape = {13, 7};
    const Attrs rs{{"shape", Shape{13, -1}}};
    for (Parallel* p : par.all()) {
      EXPECT_TRUE(all_close(run_op("reshape", {x}, rs, {.parallel = p}), r, 0, 0));
      EXPECT_TRUE(all_close(call_kernel("reshape", {x}, rs, *p), r, 0, 0));
      EXPECT_TRUE(all_close(run_op("stop_gradient", {x}, {}, {.parallel = p}), x, 0, 0));
      EXPECT_TRUE(all_close(call_kernel("stop_gradient", {x}, {}, *p), x, 0, 0));
    }
  }
  HostTensor empty = zeros(DType::f32, {0, 3});
  EXPECT_EQ(call_kernel("reshape", {empty}, {{"shape", Shape{3, 0}}}, par.serial).shape,
            (Shape{3, 0}));
}

// ---- reductions -------------------------------------------------------------------------

HostTensor naive_reduce(const std::string& op, const HostTensor& x, std::vector<int64_t> axes,
                        bool keep) {
  const int rank = static_cast<int>(x.shape.size());
  std::vector<bool> red(rank, axes.empty());
  for (int64_t a : axes) red[a < 0 ? a + rank : a] = true;
  Shape out, kept;  // kept: out shape with reduced dims as 1
  for (int d = 0; d < rank; ++d) {
    kept.push_back(red[d] ? 1 : x.shape[d]);
    if (!red[d] || keep) out.push_back(kept.back());
  }
  const double init = op == "sum"             ? 0.0
                      : is_floating(x.dtype)  ? -INFINITY
                      : x.dtype == DType::i32 ? double(INT32_MIN)
                                              : double(INT64_MIN);
  HostTensor y = zeros(x.dtype, out);
  std::fill(y.v.begin(), y.v.end(), init);
  auto kst = strides_of(kept);
  for (int64_t i = 0; i < x.numel(); ++i) {
    auto idx = unravel(x.shape, i);
    int64_t o = 0;
    for (int d = 0; d < rank; ++d) o += (red[d] ? 0 : idx[d]) * kst[d];
    y.v[o] = op == "sum" ? y.v[o] + x.v[i] : std::max(y.v[o], x.v[i]);
  }
  return y;
}

TEST(KernelReduce, MatchesNaive) {
  Parallels par;
  Rng rng(8);
  using Axes = std::vector<int64_t>;
  const std::pair<Shape, std::vector<Axes>> cases[] = {
      {{7, 13, 33}, {{}, {0}, {1}, {2}, {-1}, {0, 1}, {0, 2}, {1, 2}, {0, 1, 2}, {2, 0}}},
      {{7, 1, 13}, {{}, {0}, {1}, {2}, {0, 2}, {1, 2}}},
      {{2, 3, 4, 5}, {{1, 3}, {0, 2}, {0, 3}, {1, 2}}},
      {{1, 1}, {{}, {0}, {1}}},
      {{}, {{}}},
      {{1}, {{0}}},
      {{0, 5}, {{}, {0}, {1}}},
      {{5, 0, 3}, {{1}, {0, 2}}},
      {{257, 255}, {{1}, {0}}},
      {{33, 129, 65}, {{1}, {0, 2}}},
  };
  for (const char* op : {"sum", "max"})
    for (DType dt : kNumeric)
      for (auto& [shape, axes_list] : cases) {
        // Quantized values: every partial sum is exact in f32, so any order must agree.
        HostTensor x = quantized_tensor(rng, dt, shape);
        for (const Axes& axes : axes_list)
          for (bool keep : {false, true}) {
            HostTensor want = naive_reduce(op, x, axes, keep);
            expect_op(par, op, {x}, {{"axes", axes}, {"keepdims", keep}}, want, 0, 0,
                      attr_str(dt) + shape_str(shape) + " axes " + shape_str(axes) +
                          (keep ? " keepdims" : ""));
          }
      }
}

TEST(KernelReduce, FloatSumsOfRandomValues) {
  Parallels par;
  Rng rng(9);
  for (DType dt : kFloat)
    for (auto& [shape, axes] : std::vector<std::pair<Shape, std::vector<int64_t>>>{
             {{13, 3001}, {1}}, {{3001, 13}, {0}}, {{7, 513, 9}, {1}}, {{7, 13, 33}, {0, 2}}}) {
      HostTensor x = random_tensor(rng, dt, shape, -1, 1);
      HostTensor want = naive_reduce("sum", x, axes, false);
      expect_op(par, "sum", {x}, {{"axes", axes}, {"keepdims", false}}, want,
                dt == DType::f32 ? 1e-5 : 1e-12, dt == DType::f32 ? 1e-4 : 1e-12,
                attr_str(dt) + shape_str(shape) + " axes " + shape_str(axes));
    }
}

TEST(KernelReduce, RejectsBadAxes) {
  HostTensor x = zeros(DType::f32, {2, 3});
  EXPECT_THROW(run_op("sum", {x}, {{"axes", std::vector<int64_t>{2}}, {"keepdims", false}}), Error);
  EXPECT_THROW(run_op("max", {x}, {{"axes", std::vector<int64_t>{0, -2}}, {"keepdims", false}}),
               Error);
}

// ---- data movement ----------------------------------------------------------------------

const DType kMoveTypes[] = {DType::f32, DType::f64, DType::i64, DType::boolean, DType::bf16};

HostTensor rand_any(Rng& rng, DType dt, const Shape& s) {
  return dt == DType::boolean ? index_tensor(rng, dt, s, 0, 1) : quantized_tensor(rng, dt, s);
}

TEST(KernelShape, Transpose) {
  Parallels par;
  Rng rng(10);
  const std::pair<Shape, std::vector<int64_t>> cases[] = {
      {{7, 13, 3}, {0, 1, 2}},       {{7, 13, 3}, {0, 2, 1}}, {{7, 13, 3}, {1, 0, 2}},
      {{7, 13, 3}, {1, 2, 0}},       {{7, 13, 3}, {2, 0, 1}}, {{7, 13, 3}, {2, 1, 0}},
      {{2, 3, 4, 5}, {3, 1, 0, -2}}, {{0, 3}, {1, 0}},        {{}, {}},
      {{1, 7, 1}, {2, 0, 1}},        {{300, 200}, {1, 0}}};
  for (DType dt : kMoveTypes)
    for (auto& [s, perm] : cases) {
      HostTensor x = rand_any(rng, dt, s);
      const int r = static_cast<int>(s.size());
      Shape os(r);
      for (int d = 0; d < r; ++d) os[d] = s[(perm[d] + r) % r];
      HostTensor want = zeros(dt, os);
      auto ist = strides_of(s);
      for (int64_t i = 0; i < want.numel(); ++i) {
        auto idx = unravel(os, i);
        int64_t off = 0;
        for (int d = 0; d < r; ++d) off += idx[d] * ist[(perm[d] + r) % r];
        want.v[i] = x.v[off];
      }
      expect_op(par, "transpose", {x}, {{"perm", perm}}, want, 0, 0,
                attr_str(dt) + shape_str(s) + " perm " + shape_str(perm));
    }
}

TEST(KernelShape, Concat) {
  Parallels par;
  Rng rng(11);
  const std::pair<std::vector<Shape>, int64_t> cases[] = {{{{7, 2, 5}, {7, 0, 5}, {7, 3, 5}}, 1},
                                                          {{{2, 3}, {5, 3}}, 0},
                                                          {{{3, 1}, {3, 4}, {3, 2}}, -1},
                                                          {{{13}}, 0},
                                                          {{{0, 2}, {0, 2}}, 0},
                                                          {{{0, 2}, {0, 3}}, 1}};
  for (DType dt : kMoveTypes)
    for (auto& [shapes, axis] : cases) {
      std::vector<HostTensor> xs;
      for (auto& s : shapes) xs.push_back(rand_any(rng, dt, s));
      const int r = static_cast<int>(shapes[0].size());
      const int a = static_cast<int>((axis + r) % r);
      Shape os = shapes[0];
      os[a] = 0;
      for (auto& s : shapes) os[a] += s[a];
      HostTensor want = zeros(dt, os);
      for (int64_t i = 0; i < want.numel(); ++i) {
        auto idx = unravel(os, i);
        size_t k = 0;
        while (idx[a] >= shapes[k][a]) idx[a] -= shapes[k++][a];
        auto st = strides_of(shapes[k]);
        int64_t off = 0;
        for (int d = 0; d < r; ++d) off += idx[d] * st[d];
        want.v[i] = xs[k].v[off];
      }
      expect_op(par, "concat", xs, {{"axis", axis}}, want, 0, 0,
                attr_str(dt) + " axis " + std::to_string(axis) + " first " + shape_str(shapes[0]));
    }
}

TEST(KernelShape, SliceAndPad) {
  Parallels par;
  Rng rng(12);
  using V = std::vector<int64_t>;
  struct S {
    Shape in;
    V axes, starts, ends;
  };
  const S slices[] = {{{7, 13}, {0, 1}, {2, -5}, {5, 13}},
                      {{7, 13}, {1}, {4}, {4}},
                      {{7, 13}, {}, {}, {}},
                      {{3, 5, 7}, {-1, 0}, {1, 1}, {-1, 3}},
                      {{0, 4}, {1}, {1}, {3}},
                      {{300, 200}, {1}, {1}, {199}}};
  for (DType dt : kMoveTypes)
    for (const S& s : slices) {
      HostTensor x = rand_any(rng, dt, s.in);
      const int r = static_cast<int>(s.in.size());
      V b(r, 0), e(s.in.begin(), s.in.end());
      for (size_t k = 0; k < s.axes.size(); ++k) {
        int a = static_cast<int>((s.axes[k] + r) % r);
        b[a] = s.starts[k] < 0 ? s.starts[k] + s.in[a] : s.starts[k];
        e[a] = s.ends[k] < 0 ? s.ends[k] + s.in[a] : s.ends[k];
      }
      Shape os(r);
      for (int d = 0; d < r; ++d) os[d] = e[d] - b[d];
      HostTensor want = zeros(dt, os);
      auto st = strides_of(s.in);
      for (int64_t i = 0; i < want.numel(); ++i) {
        auto idx = unravel(os, i);
        int64_t off = 0;
        for (int d = 0; d < r; ++d) off += (idx[d] + b[d]) * st[d];
        want.v[i] = x.v[off];
      }
      const Attrs at{{"axes", s.axes}, {"starts", s.starts}, {"ends", s.ends}};
      expect_op(par, "slice", {x}, at, want, 0, 0, attr_str(dt) + shape_str(s.in) + " " + at.str());
      // pad is slice's adjoint: padding the slice back puts it where it came from.
      V after(r);
      for (int d = 0; d < r; ++d) after[d] = s.in[d] - e[d];
      HostTensor padded = zeros(dt, s.in);
      for (int64_t i = 0; i < want.numel(); ++i) {
        auto idx = unravel(os, i);
        int64_t off = 0;
        for (int d = 0; d < r; ++d) off += (idx[d] + b[d]) * st[d];
        padded.v[off] = want.v[i];
      }
      expect_op(
          par, "pad", {want}, {{"before", b}, {"after", after}}, padded, 0, 0,
          attr_str(dt) + shape_str(os) + " before " + shape_str(b) + " after " + shape_str(after));
    }
  HostTensor scalar = make_tensor(DType::f32, {}, {2.5});
  EXPECT_TRUE(all_close(run_op("pad", {scalar}, {{"before", V{}}, {"after", V{}}}), scalar, 0, 0));
}

TEST(KernelShape, BroadcastTo) {
  Parallels par;
  Rng rng(13);
  const std::pair<Shape, Shape> cases[] = {{{3, 1}, {2, 3, 4}}, {{}, {5}},
                                           {{1, 7}, {13, 7}},   {{3, 1, 5}, {0, 3, 4, 5}},
                                           {{7}, {7}},          {{1, 33, 1}, {300, 33, 40}}};
  for (DType dt : kMoveTypes)
    for (auto& [in, out] : cases) {
      HostTensor x = rand_any(rng, dt, in);
      HostTensor want = zeros(dt, out);
      for (int64_t i = 0; i < want.numel(); ++i) want.v[i] = x.v[broadcast_index(out, in, i)];
      expect_op(par, "broadcast_to", {x}, {{"shape", out}}, want, 0, 0,
                attr_str(dt) + shape_str(in) + " -> " + shape_str(out));
    }
}

// ---- scalar expressions -----------------------------------------------------------------

// For every elementwise op in the registry, the kernel's output equals its scalar
// expression evaluated on the same inputs (f64, within 1e-6 relative).
TEST(ScalarExpr, MatchesKernelForEveryElementwiseOp) {
  Rng rng(14);
  int checked = 0;
  for (const OpDef* def : ops::registry().all()) {
    if (!def->elementwise()) continue;
    const std::string op = def->name;
    std::vector<Attrs> variants = {{}};
    if (op == "cast") variants = {{{"dtype", std::string("f64")}}, {{"dtype", std::string("f32")}}};
    for (const Attrs& attrs : variants) {
      std::vector<HostTensor> ins;
      for (int i = 0; i < def->min_inputs; ++i) {
        if (op == "where" && i == 0)
          ins.push_back(index_tensor(rng, DType::boolean, {33}, 0, 1));
        else if (positive_domain(op))
          ins.push_back(random_tensor(rng, DType::f64, {33}, 0.05, 5));
        else
          ins.push_back(quantized_tensor(rng, DType::f64, {33}, -12, 12, op != "div"));  // ties
      }
      for (int i = 0; i < def->min_inputs && def->min_inputs == 2; ++i)
        for (int64_t j = 0; j < 33; j += 4) ins[i].v[j] += 0.37 * (i + 1);  // and non-ties
      Graph g(ops::registry());
      ops::Emitter e(g, Origin::here());
      std::vector<Value> in;
      for (size_t i = 0; i < ins.size(); ++i)
        in.push_back(e.input("in" + std::to_string(i), ins[i].dtype, {33}));
      const Node& node = g.node(g.add(op, in, attrs).node);
      const ScalarExpr expr = def->scalar(node);
      ASSERT_EQ(expr.num_args(), def->min_inputs) << op;
      HostTensor got = run_op(op, ins, attrs);
      for (int64_t j = 0; j < 33; ++j) {
        std::vector<double> args;
        for (auto& t : ins) args.push_back(t.v[j]);
        const double want = expr.eval(args);
        EXPECT_NEAR(got.v[j], want, 1e-6 * std::fabs(want) + 1e-12)
            << op << " " << attrs.str() << " element " << j << " expr " << expr.str();
      }
      ++checked;
    }
  }
  EXPECT_GE(checked, 20);
}

}  // namespace
}  // namespace tessel::test
