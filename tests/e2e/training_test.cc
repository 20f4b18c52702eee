// The acceptance runs of the core issue, end to end through the CLI on real data. Slow:
// labelled "slow" in ctest (CI runs them).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "cli_util.h"

namespace tessel {
namespace {

using testing::json_value;
using testing::last_line;
using testing::run_cli;

TEST(Training, MlpOneEpochReachesPyTorchAccuracy) {
  auto r = run_cli("train --model mlp:784-1024-1024-10 --dataset fashion-mnist --epochs 1 --batch 256 "
                   "--optimizer sgd --lr 0.05 --momentum 0.9 --seed 1 --format json");
  ASSERT_EQ(r.status, 0) << r.err;
  std::string j = last_line(r.out);
  // PyTorch 1.13 on the same settings: 83.1-83.9 %.
  EXPECT_GE(json_value(j, "test_accuracy"), 0.831) << j;
  EXPECT_EQ(json_value(j, "steps"), 234);
}

TEST(Training, MlpFiveEpochsReach87Percent) {
  auto r = run_cli("train --model mlp:784-1024-1024-10 --dataset fashion-mnist --epochs 5 --batch 256 "
                   "--optimizer sgd --lr 0.05 --momentum 0.9 --seed 1 --format json");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_GE(json_value(last_line(r.out), "test_accuracy"), 0.87) << r.out;
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
  EXPECT_LT(json_value(j, "final_loss"), h - 1.0) << j;
  EXPECT_LT(json_value(j, "test_loss"), h - 0.5) << j;
}

}  // namespace
}  // namespace tessel
