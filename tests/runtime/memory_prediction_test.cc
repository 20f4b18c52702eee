// The planner's memory prediction against what the ranks allocate: every strategy of the
// equivalence matrix on 2, 4 and 8 simulated devices, for an MLP with SGD and momentum and
// a small GPT with AdamW, at sizes where tensors (not 64-byte buffer rounding) make the
// memory. Each rank's arena, variables, inputs and outputs (runtime::RankMemory::total)
// against the plan's predicted peak for its stage, within 10 %.
//
// Each failure names the plan as a `tessel verify` command (with the stage split the search
// chose) and the rank. Heavy (about 15 s): left out of the sanitizer pass.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>

#include "frontend/distributed.h"
#include "graph/error.h"

namespace tessel {
namespace {

using planner::Recompute;
using planner::Schedule;

struct Strategy {
  std::string name;
  std::function<std::optional<planner::Pins>(int64_t)> pins;  // nullopt: not a combination for n
};

std::vector<Strategy> strategies() {
  auto pins = [](int64_t dp, int64_t tp, int64_t pp, int zero = 0, int64_t mb = 1, Schedule s = Schedule::one_f_one_b,
                 Recompute r = Recompute::none, bool sp = false) {
    planner::Pins p;
    p.dp = dp, p.tp = tp, p.pp = pp, p.zero = zero, p.microbatches = mb, p.schedule = s, p.recompute = r;
    p.sequence_parallel = sp;
    return std::optional(p);
  };
  auto split2 = [](int64_t n) -> std::optional<std::pair<int64_t, int64_t>> {
    if (n == 4) return std::make_pair(int64_t{2}, int64_t{2});
    if (n == 8) return std::make_pair(int64_t{4}, int64_t{2});
    return std::nullopt;
  };
  return {
      {"dp", [=](int64_t n) { return pins(n, 1, 1); }},
      {"zero1", [=](int64_t n) { return pins(n, 1, 1, 1); }},
      {"zero2", [=](int64_t n) { return pins(n, 1, 1, 2); }},
      {"zero3", [=](int64_t n) { return pins(n, 1, 1, 3); }},
      {"tp", [=](int64_t n) { return pins(1, n, 1); }},
      {"tp+sp", [=](int64_t n) { return pins(1, n, 1, 0, 1, Schedule::one_f_one_b, Recompute::none, true); }},
      {"pp gpipe", [=](int64_t n) { return pins(1, 1, n, 0, 3, Schedule::gpipe); }},
      {"pp 1f1b", [=](int64_t n) { return pins(1, 1, n, 0, 3); }},
      {"dp x tp", [=](int64_t n) { auto s = split2(n); return s ? pins(s->first, s->second, 1) : std::nullopt; }},
      {"dp x pp", [=](int64_t n) { auto s = split2(n); return s ? pins(s->second, 1, s->first, 0, 2) : std::nullopt; }},
      {"tp x pp", [=](int64_t n) { auto s = split2(n); return s ? pins(1, s->second, s->first, 0, 2) : std::nullopt; }},
      {"dp x tp x pp", [=](int64_t n) { return n == 8 ? pins(2, 2, 2, 1, 2) : std::nullopt; }},
      {"accumulation", [=](int64_t n) { return pins(n, 1, 1, 0, 3); }},
      {"recompute", [=](int64_t n) { return pins(1, 1, n, 0, 3, Schedule::one_f_one_b, Recompute::full); }},
  };
}

TEST(MemoryPrediction, EveryStrategyPredictsWhatEachRankAllocatesWithinTenPercent) {
  struct Model {
    std::string spec;
    int64_t batch;
    OptimizerConfig oc;
  };
  OptimizerConfig sgd;
  sgd.kind = "sgd";
  sgd.lr = 0.01;
  sgd.momentum = 0.9;
  OptimizerConfig adamw;
  adamw.kind = "adamw";
  adamw.lr = 1e-3;
  const std::vector<Model> models{{"mlp:784-256-256-10", 48, sgd},
                                  {"gpt:layers=2,d_model=64,heads=4,seq=32,vocab=256", 24, adamw}};
  int checked = 0, refused = 0;
  double worst = 0;
  std::string worst_case;
  for (const Model& m : models)
    for (const Strategy& st : strategies())
      for (int64_t n : {2, 4, 8}) {
        const auto p = st.pins(n);
        if (!p) continue;
        std::string repro = "tessel verify --model " + m.spec + " --batch " + std::to_string(m.batch) +
                                  " --optimizer " + m.oc.kind + " --devices " + std::to_string(n) + " (" + st.name + ")";
        DevicePlan plan;
        try {
          plan = plan_for_devices(training_graph(m.spec, m.batch, m.oc), n, *p);
        } catch (const Error& e) {
          ++refused;
          std::printf("refused: %s: %s\n", repro.c_str(), e.what());
          continue;
        }
        VerifyOptions o;
        o.spec = m.spec;
        o.batch = m.batch;
        o.optimizer = m.oc;
        o.steps = 1;
        o.tolerance = 1;  // memory is the question here; the equivalence suites check the numbers
        if (plan.stage_bounds.size() > 2) {  // the split the search chose, to rerun it as is
          std::string layers;
          for (size_t k = 0; k + 1 < plan.stage_bounds.size(); ++k)
            layers += (k ? "," : "") + std::to_string(plan.stage_bounds[k + 1] - plan.stage_bounds[k]);
          repro += " --stage-layers " + layers;
        }
        const VerifyReport r = verify_plan(o, plan);
        ASSERT_EQ(r.memory_bytes.size(), r.predicted_bytes.size());
        for (size_t rank = 0; rank < r.memory_bytes.size(); ++rank) {
          const double allocated = static_cast<double>(r.memory_bytes[rank]);
          const double err = (r.predicted_bytes[rank] - allocated) / allocated;
          if (std::abs(err) > worst) {
            worst = std::abs(err);
            worst_case = repro + " " + plan.config.str() + " rank " + std::to_string(rank);
          }
          EXPECT_LE(std::abs(err), 0.10) << repro << " " << plan.config.str() << ": rank " << rank << " allocates "
                                         << allocated << " bytes, the plan predicts " << r.predicted_bytes[rank];
        }
        ++checked;
      }
  std::printf("%d plans checked, %d refused; worst |predicted - allocated| / allocated %.1f %% (%s)\n", checked, refused,
              100 * worst, worst_case.c_str());
  EXPECT_GT(checked, 40);
}

}  // namespace
}  // namespace tessel
