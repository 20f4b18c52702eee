// The sharding algebra: meshes, placements, every resharding case, and propagation through
// real graphs giving the communication that data and Megatron-style tensor parallelism need.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "planner/sharding.h"

#include <cstring>

namespace tessel::planner {
namespace {

using K = Collective;

TEST(Mesh, CoordinatesAndGroups) {
  Mesh m({"dp", "tp"}, {2, 4});
  EXPECT_EQ(m.size(), 8);
  EXPECT_EQ(m.coords(6), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(m.rank(std::vector<int64_t>{1, 2}), 6);
  EXPECT_EQ(m.group(6, m.axis("tp")), (std::vector<int64_t>{4, 5, 6, 7}));  // tp is contiguous
  EXPECT_EQ(m.group(6, m.axis("dp")), (std::vector<int64_t>{2, 6}));
  EXPECT_EQ(m.str(), "dp=2 x tp=4");
  EXPECT_THROW(Mesh({"dp", "dp"}, {2, 2}), Error);
  EXPECT_THROW(Mesh({"dp"}, {0}), Error);
}

TEST(Placement, LocalShapes) {
  Mesh m({"dp", "tp"}, {2, 4});
  EXPECT_EQ(local_shape(Shape{8, 12}, {Placement::S(0), Placement::S(1)}, m), (Shape{4, 3}));
  EXPECT_EQ(local_shape(Shape{8, 16}, {Placement::S(1), Placement::S(1)}, m), (Shape{8, 2}));
  EXPECT_EQ(local_shape(Shape{8, 12}, {Placement::P(), Placement::R()}, m), (Shape{8, 12}));
  EXPECT_THROW(local_shape(Shape{6, 12}, {Placement::R(), Placement::S(0)}, m), Error);
  EXPECT_EQ(sharding_str({Placement::S(0), Placement::P()}), "[S(0), P(sum)]");
}

TEST(Reshard, EveryCaseGivesTheRightCollective) {
  Mesh m({"tp"}, {4});
  TensorType t{DType::f32, {8, 16}};  // 512 B
  auto one = [&](Placement from, Placement to) {
    auto s = reshard(t, {from}, {to}, m);
    EXPECT_EQ(s.size(), 1u) << from.str() << " -> " << to.str();
    return s.empty() ? ReshardStep{std::nullopt, 0, {}, {}, -1} : s[0];
  };
  ReshardStep s = one(Placement::P(), Placement::R());
  EXPECT_EQ(s.op, K::all_reduce);
  EXPECT_EQ(s.bytes, 512);
  s = one(Placement::P(), Placement::S(0));
  EXPECT_EQ(s.op, K::reduce_scatter);
  EXPECT_EQ(s.bytes, 512);
  s = one(Placement::S(1), Placement::R());
  EXPECT_EQ(s.op, K::all_gather);
  EXPECT_EQ(s.bytes, 512);  // the gathered size
  s = one(Placement::S(0), Placement::S(1));
  EXPECT_EQ(s.op, K::all_to_all);
  EXPECT_EQ(s.bytes, 128);
  s = one(Placement::R(), Placement::S(0));
  EXPECT_FALSE(s.op);
  EXPECT_FALSE(s.is_collective());
  EXPECT_TRUE(reshard(t, {Placement::S(0)}, {Placement::S(0)}, m).empty());
  EXPECT_THROW(reshard(t, {Placement::R()}, {Placement::P()}, m), Error);
  EXPECT_EQ(one(Placement::P(FactorReduce::max), Placement::R()).op, K::all_reduce);
}

TEST(Reshard, TwoAxesGatherBeforeSlicing) {
  Mesh m({"dp", "tp"}, {2, 2});
  TensorType t{DType::f32, {4, 4}};
  auto s = reshard(t, {Placement::S(0), Placement::R()}, {Placement::R(), Placement::S(0)}, m);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].op, K::all_gather);
  EXPECT_EQ(s[0].axis, 0);
  EXPECT_FALSE(s[1].op);
}

int count(const GraphPlacement& gp, K kind) {
  int n = 0;
  for (auto& r : gp.reshards)
    for (auto& s : r.steps) n += s.op == kind;
  return n;
}

TEST(Propagate, DataParallelMlpAllReducesEachGradientOnce) {
  auto b = models::from_spec("mlp:16-8-4", 8);
  Graph& g = b.model->graph();
  OptimizerConfig oc;
  oc.momentum = 0.9;
  add_training(g, "loss", oc);
  Mesh m({"dp"}, {4});
  auto gp = propagate_graph(g, m, [&](const Node& n) -> std::optional<Sharding> {
    if (n.op == "input") return Sharding{Placement::S(0)};  // the batch is split
    return std::nullopt;
  });
  // Forward activations stay split along the batch.
  EXPECT_EQ(gp.at(b.logits.value()), (Sharding{Placement::S(0)}));
  // One all-reduce per parameter gradient (4 parameters), shared by the optimizer update
  // and the gradient-norm computation; and one of the scalar loss (the mean's sum).
  EXPECT_EQ(gp.at(b.loss.value()), (Sharding{Placement::R()}));
  EXPECT_EQ(count(gp, K::all_reduce), 5) << [&] {
    std::string s;
    for (auto& r : gp.reshards)
      for (auto& st : r.steps) s += g.node(r.value.node).name + ": " + st.str(m) + "\n";
    return s;
  }();
  EXPECT_EQ(count(gp, K::all_gather), 0);
  EXPECT_EQ(count(gp, K::all_to_all), 0);
}

TEST(Propagate, MegatronMlpNeedsOneAllReduceForward) {
  // y = gelu(x W1 + b1) W2 + b2 with W1 split by columns and W2 by rows over tp.
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value x = e.input("x", DType::f32, {8, 16});
  Value w1 = e.parameter("w1", {16, 64}, ops::Init::normal, 0.02);
  Value b1 = e.parameter("b1", {64}, ops::Init::zeros);
  Value w2 = e.parameter("w2", {64, 16}, ops::Init::normal, 0.02);
  Value b2 = e.parameter("b2", {16}, ops::Init::zeros);
  Value y = e.add(e.matmul(e.gelu(e.add(e.matmul(x, w1), b1)), w2), b2);
  Mesh m({"tp"}, {4});
  auto gp = propagate_graph(g, m, [&](const Node& n) -> std::optional<Sharding> {
    if (n.name == "w1" || n.name == "b1") return Sharding{Placement::S(n.name == "w1" ? 1 : 0)};
    if (n.name == "w2") return Sharding{Placement::S(0)};
    return std::nullopt;
  });
  ASSERT_EQ(count(gp, K::all_reduce), 1);
  EXPECT_EQ(g.node(gp.reshards[0].consumers.at(0).first).op, "add");  // resolved right before the bias add
  EXPECT_EQ(gp.at(y), (Sharding{Placement::R()}));
  EXPECT_EQ(count(gp, K::all_gather) + count(gp, K::all_to_all) + count(gp, K::reduce_scatter), 0);
}

std::optional<Sharding> megatron(const Node& n) {
  if (n.def->kind != OpKind::variable) return std::nullopt;
  const std::string& s = n.name;
  auto ends = [&](const char* t) {
    return s.size() >= std::strlen(t) && s.compare(s.size() - std::strlen(t), std::string::npos, t) == 0;
  };
  // Parameters and their optimizer state (named "optimizer/<param>/...") split alike.
  auto is = [&](const char* t) { return ends(t) || s.find(std::string(t) + "/") != std::string::npos; };
  if (is("attn/q/weight") || is("attn/k/weight") || is("attn/v/weight") || is("mlp/fc/weight"))
    return Sharding{Placement::S(1)};
  if (is("attn/q/bias") || is("attn/k/bias") || is("attn/v/bias") || is("mlp/fc/bias"))
    return Sharding{Placement::S(0)};
  if (is("attn/proj/weight") || is("mlp/proj/weight")) return Sharding{Placement::S(0)};
  return std::nullopt;
}

int count_big(const Graph& g, const GraphPlacement& gp, K kind) {
  int n = 0;
  for (auto& r : gp.reshards)
    for (auto& s : r.steps) n += s.op == kind && g.type(r.value).rank() > 0;
  return n;
}

TEST(Propagate, MegatronBlockTrainsWithTwoAllReducesEachWay) {
  auto b = models::from_spec("gpt:layers=1,d_model=16,heads=4,seq=8,vocab=32", 2);
  Graph& g = b.model->graph();
  OptimizerConfig oc;
  oc.kind = "adamw";
  add_training(g, "loss", oc);
  Mesh m({"tp"}, {4});
  auto gp = propagate_graph(g, m, megatron);
  // Forward: after attention's and the MLP's row-split projections. Backward: the input
  // gradients of the column-split projections (q, k, v share one input: one all-reduce).
  EXPECT_EQ(count_big(g, gp, K::all_reduce), 4) << [&] {
    std::string s;
    for (auto& r : gp.reshards)
      for (auto& st : r.steps)
        if (g.type(r.value).rank() > 0) s += g.node(r.value.node).name + " " + g.type(r.value).str() + ": " + st.str(m) + "\n";
    return s;
  }();
  EXPECT_EQ(count_big(g, gp, K::all_gather) + count_big(g, gp, K::all_to_all) + count_big(g, gp, K::reduce_scatter), 0);
}

// With sequence parallelism, the embedding's gradient (the sequence-split activation gradient
// scattered into the table) is computed on each device's vocabulary rows from the gathered
// activation gradient when that moves fewer bytes than reduce-scattering the whole table's
// partial gradient (Megatron-LM's vocabulary-parallel embedding), and keeps the reduce-scatter
// when the table is the smaller.
TEST(Propagate, SequenceParallelEmbeddingGradientMovesTheSmallerTensor) {
  struct Case {
    const char* spec;
    bool gathers;  // the activation gradient (it is smaller than the table)
  };
  for (const Case& c : {Case{"gpt:layers=1,d_model=16,heads=4,seq=8,vocab=512", true},
                        Case{"gpt:layers=1,d_model=16,heads=4,seq=64,vocab=8", false}}) {
    SCOPED_TRACE(c.spec);
    auto b = models::from_spec(c.spec, 8);
    Graph& g = b.model->graph();
    OptimizerConfig oc;
    oc.kind = "adamw";
    add_training(g, "loss", oc);
    Mesh m({"tp"}, {4});
    PropagationHints hints;
    hints.sequence_axis = 0;
    auto gp = propagate_graph(g, m, [&](const Node& n) -> std::optional<Sharding> {
      if (auto s = megatron(n)) return s;
      if (n.def->kind == OpKind::variable && n.name.find("wte/weight") != std::string::npos)
        return Sharding{Placement::S(0)};  // vocabulary-parallel, with its optimizer state
      return std::nullopt;
    }, {}, hints);
    const Node* scatter = nullptr;
    for (const Node& n : g.nodes())
      if (n.op == "scatter_add") scatter = &n;
    ASSERT_NE(scatter, nullptr);
    const TensorType table = scatter->outputs[0];
    const TensorType grad = g.type(scatter->inputs[1]);
    int table_reduce_scatters = 0, grad_gathers = 0;
    for (auto& r : gp.reshards)
      for (auto& st : r.steps) {
        table_reduce_scatters += st.op == K::reduce_scatter && r.value.node == scatter->id;
        grad_gathers += st.op == K::all_gather && r.value == scatter->inputs[1];
      }
    const Sharding placed = gp.at(Value{scatter->id, 0});
    if (c.gathers) {
      EXPECT_EQ(placed, (Sharding{Placement::S(0)})) << table.str() << " from " << grad.str();
      EXPECT_EQ(table_reduce_scatters, 0);
      EXPECT_EQ(grad_gathers, 1);
    } else {
      EXPECT_TRUE(placed[0].is_partial()) << table.str() << " from " << grad.str();
      EXPECT_EQ(grad_gathers, 0);
    }
  }
}

TEST(Propagate, AttentionSplitsOverHeads) {
  auto b = models::from_spec("gpt:layers=1,d_model=16,heads=4,seq=8,vocab=32", 2);
  Graph& g = b.model->graph();
  Mesh m({"tp"}, {4});
  auto gp = propagate_graph(g, m, [&](const Node& n) -> std::optional<Sharding> {
    const std::string& s = n.name;
    auto ends = [&](const char* t) { return s.size() >= std::strlen(t) && s.compare(s.size() - std::strlen(t), std::string::npos, t) == 0; };
    if (ends("attn/q/weight") || ends("attn/k/weight") || ends("attn/v/weight") || ends("mlp/fc/weight"))
      return Sharding{Placement::S(1)};
    if (ends("attn/q/bias") || ends("attn/k/bias") || ends("attn/v/bias") || ends("mlp/fc/bias"))
      return Sharding{Placement::S(0)};
    if (ends("attn/proj/weight") || ends("mlp/proj/weight")) return Sharding{Placement::S(0)};
    return std::nullopt;
  });
  // Forward: one all-reduce after each row-split projection, none elsewhere.
  EXPECT_EQ(count(gp, K::all_reduce), 2);
  EXPECT_EQ(count(gp, K::all_gather) + count(gp, K::all_to_all), 0);
}

}  // namespace
}  // namespace tessel::planner
