// The proof that a plan trains the same model as one device: for the MLP and a small GPT,
// every strategy runs 5 optimizer steps on simulated devices (threads of this process,
// real collectives through the in-process communicator) and must give the same losses and
// the same parameters as one device running the whole batch.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "runtime/executor.h"
#include "runtime/local_run.h"

namespace tessel::runtime {
namespace {

using planner::PlanConfig;
using planner::Schedule;

struct Case {
  std::string spec;
  int64_t batch;  // global: samples per optimizer step
  PlanConfig config;
  std::string optimizer = "adamw";
  double clip_norm = 0;
  int64_t bucket_bytes = 25 << 20;
};

PlanConfig cfg(int64_t dp, int64_t tp, int zero = 0, int64_t pp = 1, int64_t mb = 1, bool sp = false,
               Schedule s = Schedule::one_f_one_b) {
  PlanConfig c;
  c.dp = dp;
  c.tp = tp;
  c.zero = zero;
  c.pp = pp;
  c.microbatches = mb;
  c.sequence_parallel = sp;
  c.schedule = s;
  return c;
}

constexpr int kSteps = 5;

void check(const Case& k) {
  SCOPED_TRACE(k.spec + " " + k.config.str() + " (" + k.optimizer + ")");
  OptimizerConfig oc;
  oc.kind = k.optimizer;
  oc.lr = 0.01;
  oc.momentum = 0.9;
  oc.clip_norm = k.clip_norm;
  // One device: the whole batch. The plan: a graph of one microbatch (every replica).
  models::Built one_b = models::from_spec(k.spec, k.batch, true);
  Graph& one_g = one_b.model->graph();
  add_training(one_g, "loss", oc);
  const int64_t m = k.config.microbatches;
  models::Built plan_b = models::from_spec(k.spec, k.batch / m, true);
  Graph& plan_g = plan_b.model->graph();
  add_training(plan_g, "loss", oc);

  ExecutorOptions eo;
  eo.seed = 11;
  Executor one(one_g, eo);
  const int prog = one.prepare({"train", {"loss"}});
  one.initialize();

  RankOptions ro;
  ro.seed = 11;
  ro.bucket_bytes = k.bucket_bytes;
  CommOptions co;
  co.timeout_s = 60;
  LocalRun run(planner::partition(plan_g, k.config), k.config, ro, co, 1);
  run.initialize();

  std::mt19937 rng(5);
  for (int step = 0; step < kSteps; ++step) {
    for (int32_t id : one_g.nodes_of_kind(OpKind::input)) {
      const Node& n = one_g.node(id);
      const TensorType& t = n.outputs[0];
      TensorRef dst = one.input(n.name);
      const int64_t classes = n.name == "labels" ? one_b.logits.shape().back() : 32;
      for (int64_t i = 0; i < t.numel(); ++i) {
        if (t.dtype == DType::f32) dst.as<float>()[i] = std::uniform_real_distribution<float>(-1, 1)(rng);
        else dst.as<int32_t>()[i] = static_cast<int32_t>(rng() % classes);
      }
      const TensorType& micro = plan_g.node(*plan_g.find(n.name)).outputs[0];
      run.feed(n.name, micro, std::span<const std::byte>(static_cast<const std::byte*>(dst.data), static_cast<size_t>(t.bytes())));
    }
    one.run(prog);
    run.step();
    const double want = one.output("loss").as<float>()[0];
    const double got = run.scalar_output("loss");
    EXPECT_LE(std::fabs(got - want), 1e-5 * std::max(1.0, std::fabs(want))) << "loss at step " << step << ": " << got << " vs " << want;
  }
  double worst = 0;
  std::string where;
  for (int32_t id : one_g.parameters()) {
    const Node& n = one_g.node(id);
    const std::vector<std::byte> got = run.gather_variable(n.name, n.outputs[0]);
    const float* g = reinterpret_cast<const float*>(got.data());
    const float* w = one.value(Value{id, 0}).as<float>();
    // Relative to the tensor's scale: elements near zero are compared with its largest.
    double scale = 0;
    for (int64_t i = 0; i < n.outputs[0].numel(); ++i) scale = std::max(scale, std::fabs(double(w[i])));
    for (int64_t i = 0; i < n.outputs[0].numel(); ++i) {
      const double d = std::fabs(double(g[i]) - w[i]) / std::max(scale, 1e-6);
      if (d > worst) worst = d, where = n.name + "[" + std::to_string(i) + "]";
    }
  }
  EXPECT_LT(worst, 1e-5) << "largest parameter difference at " << where;
}

const std::string kMlp = "mlp:8-16-16-4";
const std::string kGpt = "gpt:layers=2,d_model=16,heads=4,seq=8,vocab=32";

TEST(Equivalence, DataParallelAndZero) {
  for (const Case& k : std::vector<Case>{{kMlp, 8, cfg(2, 1)}, {kMlp, 12, cfg(3, 1)}, {kMlp, 8, cfg(4, 1)},
                                         {kMlp, 16, cfg(8, 1)}, {kMlp, 8, cfg(2, 1, 1)}, {kMlp, 8, cfg(4, 1, 2)},
                                         {kMlp, 8, cfg(2, 1, 3)}, {kMlp, 8, cfg(4, 1, 3)},
                                         {kGpt, 4, cfg(2, 1), "sgd"}, {kGpt, 4, cfg(4, 1, 1), "sgd"},
                                         {kGpt, 4, cfg(2, 1, 3), "sgd"}})
    check(k);
}

TEST(Equivalence, GradientBucketsOfAnySize) {
  // One bucket per gradient, a few, and all in one.
  for (int64_t b : {1, 600, 1 << 20}) check({kMlp, 8, cfg(2, 1), "adamw", 0, b});
}

TEST(Equivalence, TensorAndSequenceParallel) {
  for (const Case& k : std::vector<Case>{{kMlp, 8, cfg(1, 2)}, {kMlp, 8, cfg(1, 4)}, {kGpt, 4, cfg(1, 2), "sgd"},
                                         {kGpt, 4, cfg(1, 4), "sgd"}, {kGpt, 4, cfg(1, 2, 0, 1, 1, true), "sgd"},
                                         {kGpt, 4, cfg(1, 4, 0, 1, 1, true), "sgd"}})
    check(k);
}

TEST(Equivalence, PipelinesWithGPipeAnd1F1BAndGradientAccumulation) {
  for (const Case& k : std::vector<Case>{
           {kMlp, 8, cfg(1, 1, 0, 1, 4)},                          // gradient accumulation alone
           {kMlp, 8, cfg(1, 1, 0, 2, 1)},  {kMlp, 8, cfg(1, 1, 0, 2, 4)},
           {kMlp, 8, cfg(1, 1, 0, 2, 4, false, Schedule::gpipe)},  {kMlp, 8, cfg(1, 1, 0, 3, 2)},
           {kMlp, 8, cfg(1, 1, 0, 4, 8)},  {kGpt, 4, cfg(1, 1, 0, 2, 2), "sgd"},
           {kGpt, 4, cfg(1, 1, 0, 3, 4, false, Schedule::gpipe), "sgd"}, {kGpt, 8, cfg(1, 1, 0, 4, 4), "sgd"}})
    check(k);
}

TEST(Equivalence, CombinedStrategies) {
  for (const Case& k : std::vector<Case>{
           {kMlp, 8, cfg(2, 2)},  {kMlp, 16, cfg(2, 1, 0, 2, 2)}, {kMlp, 8, cfg(1, 2, 0, 2, 2)},
           {kMlp, 16, cfg(2, 2, 1, 2, 2)}, {kGpt, 4, cfg(2, 2), "sgd"}, {kGpt, 8, cfg(2, 1, 0, 2, 2), "sgd"},
           {kGpt, 4, cfg(1, 2, 0, 2, 2), "sgd"}, {kGpt, 8, cfg(2, 2, 0, 2, 2, true), "sgd"},
           {kGpt, 8, cfg(2, 2, 1, 2, 2), "sgd"}})
    check(k);
}

TEST(Equivalence, ClippingByTheGlobalNormAcrossStages) {
  for (const Case& k : std::vector<Case>{{kMlp, 8, cfg(2, 1, 0, 2, 2), "adamw", 0.05},
                                         {kGpt, 8, cfg(2, 2, 0, 2, 2), "sgd", 0.05}})
    check(k);
}

}  // namespace
}  // namespace tessel::runtime
