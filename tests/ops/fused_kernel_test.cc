// The fused op's reference kernel (an interpreter of the kernel description) against the
// ops the fusion pass replaced, run with their own reference kernels: layer norm, softmax,
// bias + GELU and a broadcast statistic, on odd shapes and sizes 1. And the checks its
// shape inference makes.
#include <gtest/gtest.h>

#include "graph/error.h"
#include "ops/emit.h"
#include "ops/fused.h"
#include "ops/registry.h"
#include "planner/partition.h"
#include "runtime/executor.h"
#include "runtime/fusion.h"
#include "harness.h"

namespace tessel::test {
namespace {

// Runs g's output "out" on the reference kernels, with inputs drawn from seed.
HostTensor run_graph(const Graph& g, const std::vector<std::pair<std::string, Shape>>& inputs, uint64_t seed) {
  SerialParallel serial;
  runtime::Executor ex(planner::one_device(g, {"out"}, ""), {.jit = false, .parallel = &serial});
  ex.initialize();
  Rng rng(seed);
  for (auto& [name, shape] : inputs) {
    const HostTensor t = random_tensor(rng, DType::f32, shape, -3, 3);
    const auto id = g.find(name);
    if (id && ex.has_buffer(Value{*id, 0})) store(ex.input(name), t);  // softmax reads no gamma
  }
  ex.step();
  return load(ex.output("out"));
}

TEST(KernelFused, InterpretsWhatItReplaces) {
  using Build = Value (*)(ops::Emitter&, Value, Value, Value);
  const std::pair<const char*, Build> models[] = {
      {"layer_norm", [](ops::Emitter& e, Value x, Value g, Value b) { return e.layer_norm(x, g, b); }},
      {"softmax", [](ops::Emitter& e, Value x, Value, Value) { return e.softmax(x); }},
      {"bias_gelu", [](ops::Emitter& e, Value x, Value, Value b) { return e.gelu(e.add(x, b)); }},
      {"centred", [](ops::Emitter& e, Value x, Value g, Value) { return e.mul(e.sub(x, e.mean(x, {-1}, true)), g); }},
  };
  for (auto& [name, build] : models)
    for (const Shape& s : {Shape{1, 1}, Shape{3, 7}, Shape{2, 5, 33}, Shape{4, 129}}) {
      Graph g(ops::registry());
      ops::Emitter e(g, Origin::here());
      const Shape row{s.back()};
      Value x = e.input("x", DType::f32, s), gamma = e.input("gamma", DType::f32, row), beta = e.input("beta", DType::f32, row);
      g.set_output("out", build(e, x, gamma, beta));
      const runtime::FusedGraph f = runtime::fuse(g);
      ASSERT_EQ(f.fused_nodes, 1) << name << ": one kernel for the whole composition";
      const std::vector<std::pair<std::string, Shape>> inputs = {{"x", s}, {"gamma", row}, {"beta", row}};
      EXPECT_TRUE(all_close(run_graph(f.graph, inputs, 3), run_graph(g, inputs, 3), 2e-6, 2e-6))
          << name << " " << shape_str(s);
    }
}

TEST(KernelFused, RefusesInconsistentShapes) {
  ops::FusedKernelDesc d;
  d.rows = 3;
  d.cols = 4;
  d.inputs = {ops::FusedInput::full};
  d.code = {ops::FusedInstr{ScalarOp::arg}, ops::FusedInstr{ScalarOp::exp, ops::FusedReduce::none, 0}};
  d.outputs = {{1, false}};
  auto add = [&](Shape in, std::vector<int64_t> shapes) {
    Graph g(ops::registry());
    ops::Emitter e(g, Origin::here());
    Attrs a = d.to_attrs();
    a.set("shapes", std::move(shapes));
    return g.add("fused", {e.input("x", DType::f32, std::move(in))}, a);
  };
  EXPECT_NO_THROW(add({3, 4}, {2, 3, 4}));
  EXPECT_NO_THROW(add({12}, {1, 12}));
  EXPECT_THROW(add({3, 5}, {2, 3, 4}), Error) << "input of 15 elements, kernel reads 12";
  EXPECT_THROW(add({3, 4}, {2, 3, 5}), Error) << "output of 15 elements, kernel writes 12";
  EXPECT_THROW(add({3, 4}, {2, 3}), Error) << "malformed shapes";
  d.outputs = {{1, true}};  // a per-element value written per row
  EXPECT_THROW(add({3, 4}, {1, 3}), Error);
}

}  // namespace
}  // namespace tessel::test
