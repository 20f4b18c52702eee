// The registry walk (STYLE rules 3 and 11): every registered op has all its pieces, a
// reference-kernel test, a gradient check or an explicit "not differentiable" entry, and
// every faster kernel a comparison with the reference. A new op without these fails here,
// naming the op.
#include "ops/registry.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "graph/graph.h"
#include "runtime/cpu_kernels.h"
#include "tests/ops/harness.h"

namespace tessel::test {
namespace {

// Each op's reference-kernel tests ("Suite.Name" in this binary). Gradient checks are
// listed by grad_check_test.cc's case table, not here.
struct OpCases {
  std::string_view op;
  std::vector<std::string_view> tests;
};

constexpr std::string_view kScalar = "ScalarExpr.MatchesKernelForEveryElementwiseOp";
constexpr std::string_view kUnary = "KernelUnary.MatchesNaive";
constexpr std::string_view kBinary = "KernelBinary.MatchesNaive";
constexpr std::string_view kIndexErrors = "KernelIndex.OutOfRangeThrows";
constexpr std::string_view kTails = "KernelUnary.TailsMatchNaive";
constexpr std::string_view kUlp = "KernelUnary.FloatExpTanhSigmoidWithinTheirUlp";
constexpr std::string_view kCollective = "KernelCollective.GroupOfOneIsLocalLargerNeedsTheRuntime";

const OpCases kOpCases[] = {
    // sources
    {"input", {"KernelSource.StateConstantInput"}},
    {"parameter", {"KernelParameter.Initializers", "KernelParameter.SeedingIsByNameAndRunSeed"}},
    {"state", {"KernelSource.StateConstantInput"}},
    {"constant", {"KernelSource.StateConstantInput"}},
    // elementwise
    {"neg", {kUnary, kScalar, kTails}},
    {"exp", {kUnary, kScalar, kTails, kUlp}},
    {"log", {kUnary, kScalar}},
    {"sqrt", {kUnary, kScalar}},
    {"rsqrt", {kUnary, kScalar}},
    {"tanh", {kUnary, kScalar, kTails, kUlp}},
    {"abs", {kUnary, kScalar, kTails}},
    {"relu", {kUnary, kScalar, kTails}},
    {"sigmoid", {kUnary, kScalar, kTails, kUlp}},
    {"gelu", {kUnary, kScalar, kTails}},
    {"add", {kBinary, kScalar}},
    {"sub", {kBinary, kScalar}},
    {"mul", {kBinary, kScalar}},
    {"div",
     {kBinary, kScalar, "KernelBinary.FloatDivisionOnRandomValues",
      "KernelBinary.IntegerDivisionByZeroThrows",
      "KernelBinary.IntegerDivisionOverflowDoesNotCrash"}},
    {"maximum", {kBinary, kScalar}},
    {"minimum", {kBinary, kScalar}},
    {"greater", {kBinary, kScalar}},
    {"equal", {kBinary, kScalar}},
    {"where", {"KernelWhere.MatchesNaive", kScalar}},
    {"cast", {"KernelCast.MatchesNaive", "KernelCast.HalfPrecisionRounding", kScalar}},
    {"stop_gradient", {"KernelCopy.ReshapeAndStopGradient"}},
    // reductions
    {"sum",
     {"KernelReduce.MatchesNaive", "KernelReduce.FloatSumsOfRandomValues",
      "KernelReduce.RejectsBadAxes"}},
    {"max", {"KernelReduce.MatchesNaive", "KernelReduce.RejectsBadAxes"}},
    // data movement
    {"reshape", {"KernelCopy.ReshapeAndStopGradient"}},
    {"transpose", {"KernelShape.Transpose"}},
    {"concat", {"KernelShape.Concat"}},
    {"slice", {"KernelShape.SliceAndPad"}},
    {"pad", {"KernelShape.SliceAndPad"}},
    {"broadcast_to", {"KernelShape.BroadcastTo"}},
    // matmul, reference and BLAS
    {"matmul",
     {"KernelMatmul.ReferenceMatchesNaive", "KernelMatmul.RejectsMismatchedOperands",
      "FastKernel.BlasMatmulMatchesReference"}},
    // neural-network ops
    {"gather", {"KernelGather.MatchesNaive", kIndexErrors}},
    {"scatter_add", {"KernelScatterAdd.MatchesNaive", kIndexErrors}},
    {"one_hot", {"KernelOneHot.MatchesNaive", kIndexErrors}},
    {"causal_mask", {"KernelCausalMask.Values"}},
    {"dropout_mask", {"KernelDropoutMask.Statistics", "GradCheckDropout.GradientIsTheMask"}},
    {"lr_schedule", {"KernelLrSchedule.ConstantWarmupCosine"}},
    // collectives (the runtime tests them across ranks)
    {"all_reduce", {kCollective}},
    {"reduce_scatter", {kCollective}},
    {"all_gather", {kCollective}},
    {"all_to_all", {kCollective}},
    {"broadcast", {kCollective}},
    {"send", {kCollective}},
    {"recv", {kCollective}},
    // made by the fusion pass
    {"fused", {"KernelFused.InterpretsWhatItReplaces", "KernelFused.RefusesInconsistentShapes"}},
};

// Ops deliberately without a gradient. Every other op must have one and a gradient check.
const std::string_view kNonDifferentiable[] = {
    "greater",     "equal", "one_hot",   "causal_mask", "dropout_mask",
    "lr_schedule", "input", "parameter", "state",       "constant",
    // inserted after differentiation, never differentiated
    "all_reduce",  "reduce_scatter", "all_gather", "all_to_all", "broadcast", "send", "recv", "fused"};

// Emitter compositions with gradient checks of their own.
const std::string_view kCompositions[] = {"softmax", "log_softmax", "cross_entropy", "layer_norm",
                                          "mean",    "sum_to",      "dropout"};

template <class C>
bool contains(const C& c, std::string_view s) {
  return std::find(std::begin(c), std::end(c), s) != std::end(c);
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

std::set<std::string> tests_in_binary() {
  std::set<std::string> names;
  const testing::UnitTest& u = *testing::UnitTest::GetInstance();
  for (int i = 0; i < u.total_test_suite_count(); ++i) {
    const testing::TestSuite& s = *u.GetTestSuite(i);
    for (int j = 0; j < s.total_test_count(); ++j)
      names.insert(std::string(s.name()) + "." + s.GetTestInfo(j)->name());
  }
  return names;
}

TEST(Registry, EveryOpHasItsPieces) {
  const auto ops = ops::registry().all();
  ASSERT_FALSE(ops.empty());
  for (const OpDef* d : ops) {
    SCOPED_TRACE("op '" + d->name + "'");
    EXPECT_NE(d->infer, nullptr);
    EXPECT_NE(d->kernel, nullptr);
    EXPECT_NE(d->sharding, nullptr) << "every op declares how it may be split";
    EXPECT_FALSE(d->doc.empty());
    const bool source = d->kind != OpKind::compute;
    if (!source) {
      EXPECT_NE(d->cost, nullptr) << "compute ops declare their cost";
    }
    if (d->kind == OpKind::input || d->kind == OpKind::variable) {
      EXPECT_EQ(d->max_inputs, 0);
    }
    EXPECT_TRUE(d->max_inputs < 0 || d->max_inputs >= d->min_inputs);
    if (d->elementwise()) {
      EXPECT_EQ(d->min_inputs, d->max_inputs) << "an elementwise op takes a fixed number of inputs";
      Node n;
      n.op = d->name;
      n.def = d;
      const ScalarExpr e = d->scalar(n);
      EXPECT_FALSE(e.empty());
      EXPECT_EQ(e.num_args(), d->min_inputs) << e.str();
      EXPECT_FALSE(d->view);
    }
    if (d->view) {
      EXPECT_EQ(d->min_inputs, 1) << "a view aliases its single input";
    }
  }
}

TEST(Registry, EveryOpHasReferenceKernelTests) {
  const std::set<std::string> tests = tests_in_binary();
  std::vector<std::string> untested, unknown, stale;
  for (const OpDef* d : ops::registry().all()) {
    auto it = std::find_if(std::begin(kOpCases), std::end(kOpCases),
                           [&](auto& c) { return c.op == d->name; });
    if (it == std::end(kOpCases) || it->tests.empty()) untested.push_back(d->name);
  }
  std::set<std::string_view> seen;
  for (const OpCases& c : kOpCases) {
    EXPECT_TRUE(seen.insert(c.op).second) << "op '" << c.op << "' listed twice in kOpCases";
    if (!ops::registry().find(c.op)) stale.push_back(std::string(c.op));
    for (std::string_view t : c.tests)
      if (!tests.count(std::string(t)))
        unknown.push_back(std::string(c.op) + ": " + std::string(t));
  }
  EXPECT_TRUE(untested.empty())
      << "ops without reference-kernel tests (write them in tests/ops/ and "
         "list them in kOpCases): "
      << join(untested);
  EXPECT_TRUE(unknown.empty()) << "kOpCases names tests that do not exist: " << join(unknown);
  EXPECT_TRUE(stale.empty()) << "kOpCases lists ops that are not registered: " << join(stale);
}

TEST(Registry, EveryFastKernelIsComparedWithTheReference) {
  for (const OpDef* d : ops::registry().all()) {
    if (!runtime::fast_cpu_kernel(d->name)) continue;
    auto it = std::find_if(std::begin(kOpCases), std::end(kOpCases),
                           [&](auto& c) { return c.op == d->name; });
    const bool compared = it != std::end(kOpCases) &&
                          std::any_of(it->tests.begin(), it->tests.end(), [](std::string_view t) {
                            return t.starts_with("FastKernel.");
                          });
    EXPECT_TRUE(compared) << "op '" << d->name
                          << "' has a fast CPU kernel but no FastKernel.* test";
  }
}

TEST(Registry, EveryOpIsGradientCheckedOrDeclaredNonDifferentiable) {
  const std::vector<GradCaseInfo> cases = grad_case_index();
  auto has_case = [&](std::string_view op) {
    return std::any_of(cases.begin(), cases.end(), [&](auto& c) { return c.op == op; });
  };
  std::vector<std::string> no_grad, unchecked, stale_nondiff;
  for (const OpDef* d : ops::registry().all()) {
    const bool declared_nondiff = contains(kNonDifferentiable, d->name);
    if (declared_nondiff) {
      if (d->grad) stale_nondiff.push_back(d->name);
      continue;
    }
    if (!d->grad)
      no_grad.push_back(d->name);
    else if (!has_case(d->name))
      unchecked.push_back(d->name);
  }
  EXPECT_TRUE(no_grad.empty())
      << "ops with no gradient rule that are not listed in kNonDifferentiable: " << join(no_grad);
  EXPECT_TRUE(unchecked.empty()) << "differentiable ops without a gradient check (add a case to "
                                    "grad_check_test.cc): "
                                 << join(unchecked);
  EXPECT_TRUE(stale_nondiff.empty())
      << "kNonDifferentiable lists ops that have a gradient rule: " << join(stale_nondiff);
  for (std::string_view op : kNonDifferentiable)
    EXPECT_NE(ops::registry().find(op), nullptr)
        << "kNonDifferentiable lists unregistered op " << op;
  for (std::string_view comp : kCompositions)
    EXPECT_TRUE(has_case(comp)) << "no gradient check of " << comp;
  for (const GradCaseInfo& c : cases)
    EXPECT_TRUE(ops::registry().find(c.op) || contains(kCompositions, c.op))
        << "gradient case " << c.name << " names unknown op " << c.op;
}

}  // namespace
}  // namespace tessel::test
