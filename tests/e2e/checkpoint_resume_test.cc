// Checkpoints through the training driver (tessel train's): a run stopped at step k and
// resumed from its checkpoint is bit-identical to the uninterrupted run (losses and saved
// parameters) on one device and under DP, ZeRO-3, TP and PP; and a checkpoint written under
// each of DP, ZeRO-3, TP, PP (4 devices) and DP x TP x PP (8) loads under every other plan,
// on 2 devices and on 1, the loss two steps on equal to the uninterrupted run's (within the
// equivalence suite's 1e-5). Each failure prints the tessel train commands that reproduce it.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "frontend/trainer.h"
#include "runtime/checkpoint.h"
#include "runtime/safetensors.h"
#include "graph/error.h"

namespace tessel {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  std::string path;
  TempDir() {
    char t[] = "/tmp/tessel_resume_XXXXXX";
    path = ::mkdtemp(t);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (fs::path(path) / name).string(); }
};

struct Plan {
  std::string name;
  int64_t devices = 0;  // 0: one device, no plan
  int64_t dp = 1, tp = 1, pp = 1;
  int zero = 0;
  std::string flags() const {
    if (!devices) return "";
    std::string f = " --devices " + std::to_string(devices) + " --dp " + std::to_string(dp) + " --tp " + std::to_string(tp) +
                    " --pp " + std::to_string(pp) + " --zero " + std::to_string(zero);
    return f;
  }
};

const std::string kModel = "gpt:layers=4,d_model=32,heads=4,seq=16,vocab=256";

TrainOptions options(const Plan& p, int64_t steps) {
  TrainOptions o;
  o.model = kModel;
  o.dataset = std::string("text:") + TESSEL_SOURCE_DIR + "/README.md";
  o.batch = 8;
  o.steps = steps;
  o.seed = 4;
  o.optimizer.kind = "adamw";
  o.optimizer.lr = 3e-3;
  o.optimizer.weight_decay = 0.1;
  o.eval_batches = 0;
  o.quiet = true;
  o.threads = 2;
  if (p.devices) {
    o.devices = p.devices;
    o.pins.dp = p.dp;
    o.pins.tp = p.tp;
    o.pins.pp = p.pp;
    o.pins.zero = p.zero;
  }
  return o;
}

std::string command(const TrainOptions& o, const Plan& p) {
  std::string c = "tessel train --model " + kModel + " --dataset " + o.dataset + " --batch 8 --steps " +
                  std::to_string(o.steps) + " --seed 4 --optimizer adamw --lr 3e-3 --weight-decay 0.1" + p.flags();
  if (!o.checkpoint_dir.empty()) c += " --checkpoint-dir " + o.checkpoint_dir + " --checkpoint-every " + std::to_string(o.checkpoint_every);
  if (!o.resume.empty()) c += " --resume " + o.resume;
  if (!o.save.empty()) c += " --save " + o.save;
  return c;
}

TrainReport run(const TrainOptions& o, const Plan& p) {
  std::ostringstream log;
  try {
    return train(o, log);
  } catch (const Error& e) {
    ADD_FAILURE() << command(o, p) << "\n" << e.what();
    return {};
  }
}

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(Resume, IsBitIdenticalToTheUninterruptedRunOnEveryPlan) {
  const std::vector<Plan> plans = {{"one device"},
                                   {"DP", 2, 2, 1, 1, 0},
                                   {"ZeRO-3", 2, 2, 1, 1, 3},
                                   {"TP", 2, 1, 2, 1, 0},
                                   {"PP", 2, 1, 1, 2, 0},
                                   {"DP x PP, ZeRO-1", 4, 2, 1, 2, 1}};
  for (const Plan& p : plans) {
    TempDir d;
    TrainOptions whole = options(p, 6);
    whole.checkpoint_dir = d / "ckpt";
    whole.checkpoint_every = 3;
    whole.save = d / "whole.tsg";
    const TrainReport a = run(whole, p);
    TrainOptions resumed = options(p, 6);
    resumed.resume = d / "ckpt/step-00000003";
    resumed.save = d / "resumed.tsg";
    const TrainReport b = run(resumed, p);
    EXPECT_EQ(b.resumed_step, 3) << p.name;
    EXPECT_EQ(a.checkpoints, 2) << p.name;
    EXPECT_EQ(a.last_loss, b.last_loss) << p.name << ": " << command(whole, p) << "\nthen " << command(resumed, p);
    EXPECT_TRUE(bytes_of(whole.save) == bytes_of(resumed.save))
        << p.name << ": the saved parameters differ\n" << command(whole, p) << "\nthen " << command(resumed, p);
  }
}

TEST(Resume, ACheckpointLoadsUnderEveryOtherPlanAndDeviceCount) {
  const std::vector<Plan> savers = {{"DP", 4, 4, 1, 1, 0},
                                    {"ZeRO-3", 4, 4, 1, 1, 3},
                                    {"TP", 4, 1, 4, 1, 0},
                                    {"PP", 4, 1, 1, 4, 0},
                                    {"DP x TP x PP", 8, 2, 2, 2, 1}};
  std::vector<Plan> loaders = savers;
  loaders.pop_back();
  loaders.push_back({"DP on 2", 2, 2, 1, 1, 0});
  loaders.push_back({"TP on 2", 2, 1, 2, 1, 0});
  loaders.push_back({"one device"});
  for (const Plan& s : savers) {
    TempDir d;
    // Two steps after the load: the second's loss reads the update the first made with the
    // loaded optimizer state (the first's reads only the loaded parameters).
    TrainOptions save = options(s, 4);
    save.checkpoint_dir = d / "ckpt";
    save.checkpoint_every = 2;
    const TrainReport whole = run(save, s);
    ASSERT_EQ(whole.checkpoints, 2) << command(save, s);
    for (const Plan& l : loaders) {
      if (l.name == s.name) continue;
      TrainOptions load = options(l, 4);
      load.resume = d / "ckpt/step-00000002";
      const TrainReport next = run(load, l);
      EXPECT_EQ(next.resumed_step, 2);
      EXPECT_NEAR(next.last_loss, whole.last_loss, 1e-5 * std::max(1.0, std::abs(whole.last_loss)))
          << "saved under " << s.name << ", loaded under " << l.name << ": " << command(save, s) << "\nthen "
          << command(load, l);
    }
  }
}

// The error a run stops with before training, or "(accepted)".
std::string refusal(const TrainOptions& o) {
  std::ostringstream log;
  try {
    train(o, log);
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(Resume, AMismatchedRunIsRefusedNamingWhy) {
  TempDir d;
  const Plan one{"one device"};
  TrainOptions save = options(one, 2);
  save.checkpoint_dir = d / "ckpt";
  run(save, one);
  TrainOptions other_seed = options(one, 4);
  other_seed.resume = d / "ckpt";
  other_seed.seed = 5;
  EXPECT_NE(refusal(other_seed).find("--seed 4, this one has --seed 5"), std::string::npos) << refusal(other_seed);
  TrainOptions other_batch = options(one, 4);
  other_batch.resume = d / "ckpt";
  other_batch.batch = 16;
  EXPECT_NE(refusal(other_batch).find("global batch 8, this one has 16"), std::string::npos) << refusal(other_batch);
  TrainOptions past = options(one, 1);
  past.resume = d / "ckpt";
  EXPECT_NE(refusal(past).find("is at step 2, past the run's 1 steps"), std::string::npos) << refusal(past);
  TrainOptions wider = options(one, 4);
  wider.model = "gpt:layers=4,d_model=64,heads=4,seq=16,vocab=256";
  wider.resume = d / "ckpt";
  const std::string why = refusal(wider);
  EXPECT_NE(why.find("in the checkpoint, F32["), std::string::npos) << why;
  EXPECT_NE(why.find(",64] in the model"), std::string::npos) << why;
  TrainOptions nowhere = options(one, 4);
  nowhere.resume = d / "none";
  EXPECT_NE(refusal(nowhere).find("none: no such directory"), std::string::npos) << refusal(nowhere);
}

// --init: parameters from a safetensors file made elsewhere. The same trained parameters,
// once under tessel's names and layout and once as PyTorch would save them (dotted names,
// nn.Linear weights as [out, in], mapped back with --init-map), start two runs from the same
// loss; a file that lacks a parameter, or holds one transposed without a map, is refused
// naming it.
TEST(Init, ParametersSavedElsewhereTrainOnFromTheSameLoss) {
  TempDir d;
  const Plan one{"one device"};
  TrainOptions save = options(one, 3);
  save.checkpoint_dir = d / "ckpt";
  run(save, one);
  const runtime::Checkpoint ck(d / "ckpt");
  std::vector<std::vector<std::byte>> data;
  std::vector<runtime::safetensors::TensorView> ours, theirs;
  std::string map;
  for (const auto& t : ck.tensors()) {
    if (!t.parameter) continue;
    data.emplace_back(static_cast<size_t>(t.type.bytes()));
    ck.read(t.name, t.type, std::vector<int64_t>(t.type.shape.size(), 0), t.type.shape, data.back().data());
    ours.push_back({t.name, t.type.dtype, t.type.shape, data.back().data()});
    std::string dotted = t.name;
    std::replace(dotted.begin(), dotted.end(), '/', '.');
    const bool linear = t.type.shape.size() == 2 && t.name.find("/weight") != std::string::npos &&
                        t.name.rfind("wte", 0) != 0 && t.name.rfind("wpe", 0) != 0;
    if (!linear) {
      theirs.push_back({dotted, t.type.dtype, t.type.shape, data.back().data()});
      continue;
    }
    const int64_t r = t.type.shape[0], c = t.type.shape[1];
    data.emplace_back(data.back().size());
    const auto* src = reinterpret_cast<const float*>(data[data.size() - 2].data());
    auto* dst = reinterpret_cast<float*>(data.back().data());
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) dst[j * r + i] = src[i * c + j];
    theirs.push_back({dotted, t.type.dtype, {c, r}, data.back().data()});
    map += t.name + " = " + dotted + " transpose\n";
  }
  ASSERT_FALSE(map.empty());
  runtime::safetensors::write(d / "ours.safetensors", ours);
  runtime::safetensors::write(d / "theirs.safetensors", theirs, {{"format", "pt"}});
  std::ofstream(d / "map.txt") << "# PyTorch's Linear layout\n" << map;

  TrainOptions a = options(one, 2);
  a.init = d / "ours.safetensors";
  TrainOptions b = options(one, 2);
  b.init = d / "theirs.safetensors";
  b.init_map = d / "map.txt";
  const TrainReport ra = run(a, one), rb = run(b, one);
  EXPECT_EQ(ra.last_loss, rb.last_loss);
  TrainOptions fresh = options(one, 2);
  EXPECT_NE(run(fresh, one).last_loss, ra.last_loss);  // the file's parameters were used

  TrainOptions unmapped = options(one, 2);
  unmapped.init = d / "theirs.safetensors";
  const std::string why = refusal(unmapped);
  EXPECT_NE(why.find("PyTorch's [out, in]? map it with"), std::string::npos) << why;
  theirs.pop_back();
  runtime::safetensors::write(d / "fewer.safetensors", theirs);
  TrainOptions fewer = options(one, 2);
  fewer.init = d / "fewer.safetensors";
  fewer.init_map = d / "map.txt";
  EXPECT_NE(refusal(fewer).find("no tensor for 1 of the model's parameters"), std::string::npos) << refusal(fewer);
}

}  // namespace
}  // namespace tessel
