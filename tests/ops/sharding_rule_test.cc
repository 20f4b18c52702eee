// Every op's sharding rule is well formed on every node of real training graphs, and the
// rules of the ops that matter most say what Megatron-style splitting needs.
#include <gtest/gtest.h>

#include <numeric>
#include <set>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "ops/emit.h"
#include "ops/registry.h"

namespace tessel {
namespace {

std::vector<TensorType> input_types(const Graph& g, const Node& n) {
  std::vector<TensorType> in;
  for (auto& v : n.inputs) in.push_back(g.type(v));
  return in;
}

// Dims labelled with a factor must be splittable wherever the factor splits: the factor's
// size divides every dim it labels; contracted factors reach no output and vice versa.
void check_rule(const Graph& g, const Node& n) {
  SCOPED_TRACE(n.where());
  auto in = input_types(g, n);
  ShardingRule r = n.def->sharding(n, in);
  ASSERT_EQ(r.inputs.size(), in.size());
  ASSERT_EQ(r.outputs.size(), n.outputs.size());
  ASSERT_EQ(r.linear.size(), in.size());
  ASSERT_EQ(r.reduce.size(), r.factor_sizes.size());
  std::vector<bool> in_output(r.factor_sizes.size(), false);
  auto check_dims = [&](const std::vector<int>& f, const Shape& shape) {
    ASSERT_EQ(f.size(), shape.size());
    for (size_t d = 0; d < f.size(); ++d) {
      if (f[d] < 0) continue;
      ASSERT_LT(f[d], static_cast<int>(r.factor_sizes.size()));
      const int64_t size = r.factor_sizes[f[d]];
      EXPECT_GT(size, 0);
      EXPECT_EQ(shape[d] % size, 0) << "factor " << f[d] << " of size " << size << " labels a dim of " << shape[d];
    }
  };
  for (size_t i = 0; i < in.size(); ++i) check_dims(r.inputs[i], in[i].shape);
  for (size_t o = 0; o < n.outputs.size(); ++o) {
    check_dims(r.outputs[o], n.outputs[o].shape);
    for (int f : r.outputs[o])
      if (f >= 0) in_output[f] = true;
  }
  std::vector<bool> used(r.factor_sizes.size(), false);
  for (auto* side : {&r.inputs, &r.outputs})
    for (auto& dims : *side)
      for (int f : dims)
        if (f >= 0) used[f] = true;
  for (size_t f = 0; f < r.factor_sizes.size(); ++f) {
    EXPECT_EQ(r.reduce[f] != FactorReduce::none, !in_output[f]) << "factor " << f;
    EXPECT_TRUE(used[f]) << "factor " << f << " labels no dim";
  }
}

TEST(ShardingRules, WellFormedOnEveryNodeOfTrainingGraphs) {
  for (const char* spec : {"mlp:12-8-6-3", "gpt:layers=2,d_model=16,heads=2,seq=8,vocab=32,dropout=0.1"}) {
    auto b = models::from_spec(spec, 4);
    OptimizerConfig c;
    c.kind = "adamw";
    c.clip_norm = 1;
    c.accumulate = 2;
    c.schedule = "cosine";
    c.total_steps = 10;
    add_training(b.model->graph(), "loss", c);
    std::set<std::string> seen;
    for (auto& n : b.model->graph().nodes()) {
      check_rule(b.model->graph(), n);
      seen.insert(n.op);
    }
    EXPECT_GT(seen.size(), 15u);
  }
}

TEST(ShardingRules, MatmulContractsK) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value a = e.input("a", DType::f32, {5, 6, 7});
  Value b = e.input("b", DType::f32, {7, 3});
  Value c = e.matmul(a, b);
  const Node& n = g.node(c.node);
  ShardingRule r = n.def->sharding(n, input_types(g, n));
  // a[b, m, k] b[k, n] -> c[b, m, n]
  EXPECT_EQ(r.inputs[0][2], r.inputs[1][0]);
  EXPECT_EQ(r.reduce[r.inputs[0][2]], FactorReduce::sum);
  EXPECT_EQ(r.outputs[0][1], r.inputs[0][1]);
  EXPECT_EQ(r.outputs[0][2], r.inputs[1][1]);
  EXPECT_EQ(r.outputs[0][0], r.inputs[0][0]);
}

TEST(ShardingRules, ReshapeSplitsKeepTheMajorDim) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value x = e.input("x", DType::f32, {4, 8, 64});
  Value y = e.reshape(x, {4, 8, 4, 16});  // heads split out of the feature dim
  const Node& n = g.node(y.node);
  ShardingRule r = n.def->sharding(n, input_types(g, n));
  EXPECT_EQ(r.inputs[0][0], r.outputs[0][0]);
  EXPECT_EQ(r.inputs[0][1], r.outputs[0][1]);
  EXPECT_EQ(r.inputs[0][2], r.outputs[0][2]);  // [64] -> [4, 16]: split along the 4 heads
  EXPECT_EQ(r.factor_sizes[r.outputs[0][2]], 4);
  EXPECT_EQ(r.outputs[0][3], -1);
}

TEST(ShardingRules, BroadcastDimsCannotSplit) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value x = e.input("x", DType::f32, {6, 5});
  Value bias = e.input("b", DType::f32, {5});
  Value y = e.add(x, bias);
  const Node& n = g.node(y.node);
  ShardingRule r = n.def->sharding(n, input_types(g, n));
  EXPECT_EQ(r.inputs[1][0], r.outputs[0][1]);  // bias follows the feature dim
  EXPECT_TRUE(r.additive);
  Value z = e.add(x, e.input("c", DType::f32, {1, 5}));
  const Node& m = g.node(z.node);
  EXPECT_EQ(m.def->sharding(m, input_types(g, m)).inputs[1][0], -1);
}

}  // namespace
}  // namespace tessel
