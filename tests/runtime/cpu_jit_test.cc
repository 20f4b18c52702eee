// The CPU JIT against the scalar expressions it compiles: every elementwise op of the
// registry, and fused chains (bias + GELU, an AdamW-style update), on sizes 0, 1, 7 and
// 1031 (a partial last vector), with arguments broadcast as scalars, over split ranges.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "graph/error.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "runtime/cpu_jit.h"

namespace tessel::runtime {
namespace {

bool uses(const ScalarExpr& e, std::initializer_list<ScalarOp> ops) {
  for (auto& i : e.code())
    for (ScalarOp o : ops)
      if (i.op == o) return true;
  return false;
}

// Runs the kernel over [0, n) in three pieces and checks every element against eval().
void check(const ElementwiseKernel& k, int64_t n, uint32_t seed, const std::string& what) {
  std::mt19937 rng(seed);
  const bool positive = uses(k.expr, {ScalarOp::log, ScalarOp::sqrt, ScalarOp::rsqrt});
  const int nargs = static_cast<int>(k.scalar_args.size());
  std::vector<std::vector<float>> in(static_cast<size_t>(nargs));
  for (int a = 0; a < nargs; ++a) {
    in[static_cast<size_t>(a)].resize(static_cast<size_t>(k.scalar_args[static_cast<size_t>(a)] ? 1 : n) + 1);
    for (float& x : in[static_cast<size_t>(a)])
      x = positive ? std::uniform_real_distribution<float>(0.05f, 5.f)(rng)
                   : std::round(std::uniform_real_distribution<float>(-12.f, 12.f)(rng) * 4) / 4 + (rng() % 3 ? 0.37f : 0.f);
  }
  std::vector<const float*> ptrs;
  for (auto& v : in) ptrs.push_back(v.data());
  std::vector<float> out(static_cast<size_t>(n) + 1, -7.f);
  const ElementwiseFn fn = CpuJit::shared().compile(k);
  fn(ptrs.data(), out.data(), 0, n / 3);
  fn(ptrs.data(), out.data(), n / 3, n / 2);
  fn(ptrs.data(), out.data(), n / 2, n);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> args;
    for (int a = 0; a < nargs; ++a) args.push_back(in[static_cast<size_t>(a)][k.scalar_args[static_cast<size_t>(a)] ? 0 : static_cast<size_t>(i)]);
    const double want = static_cast<float>(k.expr.eval(args));
    const double got = out[static_cast<size_t>(i)];
    if (got == want || (std::isnan(got) && std::isnan(want))) continue;  // infinities and NaNs alike
    const double tol = uses(k.expr, {ScalarOp::exp, ScalarOp::log, ScalarOp::tanh}) ? 4e-6 : 1e-6;
    ASSERT_NEAR(out[static_cast<size_t>(i)], want, tol * std::fabs(want) + 1e-6) << what << " n " << n << " [" << i << "] " << k.expr.str();
  }
  EXPECT_EQ(out[static_cast<size_t>(n)], -7.f) << what << ": wrote past the end";
}

TEST(CpuJit, EveryElementwiseOpMatchesItsScalarExpression) {
  int checked = 0;
  for (const OpDef* def : ops::registry().all()) {
    if (!def->elementwise()) continue;
    Graph g(ops::registry());
    ops::Emitter e(g, Origin::here());
    std::vector<Value> in;
    for (int i = 0; i < def->min_inputs; ++i)
      in.push_back(e.input("in" + std::to_string(i), def->name == "where" && i == 0 ? DType::boolean : DType::f32, {4}));
    Attrs attrs;
    if (def->name == "cast") attrs = Attrs{{"dtype", std::string("f32")}};
    const Node& node = g.node(g.add(def->name, in, attrs).node);
    ElementwiseKernel k{def->name, def->scalar(node), std::vector<bool>(static_cast<size_t>(def->min_inputs), false)};
    for (int64_t n : {0, 1, 7, 1031}) check(k, n, 3, def->name);
    if (def->min_inputs >= 2) {  // the second argument broadcast, as a bias or a scalar
      k.scalar_args[1] = true;
      check(k, 1031, 4, def->name + " (scalar second argument)");
    }
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

TEST(CpuJit, FusedChainsMatchAndCompileOnce) {
  // gelu(x + b), tanh form; b a broadcast scalar.
  ScalarExpr gelu;
  {
    int x = gelu.binary(ScalarOp::add, gelu.arg(0), gelu.arg(1));
    int x3 = gelu.binary(ScalarOp::mul, gelu.binary(ScalarOp::mul, x, x), x);
    int inner = gelu.binary(ScalarOp::mul, gelu.constant(0.7978845608),
                            gelu.binary(ScalarOp::add, x, gelu.binary(ScalarOp::mul, gelu.constant(0.044715), x3)));
    int t = gelu.binary(ScalarOp::add, gelu.constant(1), gelu.unary(ScalarOp::tanh, inner));
    gelu.binary(ScalarOp::mul, gelu.binary(ScalarOp::mul, gelu.constant(0.5), x), t);
  }
  // p - lr * (m / (sqrt(v) + eps) + wd * p): parameter, moment, second moment, lr scalar.
  ScalarExpr adam;
  {
    int p = adam.arg(0), m = adam.arg(1), v = adam.arg(2), lr = adam.arg(3);
    int den = adam.binary(ScalarOp::add, adam.unary(ScalarOp::sqrt, adam.unary(ScalarOp::abs, v)), adam.constant(1e-8));
    int step = adam.binary(ScalarOp::add, adam.binary(ScalarOp::div, m, den), adam.binary(ScalarOp::mul, adam.constant(0.01), p));
    adam.binary(ScalarOp::sub, p, adam.binary(ScalarOp::mul, lr, step));
  }
  const ElementwiseKernel g{"bias_gelu", gelu, {false, true}};
  const ElementwiseKernel a{"adamw", adam, {false, false, false, true}};
  for (int64_t n : {0, 1, 7, 1031, 100003}) {
    check(g, n, 5, "bias+gelu");
    check(a, n, 6, "adamw");
  }
  const auto before = CpuJit::shared().stats();
  ElementwiseKernel again = g;
  again.name = "another_name";  // the same code: served from the cache
  EXPECT_EQ(CpuJit::shared().compile(again), CpuJit::shared().compile(g));
  EXPECT_EQ(CpuJit::shared().stats().compiled, before.compiled);
  EXPECT_EQ(CpuJit::shared().stats().cache_hits, before.cache_hits + 2);
  EXPECT_THAT(CpuJit::shared().ir(g), ::testing::HasSubstr("define void @tessel_bias_gelu"));
  EXPECT_FALSE(CpuJit::shared().host_cpu().empty());
}

TEST(CpuJit, AnExpressionReadingMissingArgumentsIsAnError) {
  ScalarExpr e;
  e.binary(ScalarOp::add, e.arg(0), e.arg(2));
  EXPECT_THROW(CpuJit::shared().compile(ElementwiseKernel{"bad", e, {false, false}}), Error);
}

}  // namespace
}  // namespace tessel::runtime
