// The randomized equivalence search (tests/runtime/equivalence_fuzz.h): seeded random
// models (MLPs, GPTs) and plans (devices 1-8; dp, tp, pp, ZeRO 0-3, sequence parallelism,
// microbatches, pipeline schedules, recomputation, stage layouts, SGD/AdamW, clipping,
// buckets), each run as `tessel verify` runs it and compared with one device. A refusal by
// the planner must be a tessel::Error with a reason; every failure prints its `tessel verify`
// command line, which reproduces it when pasted.
//
// The fast slice (EquivalenceFuzz.FastSlice) runs a fixed set of cases in the suite; planted
// mistakes prove that the search can fail.
//
// Soak: the same binary, with a case count and a seed from the environment:
//   TESSEL_SOAK_CASES=1000 TESSEL_SOAK_SEED=1 build/tests/equivalence_fuzz_test --gtest_filter='*Soak*'
// prints each case's command line and outcome, then a summary: cases run, accepted, refused
// by reason, failed (with their reproduction lines). TESSEL_SOAK_FIRST=K starts at case K
// (to resume or split a soak over several processes).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <iostream>

#include "tests/e2e/cli_util.h"
#include "tests/runtime/equivalence_fuzz.h"
#include "tests/runtime/planted_mistakes.h"

namespace tessel::fuzz {
namespace {

// The fast slice: cases [0, kSliceCases) of the search seeded kSliceSeed.
constexpr uint64_t kSliceSeed = 2024;
constexpr int64_t kSliceCases = 200;

std::string failures(const Summary& s) {
  std::string all;
  for (auto& f : s.failures) all += f + "\n";
  return all;
}

TEST(EquivalenceFuzz, FastSlice) {
  const Summary s = run_search(kSliceSeed, 0, kSliceCases);
  std::cout << s.str();
  EXPECT_EQ(s.failed, 0) << "each line reproduces a failure:\n" << failures(s);
  // The generator is biased towards accepted plans; refusals are counted, not failures.
  EXPECT_GT(s.accepted, 2 * s.refused_total()) << s.str();
  for (const Family& f : families()) EXPECT_GT(s.families.count(f.name) ? s.families.at(f.name) : 0, 10) << f.name;
}

// Every refusal is a tessel::Error whose reason falls in a known category; drawing is
// deterministic (a case is its seed).
TEST(EquivalenceFuzz, RefusalsSayWhyAndCasesAreDeterministic) {
  for (int64_t i = 0; i < 40; ++i) {
    const Case c = draw_case(case_seed(kSliceSeed, i));
    EXPECT_EQ(c.command_line(), draw_case(case_seed(kSliceSeed, i)).command_line());
  }
  EXPECT_EQ(refusal_category("plan: no configuration satisfies the pins on 4 devices: batch 6 does not split over "
                             "dp=4; tp=2 does not divide dim 0 of x"),
            "batch does not split");
  EXPECT_EQ(refusal_category("plan: no configuration satisfies the pins on 2 devices: tp=2 does not divide dim 1 of "
                             "fc1/matmul f32[4,7]"),
            "tp does not divide a dim");
}

// A case's command line, run by the tessel binary, computes what the search computed.
TEST(EquivalenceFuzz, TheReproductionLineRunsTheSameCase) {
  int checked = 0;
  for (int64_t i = 0; checked < 3 && i < 40; ++i) {
    const Case c = draw_case(case_seed(kSliceSeed, i));
    const Outcome o = run_case(c);
    if (o.kind != Outcome::passed) continue;
    const std::string line = c.command_line();
    const auto r = testing::run_cli(line.substr(std::string("tessel ").size()) + " --format json");
    ASSERT_EQ(r.status, 0) << line << "\n" << r.out << r.err;
    const std::string j = testing::last_line(r.out);
    EXPECT_NEAR(testing::json_value(j, "max_rel_diff_loss"), o.loss_diff, 1e-6 * std::max(o.loss_diff, 1e-6)) << line;
    EXPECT_NEAR(testing::json_value(j, "max_rel_diff_params"), o.param_diff, 1e-6 * std::max(o.param_diff, 1e-6)) << line;
    ++checked;
  }
  EXPECT_EQ(checked, 3);
}

// The slice over one process per rank: its first 6 accepted cases on 2 and 6 on 4 devices, each
// run with one process per rank: under `tessel launch` (Gloo between processes over loopback,
// the TCP store), and under `mpirun` with the MPI engine. Each passes as it passes on
// simulated devices.
class SliceOverProcesses : public ::testing::TestWithParam<std::string> {};

TEST_P(SliceOverProcesses, PassesAsOnSimulatedDevices) {
  const bool mpi = GetParam() == "mpirun";
  if (mpi && std::system("command -v mpirun >/dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun is not installed (openmpi-bin)";
  std::map<int, int> wanted{{2, 6}, {4, 6}}, done;
  int64_t tried = 0;
  for (int64_t i = 0; i < kSliceCases && (done[2] < wanted[2] || done[4] < wanted[4]); ++i) {
    const Case c = draw_case(case_seed(kSliceSeed, i));
    auto d = std::find(c.args.begin(), c.args.end(), "--devices");
    if (d == c.args.end()) continue;
    const int devices = std::stoi(d[1]);
    if (!wanted.count(devices) || done[devices] >= wanted[devices]) continue;
    if (run_case(c).kind != Outcome::passed) continue;  // refused: nothing to run
    std::string args;
    for (auto it = c.args.begin(); it != c.args.end(); ++it) {
      if (it == d) {
        ++it;  // the launcher's world is the devices
        continue;
      }
      args += " '" + *it + "'";
    }
    const std::string n = std::to_string(devices);
    const auto r = mpi ? testing::run_cli_as("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun -n " +
                                             n + " --oversubscribe " + TESSEL_CLI, "verify" + args + " --comm mpi --format json")
                       : testing::run_cli("launch --nproc " + n + " -- " + TESSEL_CLI + " verify" + args + " --format json");
    ++tried;
    EXPECT_EQ(r.status, 0) << "over " << devices << " processes (" << GetParam() << "): " << c.command_line() << "\n"
                           << r.out << r.err;
    EXPECT_NE(r.out.find("\"ok\":true"), std::string::npos) << c.command_line() << "\n" << r.out;
    ++done[devices];
  }
  EXPECT_EQ(done[2], wanted[2]);
  EXPECT_EQ(done[4], wanted[4]);
  std::cout << tried << " cases of the slice passed over 2 and 4 processes (" << GetParam() << ")\n";
}

INSTANTIATE_TEST_SUITE_P(EquivalenceFuzz, SliceOverProcesses, ::testing::Values("tessel_launch", "mpirun"));

// Planted mistakes: the search must report failures. Each runs the first cases of the fast
// slice (for the shard shift, those with a sequence-parallel or ZeRO plan) with the
// rank programs corrupted; a case the corruption does not apply to counts for nothing.
struct Planted {
  const char* name;
  Corruption corrupt;
  int64_t cases;
  std::function<bool(const Case&)> only;
};

bool has_arg(const Case& c, const std::string& a) { return std::find(c.args.begin(), c.args.end(), a) != c.args.end(); }

class PlantedMistake : public ::testing::TestWithParam<int> {};

const std::vector<Planted>& planted() {
  static const std::vector<Planted> p{
      {"drop_all_reduce", drop_all_reduce, 40, {}},
      // AdamW divides each gradient by its own magnitude: doubling one changes almost nothing.
      {"double_gradient", double_gradient, 40, [](const Case& c) { return !has_arg(c, "adamw"); }},
      {"shift_shard", shift_shard, 120,
       [](const Case& c) {
         auto zero = std::find(c.args.begin(), c.args.end(), "--zero");
         return has_arg(c, "--sp") || (zero != c.args.end() && zero[1] != "0");
       }},
  };
  return p;
}

TEST_P(PlantedMistake, IsCaught) {
  const Planted& p = planted().at(static_cast<size_t>(GetParam()));
  // A corrupted collective may leave a rank waiting: it fails after the timeout.
  const Summary s = run_search(kSliceSeed, 0, p.cases, p.corrupt, nullptr, p.only, 10);
  std::cout << p.name << ": " << s.str();
  EXPECT_GE(s.planted, 5) << p.name << ": too few cases to plant the mistake in";
  EXPECT_EQ(s.failed, s.caught) << p.name << ": failures without a planted mistake:\n" << failures(s);
  EXPECT_GE(s.caught, s.planted * 9 / 10) << p.name << ": caught " << s.caught << " of " << s.planted;
}

INSTANTIATE_TEST_SUITE_P(EquivalenceFuzz, PlantedMistake, ::testing::Values(0, 1, 2),
                         [](const ::testing::TestParamInfo<int>& i) { return std::string(planted()[i.param].name); });

// TESSEL_SOAK_PLANT=NAME (one of the planted mistakes above) soaks with that mistake in every
// case it applies to: the soak must then catch it as the fast slice does.
TEST(EquivalenceFuzz, Soak) {
  const char* cases = std::getenv("TESSEL_SOAK_CASES");
  if (!cases)
    GTEST_SKIP() << "set TESSEL_SOAK_CASES=N (and TESSEL_SOAK_SEED=S, TESSEL_SOAK_FIRST=K, TESSEL_SOAK_PLANT=NAME) to soak";
  const char* seed = std::getenv("TESSEL_SOAK_SEED");
  const char* first = std::getenv("TESSEL_SOAK_FIRST");
  const char* plant = std::getenv("TESSEL_SOAK_PLANT");
  const Planted* p = nullptr;
  if (plant) {
    for (const Planted& q : planted())
      if (q.name == std::string(plant)) p = &q;
    ASSERT_NE(p, nullptr) << "TESSEL_SOAK_PLANT=" << plant << ": not one of drop_all_reduce, double_gradient, shift_shard";
  }
  const Summary s = run_search(seed ? std::strtoull(seed, nullptr, 10) : 1, first ? std::atoll(first) : 0,
                               std::atoll(cases), p ? p->corrupt : Corruption{}, &std::cout,
                               p ? p->only : std::function<bool(const Case&)>{}, p ? 10 : 0);
  std::cout << "soak seed " << (seed ? seed : "1") << (p ? std::string(", planted ") + p->name : "") << ": " << s.str();
  if (!p) {
    EXPECT_EQ(s.failed, 0) << failures(s);
    return;
  }
  EXPECT_EQ(s.failed, s.caught) << p->name << ": failures without a planted mistake:\n" << failures(s);
  EXPECT_GE(s.caught, s.planted * 9 / 10) << p->name << ": caught " << s.caught << " of " << s.planted;
}

}  // namespace
}  // namespace tessel::fuzz
