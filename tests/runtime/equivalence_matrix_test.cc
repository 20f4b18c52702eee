// The equivalence matrix: every strategy on 1, 2, 3, 4 and 8 simulated devices for the MLP
// and a small GPT, through the planner (pins) and tessel::verify_plan. Under a launcher
// (tessel launch --nproc N, mpirun -n N) each process runs its rank of the combinations for N
// devices, over Gloo or the engine TESSEL_TEST_COMM names.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>

#include "frontend/distributed.h"
#include "graph/error.h"
#include "runtime/process_env.h"

namespace tessel {
namespace {

using planner::Schedule;

// Every strategy on 1, 2, 3, 4 and 8 devices, for both models: each combination the planner
// accepts must train what one device trains; each it refuses must say why. Combinations
// whose degrees cannot multiply to the device count (tp x pp on 3) are not asked for.
TEST(EquivalenceMatrix, EveryStrategyOnOneToEightDevicesWorksOrIsRefusedWithAReason) {
  struct Strategy {
    std::string name;
    std::function<std::optional<planner::Pins>(int64_t)> pins;  // nullopt: not a combination for n
  };
  auto pins = [](std::optional<int64_t> dp, std::optional<int64_t> tp, std::optional<int64_t> pp, int zero = 0,
                 int64_t mb = 1, planner::Schedule s = Schedule::one_f_one_b,
                 planner::Recompute r = planner::Recompute::none, bool sp = false) {
    planner::Pins p;
    p.dp = dp, p.tp = tp, p.pp = pp, p.zero = zero, p.microbatches = mb, p.schedule = s, p.recompute = r;
    p.sequence_parallel = sp;
    return p;
  };
  auto split2 = [](int64_t n) -> std::optional<std::pair<int64_t, int64_t>> {  // n = a x b with a, b >= 2
    if (n == 4) return std::make_pair(int64_t{2}, int64_t{2});
    if (n == 8) return std::make_pair(int64_t{4}, int64_t{2});
    return std::nullopt;
  };
  const std::vector<Strategy> strategies{
      {"dp", [&](int64_t n) { return pins(n, 1, 1); }},
      {"zero1", [&](int64_t n) { return pins(n, 1, 1, 1); }},
      {"zero2", [&](int64_t n) { return pins(n, 1, 1, 2); }},
      {"zero3", [&](int64_t n) { return pins(n, 1, 1, 3); }},
      {"tp", [&](int64_t n) { return pins(1, n, 1); }},
      {"tp+sp", [&](int64_t n) { return pins(1, n, 1, 0, 1, Schedule::one_f_one_b, planner::Recompute::none, n > 1); }},
      {"pp gpipe", [&](int64_t n) { return pins(1, 1, n, 0, 3, Schedule::gpipe); }},
      {"pp 1f1b", [&](int64_t n) { return pins(1, 1, n, 0, 3); }},
      {"dp x tp", [&](int64_t n) -> std::optional<planner::Pins> {
         auto s = split2(n);
         return s ? std::optional(pins(s->first, s->second, 1)) : std::nullopt;
       }},
      {"dp x pp", [&](int64_t n) -> std::optional<planner::Pins> {
         auto s = split2(n);
         return s ? std::optional(pins(s->second, 1, s->first, 0, 2)) : std::nullopt;
       }},
      {"tp x pp", [&](int64_t n) -> std::optional<planner::Pins> {
         auto s = split2(n);
         return s ? std::optional(pins(1, s->second, s->first, 0, 2)) : std::nullopt;
       }},
      {"dp x tp x pp", [&](int64_t n) -> std::optional<planner::Pins> {
         return n == 8 ? std::optional(pins(2, 2, 2, 1, 2)) : std::nullopt;
       }},
      {"accumulation", [&](int64_t n) { return pins(n, 1, 1, 0, 3); }},
      {"recompute", [&](int64_t n) { return pins(1, 1, n, 0, 3, Schedule::one_f_one_b, planner::Recompute::full); }},
  };
  std::optional<runtime::ProcessRole> world = runtime::process_role();
  if (world && world->size == 1) world.reset();
  const char* engine = std::getenv("TESSEL_TEST_COMM");
  int worked = 0, refused = 0;
  for (const std::string spec : {"mlp:8-24-24-4", "gpt:layers=2,d_model=24,heads=4,seq=8,vocab=32"})
    for (const Strategy& st : strategies)
      for (int64_t n : {1, 2, 3, 4, 8}) {
        const auto p = st.pins(n);
        if (!p || (world && world->size != n)) continue;
        SCOPED_TRACE(spec + " " + st.name + " on " + std::to_string(n));
        OptimizerConfig oc;
        oc.kind = "sgd";
        oc.lr = 0.01;
        oc.momentum = 0.9;
        DevicePlan plan;
        try {
          plan = plan_for_devices(training_graph(spec, 24, oc), n, *p);
        } catch (const Error& e) {
          ++refused;
          std::printf("refused: %s %s on %lld: %s\n", spec.c_str(), st.name.c_str(), static_cast<long long>(n), e.what());
          EXPECT_THAT(e.what(), ::testing::AnyOf(::testing::HasSubstr("does not split"), ::testing::HasSubstr("exceeds"),
                                                 ::testing::HasSubstr("does not divide")));
          continue;
        }
        VerifyOptions o;
        o.spec = spec;
        o.batch = 24;
        o.optimizer = oc;
        o.seed = 7;
        o.comm = engine ? engine : "";
        const VerifyReport r = verify_plan(o, plan);
        EXPECT_TRUE(r.ok) << plan.config.str() << ": loss " << r.max_rel_diff_loss << ", params "
                          << r.max_rel_diff_params << " at " << r.worst_parameter;
        ++worked;
      }
  std::printf("%d combinations trained as on one device, %d refused with a reason\n", worked, refused);
  EXPECT_GT(worked, 3 * refused);
}

}  // namespace
}  // namespace tessel
