// Modern transformer layers composed from primitives: RMSNorm, SwiGLU, rotary positions,
// grouped-query attention and the Llama builder. Gradients of small f64 models against
// central differences, forward passes against plain loops, errors that name the layer and
// the caller's line, the 405B graph built cheaply, and a short training run of the CLI.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>

#include "frontend/models.h"
#include "frontend/nn.h"
#include "graph/autodiff.h"
#include "graph/error.h"
#include "graph/serialize.h"
#include "ops/registry.h"
#include "planner/cost.h"
#include "planner/partition.h"
#include "runtime/executor.h"
#include "tests/e2e/cli_util.h"

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

std::string here(int line) { return "llama_test.cc:" + std::to_string(line); }

constexpr int64_t kVocab = 11;  // token ids of the small models are below this

// Fills every input and parameter of an f64 graph with seeded values: f64 inputs from
// U(-1, 1), token ids from [0, kVocab), vectors (norm weights, biases) from U(0.5, 1.5) and
// matrices from U(-0.5, 0.5), so no parameter sits at its symmetric initial value.
void fill_all(runtime::Executor& ex, const Graph& g, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto u = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
  for (int32_t id : g.nodes_of_kind(OpKind::input)) {
    TensorRef t = ex.input(g.node(id).name);
    for (int64_t i = 0; i < t.numel; ++i) {
      if (t.dtype == DType::f64) t.as<double>()[i] = u(-1, 1);
      else t.as<int32_t>()[i] = static_cast<int32_t>(rng() % kVocab);
    }
  }
  for (int32_t id : g.parameters()) {
    TensorRef t = ex.value(Value{id, 0});
    const bool vec = t.shape.size() == 1;
    for (int64_t i = 0; i < t.numel; ++i) t.as<double>()[i] = vec ? u(0.5, 1.5) : u(-0.5, 0.5);
  }
}

// The gradient check of tests/ops/grad_check_test.cc applied to whole layers: loss =
// sum(out * W) with W a fixed random input (or out itself when it is a scalar); every
// parameter and every f64 input is differentiated; numeric derivatives are 4-point central
// differences (h = 1e-3 max(1, |x|)); per tensor, max |analytic - numeric| /
// max(1e-3, max |numeric|) must stay below 1e-6. Returns the worst relative error.
double grad_check(const std::string& what, const std::function<Tensor(Model&)>& build, uint64_t seed) {
  Model m;
  m.set_float_dtype(DType::f64);
  Tensor out = build(m);
  EXPECT_EQ(out.dtype(), DType::f64) << what;
  Tensor loss = out.rank() == 0 ? out : sum(out * m.input("W", out.shape(), DType::f64));
  Graph& g = m.graph();
  std::vector<Value> wrt;
  std::vector<std::string> names;
  for (int32_t id : g.nodes_of_kind(OpKind::input))
    if (g.node(id).outputs[0].dtype == DType::f64 && g.node(id).name != "W") {
      wrt.push_back(Value{id, 0});
      names.push_back(g.node(id).name);
    }
  for (int32_t id : g.parameters()) {
    wrt.push_back(Value{id, 0});
    names.push_back(g.node(id).name);
  }
  const std::vector<Value> grads = gradients(g, loss.value(), wrt);
  g.set_output("loss", loss.value());
  std::vector<std::string> outs = {"loss"};
  for (size_t k = 0; k < wrt.size(); ++k) {
    if (!grads[k].valid()) {
      ADD_FAILURE() << what << ": the loss does not depend on " << names[k];
      continue;
    }
    g.set_output("grad:" + names[k], grads[k]);
    outs.push_back("grad:" + names[k]);
  }
  g.verify();
  SerialParallel serial;
  // The gradients once; the loss alone (a program of its own) for the differences.
  const runtime::ExecutorOptions eo{.seed = seed, .use_blas = false, .jit = false, .parallel = &serial};
  runtime::Executor all(planner::one_device(g, outs, ""), eo), ex(planner::one_device(g, {"loss"}, ""), eo);
  all.initialize();
  ex.initialize();
  fill_all(all, g, seed);
  fill_all(ex, g, seed);
  all.step();
  std::vector<std::vector<double>> analytic;
  for (size_t k = 0; k < wrt.size(); ++k) {
    TensorRef a = all.output("grad:" + names[k]);
    analytic.emplace_back(a.as<double>(), a.as<double>() + a.numel);
  }
  const double* f = ex.output("loss").as<double>();
  double worst = 0;
  for (size_t k = 0; k < wrt.size(); ++k) {
    TensorRef t = ex.value(wrt[k]);
    double* x = t.as<double>();
    double max_num = 0, max_err = 0;
    int64_t at = -1;
    double worst_a = 0, worst_n = 0;
    for (int64_t j = 0; j < t.numel; ++j) {
      const double x0 = x[j], h = 1e-3 * std::max(1.0, std::fabs(x0));
      auto loss_at = [&](double dx) {
        x[j] = x0 + dx;
        ex.step();
        return f[0];
      };
      const double d1 = loss_at(h) - loss_at(-h), d2 = loss_at(2 * h) - loss_at(-2 * h);
      x[j] = x0;
      const double numeric = (8 * d1 - d2) / (12 * h);
      max_num = std::max(max_num, std::fabs(numeric));
      const double err = std::fabs(analytic[k][j] - numeric);
      if (err > max_err) {
        max_err = err;
        at = j;
        worst_a = analytic[k][j];
        worst_n = numeric;
      }
    }
    const double rel = max_err / std::max(1e-3, max_num);
    worst = std::max(worst, rel);
    EXPECT_LT(rel, 1e-6) << what << ": d loss / d " << names[k] << shape_str(t.shape) << " relative error " << rel
                         << " at element " << at << ": analytic " << worst_a << ", numeric " << worst_n;
  }
  return worst;
}

void report(const std::string& what, double rel) {
  std::cout << "[ grad     ] " << what << ": max relative error " << rel << "\n";
}

TEST(LlamaGrad, RMSNorm) {
  report("rms_norm", grad_check("rms_norm", [](Model& m) {
           nn::RMSNorm norm(m, "norm", 8);
           return norm(m.input("x", {2, 3, 8}, DType::f64));
         }, 1));
}

TEST(LlamaGrad, SwiGLU) {
  report("swiglu", grad_check("swiglu", [](Model& m) {
           nn::SwiGLU mlp(m, "mlp", 6, 10);
           return mlp(m.input("x", {2, 3, 6}, DType::f64));
         }, 2));
}

TEST(LlamaGrad, Rotary) {
  // Tables longer than the sequence (sliced) and of its length, at both common bases.
  for (auto [max_seq, theta] : {std::pair<int64_t, double>{7, 10000}, {5, 500000}}) {
    const std::string what = "rotary max_seq=" + std::to_string(max_seq);
    report(what, grad_check(what, [&](Model& m) {
             nn::Rotary rope(m, "rope", 8, max_seq, theta);
             return rope(m.input("x", {2, 3, 5, 8}, DType::f64));
           }, 3));
  }
}

TEST(LlamaGrad, GroupedQueryAttention) {
  for (int64_t kv : {1, 2, 4})
    for (bool bias : {false, true}) {
      const std::string what = "attention heads=4 kv_heads=" + std::to_string(kv) + (bias ? " bias" : "") + " rotary";
      report(what, grad_check(what, [&](Model& m) {
               nn::Rotary rope(m, "rope", 4, 5);
               const nn::AttentionOptions o{.kv_heads = kv, .rotary = &rope, .bias = bias};
               nn::CausalSelfAttention attn(m, "attn", 16, 4, o);
               return attn(m.input("x", {2, 5, 16}, DType::f64));
             }, 4 + kv));
    }
}

// Two Llama blocks between an embedding and an untied head, under cross-entropy.
Tensor tiny_llama(Model& m, int64_t kv_heads) {
  Tensor tokens = m.input("tokens", {2, 5}, DType::i32);
  Tensor targets = m.input("targets", {2, 5}, DType::i32);
  nn::Embedding wte(m, "wte", kVocab, 16);
  nn::Rotary rope(m, "rope", 4, 5);
  Tensor x = wte(tokens);
  for (int i = 0; i < 2; ++i) {
    nn::LlamaBlock block(m, "block" + std::to_string(i), 16, 4, kv_heads, 12, 2, &rope);
    x = block(x);
  }
  nn::RMSNorm ln_f(m, "ln_f", 16);
  nn::Linear head(m, "lm_head", 16, kVocab, nn::Linear::Init{ops::Init::normal, 0.02, false});
  return cross_entropy(head(ln_f(x)), targets);
}

TEST(LlamaGrad, TwoBlockModel) {
  for (int64_t kv : {1, 2, 4}) {
    const std::string what = "llama blocks kv_heads=" + std::to_string(kv);
    report(what, grad_check(what, [&](Model& m) { return tiny_llama(m, kv); }, 10 + kv));
  }
}

// ---- forward numerics against plain loops ---------------------------------------------

// Runs an f64 model once after fill_all; returns the executor for reading values.
struct Ran {
  SerialParallel serial;
  std::unique_ptr<runtime::Executor> ex;
  std::vector<double> get(const Tensor& t) const {
    TensorRef r = ex->value(t.value());
    return std::vector<double>(r.as<double>(), r.as<double>() + r.numel);
  }
};
std::unique_ptr<Ran> run_once(Model& m, const Tensor& out, uint64_t seed) {
  auto r = std::make_unique<Ran>();
  m.output("out", out);
  const runtime::ExecutorOptions o{.seed = seed, .use_blas = false, .jit = false, .parallel = &r->serial};
  r->ex = std::make_unique<runtime::Executor>(planner::one_device(m.graph(), {"out"}, ""), o);
  r->ex->initialize();
  fill_all(*r->ex, m.graph(), seed);
  r->ex->step();
  return r;
}

void expect_near_all(const std::vector<double>& got, const std::vector<double>& want, double tol,
                     const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * std::max(1.0, std::fabs(want[i]))) << what << " element " << i;
}

TEST(LlamaForward, RMSNormMatchesLoops) {
  Model m;
  m.set_float_dtype(DType::f64);
  Tensor x = m.input("x", {3, 7}, DType::f64);
  nn::RMSNorm norm(m, "norm", 7, 1e-3);
  Tensor out = norm(x);
  auto r = run_once(m, out, 21);
  const auto xv = r->get(x), w = r->get(norm.weight), y = r->get(out);
  std::vector<double> want(21);
  for (int i = 0; i < 3; ++i) {
    double ms = 0;
    for (int j = 0; j < 7; ++j) ms += xv[i * 7 + j] * xv[i * 7 + j] / 7;
    for (int j = 0; j < 7; ++j) want[i * 7 + j] = xv[i * 7 + j] / std::sqrt(ms + 1e-3) * w[j];
  }
  expect_near_all(y, want, 1e-13, "rms norm");
}

// Rotate-half reference: pairs (i, i + D/2) turn by t * theta^(-2i/D).
std::vector<double> rope_ref(const std::vector<double>& x, int64_t rows, int64_t T, int64_t D, double theta) {
  std::vector<double> y(x.size());
  const int64_t h = D / 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < h; ++i) {
        const double a = static_cast<double>(t) * std::pow(theta, -2.0 * static_cast<double>(i) / D);
        const double* xr = &x[(r * T + t) * D];
        double* yr = &y[(r * T + t) * D];
        yr[i] = xr[i] * std::cos(a) - xr[i + h] * std::sin(a);
        yr[i + h] = xr[i + h] * std::cos(a) + xr[i] * std::sin(a);
      }
  return y;
}

TEST(LlamaForward, RotaryMatchesTheRotateHalfFormula) {
  Model m;
  m.set_float_dtype(DType::f64);
  Tensor x = m.input("x", {2, 3, 6, 8}, DType::f64);  // [batch, heads, seq, head_dim]
  nn::Rotary rope(m, "rope", 8, 6);
  Tensor y = rope(x);
  auto r = run_once(m, y, 22);
  const auto xv = r->get(x), yv = r->get(y);
  expect_near_all(yv, rope_ref(xv, 6, 6, 8, 10000), 1e-14, "rotary");
  // By hand: batch 1, head 2, position 3, pair (1, 5): 10000^(-2/8) = 0.1, so the angle is 0.3.
  const int64_t base = ((1 * 3 + 2) * 6 + 3) * 8;
  EXPECT_NEAR(yv[base + 1], xv[base + 1] * std::cos(0.3) - xv[base + 5] * std::sin(0.3), 1e-14);
  EXPECT_NEAR(yv[base + 5], xv[base + 5] * std::cos(0.3) + xv[base + 1] * std::sin(0.3), 1e-14);
  // Position 0 is the identity.
  for (int i = 0; i < 8; ++i) EXPECT_EQ(yv[i], xv[i]);
  // The tables: [max_seq, head_dim / 2] constants in the model's float dtype, stored data.
  EXPECT_EQ(rope.cos.shape(), (Shape{6, 4}));
  EXPECT_EQ(rope.cos.node().name, "rope_cos");
  EXPECT_NE(m.graph().data(rope.sin.value().node), nullptr);
  EXPECT_EQ(rope.sin.dtype(), DType::f64);
}

// Naive causal attention with grouped heads: query head h reads KV head h / (H / KVH).
std::vector<double> attention_ref(Ran& r, const nn::CausalSelfAttention& a, const std::vector<double>& x, int64_t B,
                                  int64_t T, const nn::Rotary* rope) {
  const int64_t d = a.d_model, H = a.heads, KVH = a.kv_heads, D = d / H;
  auto linear = [&](const nn::Linear& l) {
    const auto w = r.get(l.weight);
    const auto b = l.bias.valid() ? r.get(l.bias) : std::vector<double>(l.out_features, 0.0);
    return [=](const std::vector<double>& in, int64_t rows) {
      std::vector<double> out(rows * l.out_features);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t o = 0; o < l.out_features; ++o) {
          double s = b[o];
          for (int64_t k = 0; k < l.in_features; ++k) s += in[i * l.in_features + k] * w[k * l.out_features + o];
          out[i * l.out_features + o] = s;
        }
      return out;
    };
  };
  const auto q = linear(a.q)(x, B * T), k = linear(a.k)(x, B * T), v = linear(a.v)(x, B * T);
  // [B, T, n, D] -> [B, n, T, D], rotated when there is a rotary embedding.
  auto heads = [&](const std::vector<double>& p, int64_t n, bool rotate) {
    std::vector<double> o(p.size());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < n; ++h)
          for (int64_t e = 0; e < D; ++e) o[((b * n + h) * T + t) * D + e] = p[((b * T + t) * n + h) * D + e];
    return rotate && rope ? rope_ref(o, B * n, T, D, rope->theta) : o;
  };
  const auto qh = heads(q, H, true), kh = heads(k, KVH, true), vh = heads(v, KVH, false);
  std::vector<double> y(B * T * d);  // [B, T, H, D]
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t j = h / (H / KVH);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> s(t + 1);
        double mx = -1e300, z = 0;
        for (int64_t u = 0; u <= t; ++u) {
          double dot = 0;
          for (int64_t e = 0; e < D; ++e)
            dot += qh[((b * H + h) * T + t) * D + e] * kh[((b * KVH + j) * T + u) * D + e];
          s[u] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[u]);
        }
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (int64_t e = 0; e < D; ++e) {
          double acc = 0;
          for (int64_t u = 0; u <= t; ++u) acc += s[u] / z * vh[((b * KVH + j) * T + u) * D + e];
          y[((b * T + t) * H + h) * D + e] = acc;
        }
      }
    }
  return linear(a.proj)(y, B * T);
}

TEST(LlamaForward, GroupedQueryAttentionMatchesLoops) {
  for (int64_t kv : {1, 2, 4})
    for (bool rotary : {false, true}) {
      Model m;
      m.set_float_dtype(DType::f64);
      Tensor x = m.input("x", {2, 6, 16}, DType::f64);
      nn::Rotary rope(m, "rope", 4, 6, 500000);
      const nn::AttentionOptions o{.kv_heads = kv, .rotary = rotary ? &rope : nullptr};
      nn::CausalSelfAttention attn(m, "attn", 16, 4, o);
      Tensor y = attn(x);
      auto r = run_once(m, y, 30 + kv);
      const std::string what = "attention kv_heads=" + std::to_string(kv) + (rotary ? " rotary" : "");
      expect_near_all(r->get(y), attention_ref(*r, attn, r->get(x), 2, 6, rotary ? &rope : nullptr), 1e-12, what);
      EXPECT_EQ(attn.k.weight.shape(), (Shape{16, kv * 4})) << what;
    }
}

TEST(LlamaForward, MultiHeadPathAddsNoNodes) {
  // kv_heads = heads and no rotary: exactly the GPT attention (same node count).
  auto count = [](bool options) {
    Model m;
    Tensor x = m.input("x", {2, 6, 16});
    if (options) {
      nn::CausalSelfAttention a(m, "attn", 16, 4, nn::AttentionOptions{.kv_heads = 4});
      a(x);
    } else {
      nn::CausalSelfAttention a(m, "attn", 16, 4);
      a(x);
    }
    return m.graph().size();
  };
  EXPECT_EQ(count(true), count(false));
}

// ---- errors ---------------------------------------------------------------------------

TEST(LlamaErrors, NameTheLayerAndTheCallersLine) {
  Model m;
  int line = __LINE__ + 1;
  std::string msg = error_of([&] { nn::CausalSelfAttention a(m, "attn", 16, 4, nn::AttentionOptions{.kv_heads = 3}); });
  EXPECT_THAT(msg, HasSubstr(here(line)));
  EXPECT_THAT(msg, HasSubstr("attention 'attn'"));
  EXPECT_THAT(msg, HasSubstr("heads 4 is not divisible by kv_heads 3"));
  {
    Model::Scope s(m, "block3");
    line = __LINE__ + 1;
    msg = error_of([&] { nn::CausalSelfAttention a(m, "attn", 18, 4, nn::AttentionOptions{.kv_heads = 2}); });
    EXPECT_THAT(msg, HasSubstr(here(line)));
    EXPECT_THAT(msg, HasSubstr("attention 'block3/attn'"));
    EXPECT_THAT(msg, HasSubstr("d_model 18 is not divisible by heads 4"));
  }
  line = __LINE__ + 1;
  msg = error_of([&] { nn::Rotary r(m, "rope", 7, 16); });
  EXPECT_THAT(msg, HasSubstr(here(line)));
  EXPECT_THAT(msg, HasSubstr("rotary 'rope'"));
  EXPECT_THAT(msg, HasSubstr("head_dim 7 must be even"));
  nn::Rotary rope(m, "rope8", 8, 16);
  line = __LINE__ + 1;
  msg = error_of([&] { nn::CausalSelfAttention a(m, "attn2", 16, 4, {.kv_heads = 2, .rotary = &rope}); });
  EXPECT_THAT(msg, HasSubstr(here(line)));
  EXPECT_THAT(msg, HasSubstr("rotary 'rope8' is for head_dim 8"));
  Tensor long_seq = m.input("q", {1, 2, 17, 8});
  line = __LINE__ + 1;
  msg = error_of([&] { rope(long_seq); });
  EXPECT_THAT(msg, HasSubstr(here(line)));
  EXPECT_THAT(msg, HasSubstr("f32[1,2,17,8]"));
  nn::RMSNorm norm(m, "norm", 8);
  line = __LINE__ + 1;
  msg = error_of([&] { norm(m.input("y", {2, 9})); });
  EXPECT_THAT(msg, HasSubstr(here(line)));
  EXPECT_THAT(msg, HasSubstr("rms norm 'norm'"));
}

TEST(LlamaErrors, SpecsNameTheBadKeyOrValue) {
  auto err = [](const std::string& spec) { return error_of([&] { models::from_spec(spec, 2); }); };
  EXPECT_THAT(err("llama:layers=1,d_model=64,heads=4,kv_heads=3"),
              HasSubstr("'block0/attn': heads 4 is not divisible by kv_heads 3"));
  EXPECT_THAT(err("llama:layers=1,d_model=60,heads=8"), HasSubstr("d_model 60 is not divisible by heads 8"));
  EXPECT_THAT(err("llama:layers=1,d_model=12,heads=4"), HasSubstr("head_dim = d_model 12 / heads 4 = 3 is odd"));
  EXPECT_THAT(err("llama:layers=1,width=3"), HasSubstr("unknown key 'width'"));
  EXPECT_THAT(err("llama:layers=1,rope_theta=big"), HasSubstr("rope_theta='big' is not a number"));
  EXPECT_THAT(err("llama:layers=x"), HasSubstr("'x' is not an integer"));
  EXPECT_THAT(err("llama:layers=1,ffn=-4"), HasSubstr("ffn=-4 must be positive"));
  EXPECT_THAT(err("llama:layers=1,kv_heads=-1"), HasSubstr("kv_heads=-1 must be positive"));
  EXPECT_THAT(err("llama:layers=0"), HasSubstr("layers=0 must be positive"));
}

// ---- the builder ----------------------------------------------------------------------

TEST(LlamaBuilder, GraphNamesShapesAndParameterCount) {
  auto b = models::from_spec("llama:layers=3,d_model=64,heads=8,kv_heads=2,ffn=96,seq=16,vocab=300", 4);
  const Graph& g = b.model->graph();
  g.verify();
  models::LlamaConfig c;
  c.layers = 3, c.d_model = 64, c.heads = 8, c.kv_heads = 2, c.ffn = 96, c.seq = 16, c.vocab = 300;
  EXPECT_EQ(planner::count_parameters(g).elements, c.parameters());
  EXPECT_EQ(b.logits.shape(), (Shape{4, 16, 300}));
  EXPECT_EQ(b.loss.rank(), 0);
  EXPECT_EQ(b.inputs, (std::vector<std::string>{"tokens", "targets"}));
  EXPECT_EQ(b.description, "llama layers=3 d_model=64 heads=8 kv_heads=2 ffn=96 seq=16 vocab=300 rope_theta=10000");
  auto shape_of = [&](const std::string& name) {
    auto id = g.find(name);
    return id ? g.node(*id).outputs[0].shape : Shape{-1};
  };
  EXPECT_EQ(shape_of("tokens"), (Shape{4, 16}));
  EXPECT_EQ(shape_of("wte/weight"), (Shape{300, 64}));
  EXPECT_EQ(shape_of("block2/ln1/weight"), (Shape{64}));
  EXPECT_EQ(shape_of("block2/attn/q/weight"), (Shape{64, 64}));
  EXPECT_EQ(shape_of("block2/attn/k/weight"), (Shape{64, 16}));  // 2 KV heads of 8 features
  EXPECT_EQ(shape_of("block2/attn/v/weight"), (Shape{64, 16}));
  EXPECT_EQ(shape_of("block2/attn/proj/weight"), (Shape{64, 64}));
  EXPECT_EQ(shape_of("block2/ln2/weight"), (Shape{64}));
  EXPECT_EQ(shape_of("block2/mlp/gate/weight"), (Shape{64, 96}));
  EXPECT_EQ(shape_of("block2/mlp/up/weight"), (Shape{64, 96}));
  EXPECT_EQ(shape_of("block2/mlp/down/weight"), (Shape{96, 64}));
  EXPECT_EQ(shape_of("ln_f/weight"), (Shape{64}));
  EXPECT_EQ(shape_of("lm_head/weight"), (Shape{64, 300}));
  EXPECT_EQ(shape_of("rope_cos"), (Shape{16, 4}));
  for (int32_t id : g.parameters()) EXPECT_EQ(g.node(id).name.find("bias"), std::string::npos) << g.node(id).name;
  // The rotation inside a block is that block's (the planner assigns layers by top scope).
  int rotations = 0;
  for (const Node& n : g.nodes())
    if (n.name.find("/rope/") != std::string::npos) {
      EXPECT_EQ(n.name.rfind("block", 0), 0u) << n.name;
      ++rotations;
    }
  EXPECT_GT(rotations, 0);
  // Defaults: kv_heads = heads, ffn = 2/3 of 4 d_model rounded up to 256 (Llama 2 7B: 11008).
  models::LlamaConfig d;
  d.d_model = 4096;
  EXPECT_EQ(d.hidden(), 11008);
  EXPECT_EQ(d.kv(), d.heads);
  auto dflt = models::from_spec("llama:layers=2,d_model=32,heads=4,seq=8,vocab=256,rope_theta=500000", 2);
  models::LlamaConfig dc;
  dc.d_model = 32, dc.seq = 8;
  EXPECT_EQ(planner::count_parameters(dflt.model->graph()).elements, dc.parameters());
  EXPECT_THAT(dflt.description, HasSubstr("kv_heads=4 ffn=256"));
  EXPECT_THAT(dflt.description, HasSubstr("rope_theta=500000"));
}

TEST(LlamaBuilder, Llama3_405BBuildsQuicklyWithoutParameterMemory) {
  const std::string spec = "llama:layers=126,d_model=16384,heads=128,kv_heads=8,ffn=53248,seq=8192,vocab=128256";
  auto t0 = std::chrono::steady_clock::now();
  auto b = models::from_spec(spec, 1);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Graph& g = b.model->graph();
  const int64_t n = planner::count_parameters(g).elements;
  std::cout << "[ 405B     ] built in " << s << " s: " << g.size() << " nodes, " << n << " parameters\n";
  models::LlamaConfig c;
  c.layers = 126, c.d_model = 16384, c.heads = 128, c.kv_heads = 8, c.ffn = 53248, c.seq = 8192, c.vocab = 128256;
  EXPECT_EQ(n, c.parameters());
  EXPECT_GT(n, 405'000'000'000);
  EXPECT_LT(n, 406'000'000'000);
  EXPECT_LT(s, 20.0);
  // Stored data: the two rotary tables [8192, 64] in f32, nothing else.
  int64_t bytes = 0;
  for (auto& [id, data] : g.all_data()) {
    EXPECT_EQ(g.node(id).op, "constant") << g.node(id).name;
    bytes += static_cast<int64_t>(data.size());
  }
  EXPECT_EQ(bytes, 2 * 8192 * 64 * 4);
  EXPECT_EQ(b.logits.shape(), (Shape{1, 8192, 128256}));
}

// ---- the CLI --------------------------------------------------------------------------

TEST(LlamaCli, TrainsAndExportsWithItsRotaryTables) {
  const std::string dir = testing::temp_dir();
  {
    std::ofstream f(dir + "/text.txt");
    std::mt19937 rng(5);
    const char* words[] = {"the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "home"};
    for (int line = 0; line < 1500; ++line) {
      for (int w = 0; w < 10; ++w) f << words[rng() % 12] << ' ';
      f << '\n';
    }
  }
  const std::string model = "llama:layers=2,d_model=64,heads=4,kv_heads=2,ffn=128,seq=32,vocab=256";
  auto r = testing::run_cli("train --model " + model + " --dataset text:" + dir +
                            "/text.txt --steps 30 --batch 8 --optimizer adamw --lr 3e-3 --format json");
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string j = testing::last_line(r.out);
  EXPECT_EQ(testing::json_value(j, "steps"), 30);
  // From ln(256) = 5.55 at random initialisation to well below it.
  EXPECT_LT(testing::json_value(j, "final_loss"), 4.0) << j;
  EXPECT_EQ(testing::json_value(j, "parameters"), 106816);
  // Exported without parameter values, the graph still holds the rotary tables.
  r = testing::run_cli("export --model " + model + " --batch 4 -o " + dir + "/llama.tsg");
  ASSERT_EQ(r.status, 0) << r.err;
  Graph g = load_graph(dir + "/llama.tsg", ops::registry());
  auto cos = g.find("rope_cos");
  ASSERT_TRUE(cos);
  ASSERT_NE(g.data(*cos), nullptr);
  EXPECT_EQ(g.data(*cos)->size(), 32u * 8 * 4);
  for (int32_t id : g.parameters()) EXPECT_EQ(g.data(id), nullptr) << g.node(id).name;
}

}  // namespace
}  // namespace tessel
