// The proof that a plan trains the same model as one device: for the MLP and a small GPT,
// every strategy runs 5 optimizer steps (tessel::verify_plan) on simulated devices (threads of this process,
// real collectives through the in-process communicator) and must give the same losses and
// the same parameters as one device running the whole batch.
//
// Under a launcher (tessel launch --nproc N, mpirun -n N) every process runs this suite as
// one rank of its world: the cases for N devices run, each process running its rank over
// Gloo (or the engine TESSEL_TEST_COMM names: mpi); the others are skipped. ctest runs it so.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <optional>

#include "graph/error.h"
#include "frontend/distributed.h"
#include "runtime/process_env.h"

namespace tessel {
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

// This process's world under a launcher (none: every case runs on simulated devices).
const std::optional<runtime::ProcessRole>& launched() {
  static const std::optional<runtime::ProcessRole> role = [] {
    std::optional<runtime::ProcessRole> r = runtime::process_role();
    if (r && r->size == 1) r.reset();
    return r;
  }();
  return role;
}

bool runs_here(int64_t devices) { return !launched() || launched()->size == devices; }

std::string engine() {
  const char* e = std::getenv("TESSEL_TEST_COMM");
  return e ? e : "";
}

void check(const Case& k) {
  SCOPED_TRACE(k.spec + " " + k.config.str() + " (" + k.optimizer + ")");
  VerifyOptions o;
  o.comm = engine();
  o.spec = k.spec;
  o.batch = k.batch;
  o.steps = 5;
  o.seed = 11;
  o.optimizer.kind = k.optimizer;
  o.optimizer.lr = 0.01;
  o.optimizer.momentum = 0.9;
  o.optimizer.clip_norm = k.clip_norm;
  o.rank.bucket_bytes = k.bucket_bytes;
  o.timeout_s = 60;
  DevicePlan plan;
  plan.config = k.config;
  const VerifyReport r = verify_plan(o, plan);
  EXPECT_LE(r.max_rel_diff_loss, 1e-5);
  EXPECT_LE(r.max_rel_diff_params, 1e-5) << "at " << r.worst_parameter;
  EXPECT_TRUE(r.ok);
  ASSERT_EQ(r.loss_one.size(), 5u);
  EXPECT_NE(r.loss_one.front(), r.loss_one.back()) << "the model must train";
}

// The cases for this world (all of them on simulated devices); skips the test if none is.
void check_all(const std::vector<Case>& cases) {
  int ran = 0;
  for (const Case& k : cases)
    if (runs_here(k.config.devices())) {
      check(k);
      ++ran;
    }
  if (ran == 0) GTEST_SKIP() << "no case of this test is for a world of " << launched()->size;
}

const std::string kMlp = "mlp:8-16-16-4";
const std::string kGpt = "gpt:layers=2,d_model=16,heads=4,seq=8,vocab=32";

TEST(Equivalence, DataParallelAndZero) {
  check_all(std::vector<Case>{{kMlp, 8, cfg(2, 1)}, {kMlp, 12, cfg(3, 1)}, {kMlp, 8, cfg(4, 1)},
                                         {kMlp, 16, cfg(8, 1)}, {kMlp, 8, cfg(2, 1, 1)}, {kMlp, 8, cfg(4, 1, 2)},
                                         {kMlp, 8, cfg(2, 1, 3)}, {kMlp, 8, cfg(4, 1, 3)},
                                         {kGpt, 4, cfg(2, 1), "sgd"}, {kGpt, 4, cfg(4, 1, 1), "sgd"},
                                         {kGpt, 4, cfg(2, 1, 3), "sgd"}});
}

TEST(Equivalence, GradientBucketsOfAnySize) {
  // One bucket per gradient, a few, and all in one.
  std::vector<Case> cases;
  for (int64_t b : {1, 600, 1 << 20}) cases.push_back({kMlp, 8, cfg(2, 1), "adamw", 0, b});
  check_all(cases);
}

TEST(Equivalence, TensorAndSequenceParallel) {
  check_all(std::vector<Case>{{kMlp, 8, cfg(1, 2)}, {kMlp, 8, cfg(1, 4)}, {kGpt, 4, cfg(1, 2), "sgd"},
                                         {kGpt, 4, cfg(1, 4), "sgd"}, {kGpt, 4, cfg(1, 2, 0, 1, 1, true), "sgd"},
                                         {kGpt, 4, cfg(1, 4, 0, 1, 1, true), "sgd"}});
}

TEST(Equivalence, PipelinesWithGPipeAnd1F1BAndGradientAccumulation) {
  check_all(std::vector<Case>{
           {kMlp, 8, cfg(1, 1, 0, 1, 4)},                          // gradient accumulation alone
           {kMlp, 8, cfg(1, 1, 0, 2, 1)},  {kMlp, 8, cfg(1, 1, 0, 2, 4)},
           {kMlp, 8, cfg(1, 1, 0, 2, 4, false, Schedule::gpipe)},  {kMlp, 8, cfg(1, 1, 0, 3, 2)},
           {kMlp, 8, cfg(1, 1, 0, 4, 8)},  {kGpt, 4, cfg(1, 1, 0, 2, 2), "sgd"},
           {kGpt, 4, cfg(1, 1, 0, 3, 4, false, Schedule::gpipe), "sgd"}, {kGpt, 8, cfg(1, 1, 0, 4, 4), "sgd"}});
}

TEST(Equivalence, CombinedStrategies) {
  check_all(std::vector<Case>{
           {kMlp, 8, cfg(2, 2)},  {kMlp, 16, cfg(2, 1, 0, 2, 2)}, {kMlp, 8, cfg(1, 2, 0, 2, 2)},
           {kMlp, 16, cfg(2, 2, 1, 2, 2)}, {kGpt, 4, cfg(2, 2), "sgd"}, {kGpt, 8, cfg(2, 1, 0, 2, 2), "sgd"},
           {kGpt, 4, cfg(1, 2, 0, 2, 2), "sgd"}, {kGpt, 8, cfg(2, 2, 0, 2, 2, true), "sgd"},
           {kGpt, 8, cfg(2, 2, 1, 2, 2), "sgd"}});
}

TEST(Equivalence, OneToEightDevicesIncludingOddWorldSizes) {
  check_all(std::vector<Case>{{kMlp, 8, cfg(1, 1)}, {kGpt, 4, cfg(1, 1), "sgd"},
                                         {kMlp, 6, cfg(3, 1)}, {kMlp, 8, cfg(1, 1, 0, 3, 4)}, {kGpt, 6, cfg(3, 1, 1), "sgd"},
                                         {kGpt, 4, cfg(1, 1, 0, 3, 2), "sgd"}, {kMlp, 16, cfg(2, 2, 0, 2, 2)},
                                         {kGpt, 8, cfg(2, 2, 0, 2, 2), "sgd"}, {kGpt, 8, cfg(8, 1, 2), "sgd"},
                                         {kGpt, 4, cfg(2, 4), "sgd"}});
}

TEST(Equivalence, TheAutomaticPlanOnEveryDeviceCount) {
  for (const std::string& spec : {kMlp, kGpt})
    for (int64_t n : {1, 2, 3, 4, 8}) {
      if (!runs_here(n)) continue;
      SCOPED_TRACE(spec + " on " + std::to_string(n));
      OptimizerConfig oc;
      oc.kind = "sgd";
      const int64_t batch = 24;  // splits over 1, 2, 3, 4 and 8 replicas
      DevicePlan plan = plan_for_devices(training_graph(spec, batch, oc), n, planner::Pins{});
      EXPECT_EQ(plan.config.devices(), n);
      VerifyOptions o;
      o.spec = spec;
      o.batch = batch;
      o.optimizer = oc;
      o.optimizer.momentum = 0.9;
      o.seed = 3;
      o.comm = engine();
      const VerifyReport r = verify_plan(o, plan);
      EXPECT_TRUE(r.ok) << plan.config.str() << ": loss " << r.max_rel_diff_loss << ", params " << r.max_rel_diff_params
                        << " at " << r.worst_parameter;
    }
}

TEST(Equivalence, PlansThatCannotSplitAreRefusedWithTheReason) {
  OptimizerConfig oc;
  auto refused = [&](const std::string& spec, int64_t batch, int64_t devices, planner::Pins pins) {
    try {
      plan_for_devices(training_graph(spec, batch, oc), devices, pins);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  planner::Pins dp3;
  dp3.dp = 3;
  EXPECT_THAT(refused(kMlp, 8, 3, dp3), ::testing::HasSubstr("batch 8 does not split over dp=3"));
  planner::Pins pp5;
  pp5.pp = 5;
  EXPECT_THAT(refused(kMlp, 8, 5, pp5), ::testing::HasSubstr("exceeds the 4 layers"));
  planner::Pins two;
  two.dp = 2;
  EXPECT_THAT(refused(kMlp, 8, 4, two), ::testing::HasSubstr("uses 2 of the 4 devices"));
}

PlanConfig recompute(PlanConfig c, planner::Recompute r) {
  c.recompute = r;
  return c;
}

TEST(Equivalence, RecomputationFullAndSelective) {
  using planner::Recompute;
  check_all(std::vector<Case>{
           {kMlp, 8, recompute(cfg(1, 1), Recompute::full)}, {kMlp, 8, recompute(cfg(2, 1, 0, 2, 4), Recompute::full)},
           {kGpt, 4, recompute(cfg(1, 1), Recompute::full), "sgd"},
           {kGpt, 8, recompute(cfg(2, 2, 0, 2, 2), Recompute::full), "sgd"},
           {kGpt, 4, recompute(cfg(1, 2, 0, 1, 2, true), Recompute::full), "sgd"},
           {kGpt, 4, recompute(cfg(1, 1, 0, 1, 2), Recompute::selective), "sgd"},
           {kGpt, 8, recompute(cfg(2, 2, 0, 2, 2), Recompute::selective), "sgd"}});
}

TEST(Equivalence, RecomputationKeepsLessThanStoringActivations) {
  if (!runs_here(2)) GTEST_SKIP() << "two devices";
  // With 4 microbatches in flight on one stage, what the forward keeps dominates the arena.
  for (bool jit : {false, true}) {
  auto arena = [jit](planner::Recompute r) {
    VerifyOptions o;
    o.rank.jit = jit;
    o.spec = "gpt:layers=4,d_model=32,heads=4,seq=16,vocab=32";
    o.batch = 8;
    o.steps = 1;
    o.optimizer.kind = "sgd";
    o.comm = engine();
    DevicePlan plan;
    plan.config = recompute(cfg(1, 1, 0, 2, 4, false, Schedule::gpipe), r);
    const VerifyReport rep = verify_plan(o, plan);
    EXPECT_TRUE(rep.ok);
    return rep.arena_bytes.at(0);
  };
  const int64_t none = arena(planner::Recompute::none), full = arena(planner::Recompute::full),
                selective = arena(planner::Recompute::selective);
  // Fused kernels keep fewer intermediates to begin with, so recomputation saves less.
  EXPECT_LT(full, none * (jit ? 0.7 : 0.6)) << full << " vs " << none << (jit ? " with the JIT" : "");
  EXPECT_LT(selective, none) << selective << " vs " << none;
  EXPECT_LT(full, selective);
  std::printf("arena, jit %d: none %lld, full %lld, selective %lld\n", jit, static_cast<long long>(none),
              static_cast<long long>(full), static_cast<long long>(selective));
  }
}

TEST(Equivalence, ClippingByTheGlobalNormAcrossStages) {
  check_all(std::vector<Case>{{kMlp, 8, cfg(2, 1, 0, 2, 2), "adamw", 0.05},
                                         {kGpt, 8, cfg(2, 2, 0, 2, 2), "sgd", 0.05}});
}

}  // namespace
}  // namespace tessel
