// The graph IR with the real op registry: construction errors, verification, topological
// helpers and autodiff plumbing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "graph/autodiff.h"
#include "graph/error.h"
#include "graph/graph.h"
#include "ops/emit.h"
#include "ops/registry.h"

namespace tessel {
namespace {

using ::testing::HasSubstr;

TEST(Graph, ErrorsNameOriginOpNodeAndInputTypes) {
  Graph g(ops::registry());
  Origin o{"model.cc", 42, "build", {}};
  ops::Emitter e(g, o, "net");
  Value a = e.input("a", DType::f32, {256, 1024});
  Value b = e.input("b", DType::f32, {512, 10});
  try {
    g.add("matmul", {a, b}, {}, "fc2", o);
    FAIL();
  } catch (const Error& err) {
    std::string m = err.what();
    EXPECT_THAT(m, HasSubstr("model.cc:42: matmul 'fc2': inner dims differ: [256,1024] x [512,10]"));
    EXPECT_THAT(m, HasSubstr("inputs: f32[256,1024], f32[512,10]"));
  }
}

TEST(Graph, RejectsUnknownOpsAttributesAndBadReferences) {
  Graph g(ops::registry());
  Value a = g.add("input", {}, {{"dtype", std::string("f32")}, {"shape", Shape{2}}}, "a");
  EXPECT_THAT([&] { try { g.add("frobnicate", {a}); } catch (const Error& e) { return std::string(e.what()); } return std::string(); }(),
              HasSubstr("unknown op"));
  EXPECT_THROW(g.add("relu", {a}, {{"alpha", 1.0}}), Error);           // unknown attribute
  EXPECT_THROW(g.add("sum", {a}, {{"axes", 1.0}, {"keepdims", false}}), Error);  // wrong type
  EXPECT_THROW(g.add("relu", {Value{7, 0}}), Error);                   // dangling
  EXPECT_THROW(g.add("relu", {Value{0, 3}}), Error);                   // missing output
  EXPECT_THROW(g.add("relu", {a, a}), Error);                          // arity
  EXPECT_THROW(g.add("input", {}, {{"dtype", std::string("f32")}, {"shape", Shape{int64_t(1) << 62}}}), Error);
  EXPECT_THROW(g.add("input", {}, {{"dtype", std::string("f32")}, {"shape", Shape{-1}}}), Error);
  EXPECT_THROW(g.add("input", {}, {{"dtype", std::string("q8")}, {"shape", Shape{1}}}), Error);
  EXPECT_EQ(g.size(), 1);  // failed adds leave nothing behind
  g.verify();
}

TEST(Graph, UniqueNamesAndLookup) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value a = e.input("x", DType::f32, {3});
  Value b = e.relu(a);
  Value c = e.relu(b);
  EXPECT_NE(g.node(b.node).name, g.node(c.node).name);
  EXPECT_EQ(g.find("x"), std::optional<int32_t>(a.node));
  EXPECT_THROW(e.input("x", DType::f32, {3}) , Error) << "inputs keep their names? (a second 'x' must not shadow)";
}

TEST(Graph, NeededNodesIsMinimalAndOrdered) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value x = e.input("x", DType::f32, {3});
  Value unused = e.exp(x);
  Value y = e.relu(x);
  auto ids = needed_nodes(g, std::vector<Value>{y});
  EXPECT_EQ(ids, (std::vector<int32_t>{x.node, y.node}));
  (void)unused;
}

TEST(Autodiff, SharedSubexpressionsAccumulate) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  Value x = e.input("x", DType::f64, {});
  Value y = e.mul(x, x);          // x^2
  Value z = e.add(y, e.mul(y, x));  // x^2 + x^3
  auto gr = gradients(g, z, std::vector<Value>{x});
  ASSERT_TRUE(gr[0].valid());
  g.verify();
  EXPECT_EQ(g.type(gr[0]), g.type(x));
}

TEST(Autodiff, NonDifferentiablePathIsNamed) {
  Graph g(ops::registry());
  Origin o{"net.cc", 7, "", {}};
  ops::Emitter e(g, o);
  Value x = e.input("x", DType::f32, {4});
  Value c = e.cast(e.cast(x, DType::i32), DType::f32);  // int round trip: no gradient
  Value l = e.sum(e.mul(c, x));
  auto gr = gradients(g, l, std::vector<Value>{x});
  EXPECT_TRUE(gr[0].valid());  // through the direct use of x only
  Value lbl = e.input("lbl", DType::i32, {4});
  Value oh = e.one_hot(lbl, 3);
  auto none = gradients(g, e.sum(oh), std::vector<Value>{x});
  EXPECT_FALSE(none[0].valid());
}

}  // namespace
}  // namespace tessel
