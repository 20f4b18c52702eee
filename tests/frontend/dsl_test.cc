// The DSL: errors point at the user's line, layers build the expected graph, and building
// allocates no tensor memory (a 175B-parameter GPT builds in well under a second).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>

#include "frontend/models.h"
#include "frontend/nn.h"
#include "graph/error.h"
#include "planner/cost.h"

namespace tessel {
namespace {

using ::testing::HasSubstr;

std::string error_of(auto&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string here(int line) { return "dsl_test.cc:" + std::to_string(line); }

TEST(Dsl, MatmulShapeErrorNamesCallSiteOpNodeAndShapes) {
  Model m;
  Tensor a = m.input("a", {256, 1024});
  Tensor b = m.input("b", {512, 10});
  int line = __LINE__ + 1;
  std::string msg = error_of([&] { matmul(a, b); });
  EXPECT_THAT(msg, HasSubstr(here(line)));
  EXPECT_THAT(msg, HasSubstr("matmul"));
  EXPECT_THAT(msg, HasSubstr("inner dims differ"));
  EXPECT_THAT(msg, HasSubstr("[256,1024]"));
  EXPECT_THAT(msg, HasSubstr("[512,10]"));
}

TEST(Dsl, OperatorShapeErrorNamesTheExpressionLine) {
  Model m;
  Tensor a = m.input("a", {3, 4});
  Tensor b = m.input("b", {5});
  int line = __LINE__ + 1;
  std::string msg = error_of([&] { (void)(a + b); });
  EXPECT_THAT(msg, HasSubstr(here(line)));
  EXPECT_THAT(msg, HasSubstr("add"));
  EXPECT_THAT(msg, HasSubstr("do not broadcast"));
  line = __LINE__ + 1;
  msg = error_of([&] { (void)(2.0 * a - b); });
  EXPECT_THAT(msg, HasSubstr(here(line)));
}

TEST(Dsl, LayerErrorsNameTheCallerNotTheLibrary) {
  Model m;
  Tensor x = m.input("x", {8, 30});
  nn::Linear fc(m, "fc", 20, 10);
  int line = __LINE__ + 1;
  std::string msg = error_of([&] { fc(x); });
  EXPECT_THAT(msg, HasSubstr(here(line)));
  EXPECT_THAT(msg, HasSubstr("'fc'"));
  EXPECT_THAT(msg, HasSubstr("f32[8,30]"));
}

TEST(Dsl, NodesRecordOriginsAndScopedNames) {
  Model m;
  Tensor x = m.input("x", {4, 6});
  nn::Linear fc(m, "fc1", 6, 3);
  int line = __LINE__ + 1;
  Tensor y = relu(fc(x));
  EXPECT_EQ(y.node().op, "relu");
  EXPECT_EQ(y.node().origin.str(), here(line));
  EXPECT_EQ(fc.weight.node().name, "fc1/weight");
  EXPECT_EQ(fc.bias.node().name, "fc1/bias");
  const Node& add = m.graph().node(y.node().inputs[0].node);
  EXPECT_EQ(add.op, "add");
  EXPECT_EQ(add.name.rfind("fc1/", 0), 0u) << add.name;
  EXPECT_EQ(add.origin.str(), here(line));
  m.graph().verify();
}

TEST(Dsl, MlpGraphShapesAndParameterCount) {
  auto b = models::from_spec("mlp:784-1024-1024-10", 256);
  EXPECT_EQ(b.logits.shape(), (Shape{256, 10}));
  EXPECT_EQ(b.loss.rank(), 0);
  EXPECT_EQ(planner::count_parameters(b.model->graph()).elements,
            784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10);
}

TEST(Dsl, GptParameterCountMatchesFormula) {
  models::GptConfig c;
  c.layers = 2;
  c.d_model = 64;
  c.heads = 4;
  c.vocab = 256;
  c.seq = 32;
  c.batch = 3;
  auto b = models::gpt(c);
  EXPECT_EQ(planner::count_parameters(b.model->graph()).elements, c.parameters());
  EXPECT_EQ(b.logits.shape(), (Shape{3, 32, 256}));
  b.model->graph().verify();
}

TEST(Dsl, Gpt3SizedGraphBuildsWithoutAllocatingTensors) {
  // 96 layers, d_model 12288: 175B parameters, 700 GB in f32. Building must be cheap.
  auto t0 = std::chrono::steady_clock::now();
  auto b = models::from_spec("gpt:layers=96,d_model=12288,heads=96,seq=2048,vocab=51200", 1536);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t n = planner::count_parameters(b.model->graph()).elements;
  EXPECT_GT(n, 174'000'000'000);
  EXPECT_LT(n, 176'000'000'000);
  EXPECT_LT(s, 2.0);
  EXPECT_GT(planner::graph_cost(b.model->graph()).flops, 1e15);
}

TEST(Dsl, ModelSpecErrorsNameTheBadPart) {
  EXPECT_THAT(error_of([] { models::from_spec("mlp:784-x-10", 4); }), HasSubstr("'x'"));
  EXPECT_THAT(error_of([] { models::from_spec("gpt:layers=2,width=3", 4); }), HasSubstr("unknown key 'width'"));
  EXPECT_THAT(error_of([] { models::from_spec("cnn:3", 4); }), HasSubstr("unknown model 'cnn'"));
  EXPECT_THAT(error_of([] { models::from_spec("gpt:layers=1,d_model=10,heads=3", 4); }),
              HasSubstr("not divisible by heads"));
}

TEST(Dsl, TensorsOfTwoModelsDoNotMix) {
  Model m1, m2;
  Tensor a = m1.input("a", {2});
  Tensor b = m2.input("b", {2});
  EXPECT_THAT(error_of([&] { (void)(a + b); }), HasSubstr("two different models"));
}

TEST(Dsl, DropoutOnlyInTraining) {
  Model train, eval;
  eval.set_training(false);
  Tensor a = train.input("a", {4});
  Tensor b = eval.input("a", {4});
  EXPECT_EQ(dropout(a, 0.5).node().op, "mul");
  EXPECT_EQ(dropout(b, 0.5).value(), b.value());
}

}  // namespace
}  // namespace tessel
