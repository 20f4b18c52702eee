// Optimizers as graph nodes: SGD with momentum and AdamW match hand-written reference
// updates; gradient accumulation over k microbatches equals one big batch; clipping and
// schedules do what they say.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "frontend/api.h"
#include "frontend/models.h"
#include "frontend/optim.h"
#include "frontend/tensor.h"
#include "graph/error.h"
#include "planner/partition.h"
#include "runtime/executor.h"

namespace tessel {
namespace {

// loss = mean((x W - y)^2) over a batch; W [3, 2] initialised deterministically.
struct Regression {
  std::unique_ptr<Model> m = std::make_unique<Model>();
  Tensor x, y, w, loss;
  explicit Regression(int64_t batch) {
    x = m->input("x", {batch, 3}, DType::f64);
    y = m->input("y", {batch, 2}, DType::f64);
    w = m->parameter("w", {3, 2}, ops::Init::constant, 0.5);
    Tensor wd = cast(w, DType::f64);
    loss = mse_loss(matmul(x, wd), y);
    m->output("loss", loss);
  }
};

std::vector<double> data(int64_t n, uint64_t seed) {
  std::mt19937_64 r(seed);
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<double> v(n);
  for (auto& e : v) e = u(r);
  return v;
}

// Reference gradient of mean((xW - y)^2) w.r.t. W (in double).
std::vector<double> ref_grad(const std::vector<double>& w, const std::vector<double>& x,
                             const std::vector<double>& y, int64_t batch) {
  std::vector<double> g(6, 0);
  for (int64_t b = 0; b < batch; ++b)
    for (int j = 0; j < 2; ++j) {
      double p = 0;
      for (int i = 0; i < 3; ++i) p += x[b * 3 + i] * w[i * 2 + j];
      double d = 2 * (p - y[b * 2 + j]) / (batch * 2);
      for (int i = 0; i < 3; ++i) g[i * 2 + j] += d * x[b * 3 + i];
    }
  return g;
}

void feed(runtime::Executor& ex, const std::vector<double>& x, const std::vector<double>& y, int64_t off, int64_t n,
          int64_t microbatch = 0) {
  std::copy(x.begin() + off * 3, x.begin() + (off + n) * 3, ex.input("x", microbatch).as<double>());
  std::copy(y.begin() + off * 2, y.begin() + (off + n) * 2, ex.input("y", microbatch).as<double>());
}

std::vector<double> weights(runtime::Executor& ex, const Regression& r) {
  TensorRef t = ex.value(r.w.value());
  return std::vector<double>(t.as<float>(), t.as<float>() + 6);
}

TEST(Optim, SgdMomentumMatchesReference) {
  const int64_t B = 8;
  Regression r(B);
  OptimizerConfig c;
  c.kind = "sgd";
  c.lr = 0.1;
  c.momentum = 0.9;
  c.weight_decay = 0.01;
  add_training(r.m->graph(), "loss", c);
  r.m->graph().verify();
  runtime::Executor ex(planner::one_device(r.m->graph(), {"loss"}, "train"));
  ex.initialize();
  std::vector<double> w(6, 0.5), v(6, 0);
  for (int step = 0; step < 5; ++step) {
    auto x = data(B * 3, step), y = data(B * 2, 100 + step);
    feed(ex, x, y, 0, B);
    ex.step();
    auto g = ref_grad(w, x, y, B);
    for (int i = 0; i < 6; ++i) {
      double gi = g[i] + c.weight_decay * w[i];
      v[i] = c.momentum * v[i] + gi;
      w[i] = static_cast<float>(w[i] - c.lr * v[i]);
    }
    auto got = weights(ex, r);
    for (int i = 0; i < 6; ++i) EXPECT_NEAR(got[i], w[i], 1e-5) << "step " << step << " element " << i;
  }
}

TEST(Optim, AdamWMatchesReference) {
  const int64_t B = 4;
  Regression r(B);
  OptimizerConfig c;
  c.kind = "adamw";
  c.lr = 0.01;
  c.weight_decay = 0.1;
  add_training(r.m->graph(), "loss", c);
  runtime::Executor ex(planner::one_device(r.m->graph(), {"loss"}, "train"));
  ex.initialize();
  std::vector<double> w(6, 0.5), m(6, 0), v(6, 0);
  for (int t = 1; t <= 6; ++t) {
    auto x = data(B * 3, t), y = data(B * 2, 50 + t);
    feed(ex, x, y, 0, B);
    ex.step();
    auto g = ref_grad(w, x, y, B);
    for (int i = 0; i < 6; ++i) {
      m[i] = c.beta1 * m[i] + (1 - c.beta1) * g[i];
      v[i] = c.beta2 * v[i] + (1 - c.beta2) * g[i] * g[i];
      double mh = m[i] / (1 - std::pow(c.beta1, t)), vh = v[i] / (1 - std::pow(c.beta2, t));
      w[i] = w[i] - c.lr * c.weight_decay * w[i] - c.lr * mh / (std::sqrt(vh) + c.eps);
    }
    auto got = weights(ex, r);
    for (int i = 0; i < 6; ++i) EXPECT_NEAR(got[i], w[i], 2e-5) << "step " << t << " element " << i;
  }
}

TEST(Optim, GradientAccumulationEqualsOneBigBatch) {
  // One device accumulating K microbatches of B/K per step (the executor averages their
  // gradients before the update) moves the weights as one batch of B does.
  const int64_t B = 12, K = 3;
  Regression big(B), small(B / K);
  OptimizerConfig c;
  c.kind = "sgd";
  c.lr = 0.2;
  c.momentum = 0.5;
  add_training(big.m->graph(), "loss", c);
  add_training(small.m->graph(), "loss", c);
  runtime::Executor a(planner::one_device(big.m->graph())), b(planner::one_device(small.m->graph(), K));
  EXPECT_EQ(b.microbatches(), K);
  a.initialize();
  b.initialize();
  for (int step = 0; step < 4; ++step) {
    auto x = data(B * 3, step), y = data(B * 2, 9 + step);
    feed(a, x, y, 0, B);
    a.step();
    for (int64_t k = 0; k < K; ++k) feed(b, x, y, k * (B / K), B / K, k);
    b.step();
    EXPECT_NEAR(a.output("loss").as<double>()[0], b.output("loss").as<double>()[0], 1e-6) << "step " << step;
    auto wa = weights(a, big), wb = weights(b, small);
    for (int i = 0; i < 6; ++i) EXPECT_NEAR(wa[i], wb[i], 1e-6) << "step " << step;
  }
}

TEST(Optim, ClippingBoundsTheUpdate) {
  const int64_t B = 4;
  Regression r(B);
  OptimizerConfig c;
  c.lr = 1.0;
  c.clip_norm = 1e-3;
  add_training(r.m->graph(), "loss", c);
  runtime::Executor ex(planner::one_device(r.m->graph(), {"loss", "grad_norm"}, "train"));
  ex.initialize();
  auto x = data(B * 3, 1), y = data(B * 2, 2);
  feed(ex, x, y, 0, B);
  ex.step();
  auto w = weights(ex, r);
  double moved = 0;
  for (double e : w) moved += (e - 0.5) * (e - 0.5);
  EXPECT_NEAR(std::sqrt(moved), 1e-3, 1e-6);
  EXPECT_GT(ex.output("grad_norm").as<float>()[0], 1e-3);
}

TEST(Optim, CosineScheduleWithWarmup) {
  Regression r(2);
  OptimizerConfig c;
  c.lr = 1.0;
  c.schedule = "cosine";
  c.warmup_steps = 2;
  c.total_steps = 6;
  c.min_lr = 0.1;
  add_training(r.m->graph(), "loss", c);
  runtime::Executor ex(planner::one_device(r.m->graph(), {"lr"}, "train"));
  ex.initialize();
  std::vector<double> lrs;
  for (int i = 0; i < 7; ++i) {
    ex.step();
    lrs.push_back(ex.output("lr").as<float>()[0]);
  }
  EXPECT_NEAR(lrs[0], 0.5, 1e-6);  // warmup: (step+1)/warmup
  EXPECT_NEAR(lrs[1], 1.0, 1e-6);
  EXPECT_NEAR(lrs[2], 1.0, 1e-6);  // cosine starts at base
  EXPECT_NEAR(lrs[4], 0.55, 1e-6); // midpoint: (base + min) / 2
  EXPECT_NEAR(lrs[6], 0.1, 1e-6);  // and ends at min
}

TEST(Optim, BadConfigsAreRefused) {
  Regression r(2);
  OptimizerConfig c;
  c.kind = "lion";
  EXPECT_THROW(add_training(r.m->graph(), "loss", c), Error);
  c.kind = "sgd";
  c.momentum = 1.5;
  EXPECT_THROW(add_training(r.m->graph(), "loss", c), Error);
  c.momentum = 0;
  EXPECT_THROW(add_training(r.m->graph(), "nope", c), Error);
}

TEST(Optim, UnusedParameterIsNamed) {
  Model m;
  Tensor x = m.input("x", {2, 2});
  Tensor w = m.parameter("used", {2, 2}, ops::Init::ones);
  m.parameter("orphan", {3}, ops::Init::ones);
  m.output("loss", sum(x * w));
  try {
    add_training(m.graph(), "loss", OptimizerConfig{});
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("'orphan'"));
  }
}

// The Trainer API takes each step's whole batch, whatever runs it: one device accumulating
// microbatches (each gets its own rows), or a plan on devices. All train as one batch does.
TEST(Trainer, AccumulatedMicrobatchesAndDevicesTakeTheWholeBatch) {
  const int64_t B = 8;
  std::mt19937 rng(3);
  std::vector<std::vector<float>> xs(3, std::vector<float>(B * 6));
  std::vector<std::vector<int32_t>> ys(3, std::vector<int32_t>(B));
  for (auto& x : xs)
    for (float& v : x) v = std::uniform_real_distribution<float>(-1, 1)(rng);
  for (auto& y : ys)
    for (int32_t& v : y) v = static_cast<int32_t>(rng() % 3);
  auto train = [&](int64_t graph_batch, int64_t accumulate, int64_t devices) {
    models::Built m = models::from_spec("mlp:6-16-3", graph_batch, true);
    TrainerOptions o;
    o.accumulate = accumulate;
    Trainer t(m.model->graph(), SGD{.lr = 0.5}, Devices{.count = devices}, o);
    EXPECT_EQ(t.batch(), B);
    const BatchRows rows = t.rows("x");
    EXPECT_EQ(rows.begin, 0);
    EXPECT_EQ(rows.end, B);  // one process reads every row
    for (size_t s = 0; s < xs.size(); ++s) t.step(Batch().set("x", xs[s]).set("labels", ys[s]));
    return t.parameter("fc1/weight");
  };
  const std::vector<float> whole = train(B, 1, 1), accumulated = train(B / 2, 2, 1), on_two = train(B, 1, 2);
  ASSERT_EQ(whole.size(), accumulated.size());
  ASSERT_EQ(whole.size(), on_two.size());
  for (size_t i = 0; i < whole.size(); ++i) {
    EXPECT_NEAR(accumulated[i], whole[i], 1e-5) << i;
    EXPECT_NEAR(on_two[i], whole[i], 1e-5) << i;
  }
  // A microbatch's worth is not a step's batch.
  models::Built m = models::from_spec("mlp:6-16-3", B / 2, true);
  TrainerOptions o;
  o.accumulate = 2;
  Trainer t(m.model->graph(), SGD{.lr = 0.5}, Devices{}, o);
  const std::vector<float> half(xs[0].begin(), xs[0].begin() + B / 2 * 6);
  const std::vector<int32_t> half_y(ys[0].begin(), ys[0].begin() + B / 2);
  EXPECT_THROW(t.step(Batch().set("x", half).set("labels", half_y)), Error);
}

}  // namespace
}  // namespace tessel
