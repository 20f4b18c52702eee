// The acceptance runs of the core issue, end to end through the CLI on real data. Slow:
// labelled "slow" in ctest (CI runs them).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "cli_util.h"

using ::testing::HasSubstr;

namespace tessel {
namespace {

using testing::json_value;
using testing::last_line;
using testing::run_cli;

TEST(Training, MlpOneEpochReachesPyTorchAccuracy) {
  // PyTorch 1.13 on the same settings: 83.1-83.9 % (the issue); measured here with
  // bench/torch_mnist.py over seeds 1-6: 81.9-83.7 %, mean 82.7 %. One seed is noisy (tessel
  // spans about 1 % over seeds too), so the mean of three seeds must reach 83.1 %.
  double sum = 0;
  for (int seed : {1, 2, 3}) {
    auto r = run_cli("train --model mlp:784-1024-1024-10 --dataset fashion-mnist --epochs 1 --batch 256 "
                     "--optimizer sgd --lr 0.05 --momentum 0.9 --seed " + std::to_string(seed) + " --format json");
    ASSERT_EQ(r.status, 0) << r.err;
    std::string j = last_line(r.out);
    EXPECT_EQ(json_value(j, "steps"), 234);
    EXPECT_GE(json_value(j, "test_accuracy"), 0.82) << "seed " << seed << ": " << j;
    sum += json_value(j, "test_accuracy");
  }
  EXPECT_GE(sum / 3, 0.831);
}

TEST(Training, MlpFiveEpochsReach87Percent) {
  auto r = run_cli("train --model mlp:784-1024-1024-10 --dataset fashion-mnist --epochs 5 --batch 256 "
                   "--optimizer sgd --lr 0.05 --momentum 0.9 --seed 1 --format json");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_GE(json_value(last_line(r.out), "test_accuracy"), 0.87) << r.out;
}

TEST(Training, FourSimulatedDevicesReachTheAccuracyOfOne) {
  // The runtime issue's command as written, and the same training on one device.
  const std::string cmd = "train --model mlp:784-1024-1024-10 --dataset fashion-mnist --epochs 1 --batch 256 "
                          "--optimizer sgd --lr 0.05 --momentum 0.9";
  auto four = run_cli(cmd + " --devices 4 --auto --format json");
  ASSERT_EQ(four.status, 0) << four.err;
  auto one = run_cli(cmd + " --format json");
  ASSERT_EQ(one.status, 0) << one.err;
  const std::string j4 = last_line(four.out), j1 = last_line(one.out);
  EXPECT_EQ(json_value(j4, "devices"), 4) << j4;
  EXPECT_EQ(json_value(j4, "steps"), 234);
  EXPECT_THAT(four.err, HasSubstr("plan: dp="));
  // The same training up to f32 rounding, which 234 SGD steps amplify a little.
  EXPECT_GE(json_value(j4, "test_accuracy"), 0.82) << j4;
  EXPECT_NEAR(json_value(j4, "test_accuracy"), json_value(j1, "test_accuracy"), 0.01) << j4 << "\n" << j1;
}

TEST(Training, GradientAccumulationTrainsTheSameModel) {
  auto r = run_cli("train --model mlp:784-256-10 --dataset fashion-mnist --steps 100 --batch 128 --accumulate 4 "
                   "--optimizer sgd --lr 0.05 --momentum 0.9 --seed 1 --format json");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_GE(json_value(last_line(r.out), "test_accuracy"), 0.75) << r.out;
}

TEST(Training, GptLossFallsWellBelowUnigramEntropy) {
  const std::string text = "/usr/share/common-licenses/GPL-3";
  ASSERT_TRUE(std::filesystem::exists(text)) << text;
  auto r = run_cli("train --model gpt:layers=4,d_model=256,heads=4,seq=128,vocab=256 --dataset text:" + text +
                   " --steps 300 --batch 16 --optimizer adamw --lr 3e-4 --format json");
  ASSERT_EQ(r.status, 0) << r.err;
  std::string j = last_line(r.out);
  double h = json_value(j, "unigram_entropy");
  EXPECT_GT(h, 2.5) << j;
  // Measured: unigram entropy 3.14 nats/byte, final training loss 2.09, validation 2.50.
  EXPECT_LT(json_value(j, "final_loss"), 0.75 * h) << j;
  EXPECT_LT(json_value(j, "test_loss"), 0.85 * h) << j;
}

// The planner's acceptance commands; slow under sanitizers (a GPT-3 search), so here.
TEST(Planning, PlanCommandsAsWritten) {
  const std::string gpt3 = "--model gpt:layers=96,d_model=12288,heads=96,seq=2048,vocab=51200 --batch 1536 ";
  auto r = run_cli("plan " + gpt3 + "--cluster a100-80g:nodes=128 --format json");
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* k : {"step_time_s", "model_flops_per_step", "hardware_flops_per_step", "tflops_per_device", "mfu",
                        "peak_memory_bytes", "mesh", "stages", "search_time_s", "alternatives"})
    EXPECT_THAT(r.out, HasSubstr(std::string("\"") + k + "\"")) << k;
  EXPECT_LT(json_value(r.out, "search_time_s"), 10.0);
  EXPECT_GT(json_value(r.out, "mfu"), 0.1);
  EXPECT_LT(json_value(r.out, "mfu"), 1.0);
  r = run_cli("plan " + gpt3 + "--cluster a100-80g:nodes=128 --tp 8 --pp 16 --dp 8 --microbatches 192 --recompute full");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("pp=16 x dp=8 x tp=8"));
  EXPECT_THAT(r.out, HasSubstr("recompute=full"));
  EXPECT_THAT(r.out, HasSubstr("alternatives"));
  const std::string dir = testing::temp_dir();
  r = run_cli("plan --model mlp:784-1024-1024-10 --batch 256 --cluster local:4 --dot " + dir + "/plan.dot --trace " + dir +
              "/plan.json");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(testing::slurp(dir + "/plan.dot"), HasSubstr("digraph"));
  EXPECT_THAT(testing::slurp(dir + "/plan.json"), HasSubstr("traceEvents"));
  r = run_cli("plan --model mlp:784-10 --cluster local:4 --tp 3");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.err, HasSubstr("tp=3"));
}

}  // namespace
}  // namespace tessel
