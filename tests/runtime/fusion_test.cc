// The fusion pass on whole training graphs: what it groups, that the result verifies and
// trains exactly as the unfused graph does (JIT kernels against every op's reference
// kernel, AdamW, 3 steps), that keys keep groups apart, and what happens to values that
// live only inside a kernel.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <random>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "planner/partition.h"
#include "runtime/executor.h"
#include "runtime/fusion.h"

namespace tessel::runtime {
namespace {

struct Trained {
  std::vector<float> losses;
  std::vector<std::vector<float>> params;
};

Trained train(const std::string& spec, int64_t batch, bool jit, const std::string& optimizer) {
  auto b = models::from_spec(spec, batch);
  OptimizerConfig oc;
  oc.kind = optimizer;
  oc.lr = optimizer == "adamw" ? 1e-3 : 0.05;
  oc.momentum = 0.9;
  oc.weight_decay = 0.01;
  const TrainingPhases ph = add_training(b.model->graph(), "loss", oc);
  const Graph& g = b.model->graph();
  Executor ex(planner::one_device(g, {"loss"}, ph.step), {.seed = 3, .jit = jit});
  ex.initialize();
  std::mt19937 rng(5);
  Trained t;
  for (int step = 0; step < 3; ++step) {
    for (auto& name : b.inputs) {
      TensorRef in = ex.input(name);
      for (int64_t i = 0; i < in.numel; ++i) {
        if (in.dtype == DType::f32) in.as<float>()[i] = std::uniform_real_distribution<float>(-1, 1)(rng);
        else if (in.dtype == DType::i32) in.as<int32_t>()[i] = static_cast<int32_t>(rng() % 10);
        else if (in.dtype == DType::i64) in.as<int64_t>()[i] = static_cast<int64_t>(rng() % 10);
      }
    }
    ex.step();
    t.losses.push_back(ex.output("loss").as<float>()[0]);
  }
  for (int32_t id : g.parameters()) {
    TensorRef v = ex.value(Value{id, 0});
    t.params.emplace_back(v.as<float>(), v.as<float>() + v.numel);
  }
  return t;
}

TEST(Fusion, TrainingGraphsTrainAsUnfused) {
  // Parameters are compared under SGD: under AdamW a gradient that is exactly zero in
  // exact arithmetic (a GPT's key bias) is rounding noise on both sides, which AdamW
  // scales to +-lr. AdamW's losses are compared.
  for (auto [spec, batch] : {std::pair<const char*, int64_t>{"mlp:20-33-17-10", 7},
                             {"gpt:layers=2,d_model=32,heads=4,seq=9,vocab=10", 3}})
    for (const char* opt : {"sgd", "adamw"}) {
      const Trained jit = train(spec, batch, true, opt), ref = train(spec, batch, false, opt);
      for (size_t s = 0; s < ref.losses.size(); ++s)
        EXPECT_NEAR(jit.losses[s], ref.losses[s], 1e-5 * std::fabs(ref.losses[s])) << spec << " " << opt << " step " << s;
      if (std::string(opt) != "sgd") continue;
      ASSERT_EQ(jit.params.size(), ref.params.size());
      for (size_t k = 0; k < ref.params.size(); ++k) {
        float scale = 0.05f;  // lr: a key bias's gradient is zero up to rounding, its values noise
        for (float x : ref.params[k]) scale = std::max(scale, std::fabs(x));
        for (size_t i = 0; i < ref.params[k].size(); ++i)
          ASSERT_NEAR(jit.params[k][i], ref.params[k][i], 1e-5 * scale) << spec << " parameter " << k << " [" << i << "]";
      }
    }
}

TEST(Fusion, WhatTheGptStepFuses) {
  auto b = models::from_spec("gpt:layers=2,d_model=32,heads=4,seq=9,vocab=10", 3);
  OptimizerConfig oc;
  oc.kind = "adamw";
  add_training(b.model->graph(), "loss", oc);
  const Graph& g = b.model->graph();
  const FusedGraph f = fuse(g);
  std::map<std::string, int> left;
  for (const Node& n : f.graph.nodes())
    if (n.def->kind == OpKind::compute && n.op != "fused") ++left[n.op];
  std::string ops;
  for (auto& [op, k] : left) ops += " " + op + " " + std::to_string(k);
  std::printf("%d nodes -> %d (%lld fused kernels); left as they were:%s\n", g.size(), f.graph.size(),
              static_cast<long long>(f.fused_nodes), ops.c_str());
  auto compute = [](const Graph& x) {
    int n = 0;
    for (const Node& k : x.nodes()) n += k.def->kind == OpKind::compute;
    return n;
  };
  EXPECT_LT(compute(f.graph), compute(g) / 2) << "most nodes of a training step are elementwise";
  EXPECT_LE(left["add"] + left["mul"] + left["exp"], 3) << "elementwise ops left alone";
  int64_t with_reduction = 0, multi_output = 0;
  for (const Node& n : f.graph.nodes()) {
    if (n.op != "fused") continue;
    const ops::FusedKernelDesc d = ops::FusedKernelDesc::from_attrs(n.attrs);
    with_reduction += d.has_reduction();
    multi_output += d.outputs.size() > 1;
  }
  EXPECT_GE(with_reduction, 8) << "layer norms, softmaxes and their backward passes end in reductions";
  EXPECT_GE(multi_output, 4) << "the AdamW update writes parameter and both moments at once";
  // Names and outputs survive; every source value is either in the fused graph or inside a kernel.
  for (const NamedValue& o : g.outputs()) EXPECT_TRUE(f.graph.output(o.name).has_value()) << o.name;
  for (int32_t id : g.parameters()) EXPECT_TRUE(f.graph.find(g.node(id).name).has_value());
  for (const Node& n : g.nodes()) {
    if (n.op == "matmul") {
      EXPECT_TRUE(f.map(n.out()).valid()) << n.name << ": matrix products stay library calls";
    }
  }
}

TEST(Fusion, KeysKeepGroupsApartAndInternalValuesHaveNoBuffer) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value x = e.input("x", DType::f32, {4, 8});
  Value a = e.exp(x);
  Value b = e.tanh(a);
  Value c = e.mul(b, 2.0);
  g.set_output("out", c);
  const FusedGraph one = fuse(g);
  EXPECT_EQ(one.fused_nodes, 1);
  EXPECT_FALSE(one.map(a).valid()) << "exp(x) lives only inside the kernel";
  FusionOptions o;
  o.key.assign(static_cast<size_t>(g.size()), 0);
  o.key[static_cast<size_t>(b.node)] = 1;  // tanh in another section
  const FusedGraph apart = fuse(g, o);
  EXPECT_EQ(apart.fused_nodes, 3);
  EXPECT_TRUE(apart.map(a).valid() && apart.map(b).valid());

  Executor ex(planner::one_device(g, {"out"}, ""));
  ex.initialize();
  EXPECT_FALSE(ex.has_buffer(a));
  try {
    ex.value(a);
    FAIL() << "no error";
  } catch (const Error& err) {
    EXPECT_THAT(err.what(), ::testing::HasSubstr("fused kernel"));
    EXPECT_THAT(err.what(), ::testing::HasSubstr("fusion_test.cc"));
  }
  Executor plain(planner::one_device(g, {"out"}, ""), {.jit = false});
  plain.initialize();
  EXPECT_TRUE(plain.has_buffer(a));
  EXPECT_THROW(fuse(g, FusionOptions{{1, 2}}), Error) << "a key per node or none";
}

// relu's backward, where(x > 0, dy, 0): the comparison joins the where's kernel (its bool
// is never stored); a comparison something else also reads stays a node of its own.
TEST(Fusion, AComparisonOnlyAWhereReadsJoinsItsKernel) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value x = e.input("x", DType::f32, {3, 5}), dy = e.input("dy", DType::f32, {3, 5});
  Value zero = e.scalar_like(x, 0);
  Value mask = e.greater(x, zero);
  Value dx = e.where(mask, dy, zero);
  g.set_output("dx", e.mul(dx, 2.0));
  const FusedGraph f = fuse(g);
  EXPECT_EQ(f.fused_nodes, 1);
  EXPECT_FALSE(f.map(mask).valid()) << "the bool lives only inside the kernel";
  Executor ex(planner::one_device(g)), plain(planner::one_device(g), {.jit = false});
  for (Executor* x_ : {&ex, &plain}) {
    x_->initialize();
    for (int i = 0; i < 15; ++i) {
      x_->input("x").as<float>()[i] = static_cast<float>(i % 4) - 1.5f + (i == 7 ? 1.5f : 0.f);  // one exact 0
      x_->input("dy").as<float>()[i] = static_cast<float>(i) * 0.25f;
    }
    x_->step();
  }
  for (int i = 0; i < 15; ++i) EXPECT_EQ(ex.output("dx").as<float>()[i], plain.output("dx").as<float>()[i]) << i;

  Graph h(ops::registry());
  ops::Emitter eh(h, Origin::here());
  Value hx = eh.input("x", DType::f32, {3, 5});
  Value hmask = eh.greater(hx, eh.scalar_like(hx, 0));
  h.set_output("dx", eh.where(hmask, hx, eh.scalar_like(hx, 1)));
  h.set_output("mask", hmask);
  const FusedGraph kept = fuse(h);
  EXPECT_TRUE(kept.map(hmask).valid()) << "an output: stored";
}

}  // namespace
}  // namespace tessel::runtime
