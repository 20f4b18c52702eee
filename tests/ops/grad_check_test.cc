// Gradient checks in double precision: for every differentiable op and every Emitter
// composition, the analytic gradient (tessel::gradients) against central differences.
//
// Each case builds out = op(inputs...) on f64 inputs and loss = sum(out * W) with W a fixed
// random f64 input, so every output element gets its own weight. The numeric derivative is
// the 4-point central difference
//     (8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h,  h = 1e-3 * max(1, |x|),
// whose truncation error is h^4 |f^(5)| / 30 (~3e-14 |f^(5)|) and whose rounding error is
// about eps |loss| / h (~1e-12 |loss|): both far below the bound. Per differentiated input,
//     max_j |analytic_j - numeric_j| / max(1e-3, max_j |numeric_j|) < 1e-6,
// i.e. relative to the largest gradient entry, with a floor so that an all-zero gradient
// is compared absolutely. Inputs stay >= 0.3 from kinks (relu, abs) and ties (max,
// maximum, minimum: a shuffled grid with spacing >= 0.01), so the +-2h stencil never
// crosses one. Integer inputs (indices, labels) and bool conditions are not perturbed.
#include <algorithm>
#include <cmath>
#include <functional>
#include <ostream>
#include <set>

#include "graph/autodiff.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "planner/partition.h"
#include "runtime/executor.h"
#include "tests/ops/harness.h"

namespace tessel::test {
namespace {

using ops::Emitter;

constexpr double kMaxRelError = 1e-6;

enum class Gen {
  any,       // uniform in [-1.5, 1.5)
  positive,  // uniform in [0.5, 2): log, sqrt, rsqrt, divisors
  nonzero,   // +-[0.3, 1.5): away from the kink of relu and abs
  distinct,  // one shuffled grid shared by all such inputs of a case: no ties
  index,     // integers in [0, hi]
  boolean,
};

struct In {
  std::string name;
  DType dt = DType::f64;
  Shape shape;
  Gen gen = Gen::any;
  int64_t hi = 0;          // Gen::index: largest index
  bool zero_grad = false;  // the analytic gradient must be exactly zero (stop_gradient)
};

In x_(std::string name, Shape s, Gen g = Gen::any) {
  return In{std::move(name), DType::f64, std::move(s), g};
}
In index_(std::string name, Shape s, int64_t hi, DType dt = DType::i64) {
  return In{std::move(name), dt, std::move(s), Gen::index, hi};
}
In bool_(std::string name, Shape s) {
  return In{std::move(name), DType::boolean, std::move(s), Gen::boolean};
}

using Build = std::function<Value(const Emitter&, const std::vector<Value>&)>;

struct GradCase {
  std::string op;    // the registered op under test, or a composition's name
  std::string name;  // unique; the test's name
  std::vector<In> inputs;
  Build build;
};
void PrintTo(const GradCase& c, std::ostream* os) { *os << c.name; }

Build unary(std::string op) {
  return [op](const Emitter& e, const std::vector<Value>& v) { return e.op(op, {v[0]}); };
}
Build binary(std::string op) {
  return [op](const Emitter& e, const std::vector<Value>& v) { return e.op(op, {v[0], v[1]}); };
}
Build reduce(std::string op, std::vector<int64_t> axes, bool keepdims) {
  return [=](const Emitter& e, const std::vector<Value>& v) {
    return e.op(op, {v[0]}, {{"axes", axes}, {"keepdims", keepdims}});
  };
}
std::string axes_name(const std::vector<int64_t>& axes) {
  if (axes.empty()) return "all";
  std::string s;
  for (auto a : axes)
    s += (s.empty() ? "" : "_") + (a < 0 ? "m" + std::to_string(-a) : std::to_string(a));
  return s;
}

std::vector<GradCase> make_cases() {
  std::vector<GradCase> c;
  auto add = [&](std::string op, std::string name, std::vector<In> in, Build b) {
    c.push_back({std::move(op), std::move(name), std::move(in), std::move(b)});
  };

  // Unary elementwise, on a matrix and on a scalar.
  const std::pair<const char*, Gen> unaries[] = {
      {"neg", Gen::any},        {"exp", Gen::any},  {"log", Gen::positive}, {"sqrt", Gen::positive},
      {"rsqrt", Gen::positive}, {"tanh", Gen::any}, {"abs", Gen::nonzero},  {"relu", Gen::nonzero},
      {"sigmoid", Gen::any},    {"gelu", Gen::any}};
  for (auto [op, gen] : unaries) {
    add(op, op, {x_("x", {3, 5}, gen)}, unary(op));
    add(op, std::string(op) + "_scalar", {x_("x", {}, gen)}, unary(op));
  }
  // gelu over a wider range, where the cubic term matters.
  add("gelu", "gelu_wide", {In{"x", DType::f64, {13}, Gen::any}},
      [](const Emitter& e, const std::vector<Value>& v) { return e.gelu(e.mul(v[0], 3.0)); });

  // Binary elementwise with NumPy broadcasting: same shape, [3,1,4] with [2,4], a scalar,
  // and broadcasting on both sides of lower rank.
  const std::pair<Shape, Shape> shapes[] = {
      {{3, 4}, {3, 4}}, {{3, 1, 4}, {2, 4}}, {{}, {2, 3}}, {{2, 1}, {3, 1, 4}}};
  const char* shape_names[] = {"same", "bcast_3x1x4_2x4", "scalar_a", "bcast_2x1_3x1x4"};
  for (const char* op : {"add", "sub", "mul", "div", "maximum", "minimum"}) {
    const std::string o = op;
    const Gen ga = (o == "maximum" || o == "minimum") ? Gen::distinct : Gen::any;
    const Gen gb = o == "div" ? Gen::nonzero : ga;
    for (int k = 0; k < 4; ++k)
      add(o, o + "_" + shape_names[k],
          {x_("a", shapes[k].first, ga), x_("b", shapes[k].second, gb)}, binary(o));
  }
  // The same tensor on both sides (gradients accumulate).
  add("mul", "mul_self", {x_("a", {2, 3})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.mul(v[0], v[0]); });
  add("div", "div_positive_divisor", {x_("a", {3, 1}), x_("b", {1, 4}, Gen::positive)},
      binary("div"));

  add("where", "where_same", {bool_("c", {3, 4}), x_("a", {3, 4}), x_("b", {3, 4})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.where(v[0], v[1], v[2]); });
  add("where", "where_bcast", {bool_("c", {3, 2, 1}), x_("a", {2, 4}), x_("b", {3, 1, 4})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.where(v[0], v[1], v[2]); });
  add("cast", "cast_f64_f64", {x_("x", {2, 3})}, [](const Emitter& e, const std::vector<Value>& v) {
    return e.op("cast", {v[0]}, {{"dtype", std::string("f64")}});
  });
  // stop_gradient: a forward identity whose gradient must be zero (numerically it is not).
  add("stop_gradient", "stop_gradient_alone", {In{"x", DType::f64, {2, 3}, Gen::any, 0, true}},
      unary("stop_gradient"));
  add("stop_gradient", "stop_gradient_in_product",
      {x_("a", {2, 3}), In{"x", DType::f64, {2, 3}, Gen::any, 0, true}},
      [](const Emitter& e, const std::vector<Value>& v) {
        return e.mul(v[0], e.stop_gradient(v[1]));
      });

  // Reductions over {}, {0}, {-1}, {0,2}, keepdims both ways.
  for (const char* op : {"sum", "max"}) {
    const Gen gen = std::string(op) == "max" ? Gen::distinct : Gen::any;
    for (const std::vector<int64_t>& axes : {std::vector<int64_t>{}, {0}, {-1}, {0, 2}, {1}})
      for (bool keep : {false, true})
        add(op, std::string(op) + "_" + axes_name(axes) + (keep ? "_keep" : ""),
            {x_("x", {3, 4, 5}, gen)}, reduce(op, axes, keep));
    add(op, std::string(op) + "_scalar", {x_("x", {}, gen)}, reduce(op, {}, false));
  }

  // Data movement.
  add("reshape", "reshape", {x_("x", {3, 4})}, [](const Emitter& e, const std::vector<Value>& v) {
    return e.reshape(v[0], {2, 1, 6});
  });
  add("reshape", "reshape_infer", {x_("x", {2, 3, 2})},
      [](const Emitter& e, const std::vector<Value>& v) {
        return e.reshape(v[0], {-1, 3});
      });
  add("transpose", "transpose_201", {x_("x", {2, 3, 4})},
      [](const Emitter& e, const std::vector<Value>& v) {
        return e.transpose(v[0], {2, 0, 1});
      });
  add("transpose", "transpose_10", {x_("x", {3, 4})},
      [](const Emitter& e, const std::vector<Value>& v) {
        return e.transpose(v[0], {1, 0});
      });
  add("concat", "concat_axis1", {x_("a", {2, 3}), x_("b", {2, 1}), x_("c", {2, 4})},
      [](const Emitter& e, const std::vector<Value>& v) {
        return e.concat({v[0], v[1], v[2]}, 1);
      });
  add("concat", "concat_axis_m3", {x_("a", {1, 2, 3}), x_("b", {2, 2, 3})},
      [](const Emitter& e, const std::vector<Value>& v) {
        return e.concat({v[0], v[1]}, -3);
      });
  add("slice", "slice_two_axes", {x_("x", {4, 5, 3})},
      [](const Emitter& e, const std::vector<Value>& v) {
        return e.slice(v[0], {0, 2}, {1, -2}, {3, 3});
      });
  add("slice", "slice_negative_end", {x_("x", {3, 6})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.slice(v[0], {-1}, {2}, {-1}); });
  add("pad", "pad", {x_("x", {2, 3})}, [](const Emitter& e, const std::vector<Value>& v) {
    return e.pad(v[0], {1, 0}, {2, 1});
  });
  add("broadcast_to", "broadcast_to_3x1", {x_("x", {3, 1})},
      [](const Emitter& e, const std::vector<Value>& v) {
        return e.broadcast_to(v[0], {2, 3, 4});
      });
  add("broadcast_to", "broadcast_to_scalar", {x_("x", {})},
      [](const Emitter& e, const std::vector<Value>& v) {
        return e.broadcast_to(v[0], {2, 2});
      });

  // Matmul: the four transpose combinations, then batch broadcasting.
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Shape a = ta ? Shape{4, 3} : Shape{3, 4}, b = tb ? Shape{5, 4} : Shape{4, 5};
      add("matmul", std::string("matmul") + (ta ? "_ta" : "") + (tb ? "_tb" : ""),
          {x_("a", a), x_("b", b)}, [=](const Emitter& e, const std::vector<Value>& v) {
            return e.matmul(v[0], v[1], ta, tb);
          });
    }
  auto mm = [](bool ta, bool tb) {
    return
        [=](const Emitter& e, const std::vector<Value>& v) { return e.matmul(v[0], v[1], ta, tb); };
  };
  add("matmul", "matmul_batch_2x3x4_4x5", {x_("a", {2, 3, 4}), x_("b", {4, 5})}, mm(false, false));
  add("matmul", "matmul_batch_2x1x3x4_3x4x5", {x_("a", {2, 1, 3, 4}), x_("b", {3, 4, 5})},
      mm(false, false));
  add("matmul", "matmul_batch_3x4_2x4x5", {x_("a", {3, 4}), x_("b", {2, 4, 5})}, mm(false, false));
  add("matmul", "matmul_batch_ta_tb", {x_("a", {2, 1, 4, 3}), x_("b", {2, 5, 4})}, mm(true, true));

  // Embedding lookup with repeated indices, and its scatter-add adjoint.
  add("gather", "gather_repeated", {x_("table", {3, 2}), index_("idx", {2, 4}, 2)},
      [](const Emitter& e, const std::vector<Value>& v) { return e.gather(v[0], v[1]); });
  add("gather", "gather_rank1_i32", {x_("table", {4}), index_("idx", {6}, 3, DType::i32)},
      [](const Emitter& e, const std::vector<Value>& v) { return e.gather(v[0], v[1]); });
  add("scatter_add", "scatter_add_repeated", {index_("idx", {6}, 2), x_("u", {6, 3})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.scatter_add(v[0], v[1], 4); });
  add("scatter_add", "scatter_add_2d_idx",
      {index_("idx", {2, 3}, 2, DType::i32), x_("u", {2, 3, 2})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.scatter_add(v[0], v[1], 3); });

  // Compositions in Emitter.
  add("softmax", "softmax_last", {x_("x", {3, 5})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.softmax(v[0]); });
  add("softmax", "softmax_axis0", {x_("x", {4, 3})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.softmax(v[0], 0); });
  add("log_softmax", "log_softmax", {x_("x", {2, 3, 4})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.log_softmax(v[0]); });
  add("cross_entropy", "cross_entropy", {x_("logits", {4, 5}), index_("labels", {4}, 4)},
      [](const Emitter& e, const std::vector<Value>& v) { return e.cross_entropy(v[0], v[1]); });
  add("cross_entropy", "cross_entropy_3d_i32",
      {x_("logits", {2, 3, 4}), index_("labels", {2, 3}, 3, DType::i32)},
      [](const Emitter& e, const std::vector<Value>& v) { return e.cross_entropy(v[0], v[1]); });
  add("layer_norm", "layer_norm", {x_("x", {3, 6}), x_("gamma", {6}), x_("beta", {6})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.layer_norm(v[0], v[1], v[2]); });
  add("mean", "mean_all", {x_("x", {3, 4, 5})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.mean(v[0]); });
  add("mean", "mean_1_keep", {x_("x", {3, 4, 5})},
      [](const Emitter& e, const std::vector<Value>& v) { return e.mean(v[0], {1}, true); });
  add("sum_to", "sum_to", {x_("x", {2, 3, 4})}, [](const Emitter& e, const std::vector<Value>& v) {
    return e.sum_to(v[0], {3, 1});
  });
  // The counter is a constant, so the mask is fixed and the gradient is mask * W.
  add("dropout", "dropout", {x_("x", {4, 6})}, [](const Emitter& e, const std::vector<Value>& v) {
    return e.dropout(v[0], e.constant(7, DType::i64), 0.3, 12345);
  });

  std::set<std::string> names;
  for (auto& k : c) EXPECT_TRUE(names.insert(k.name).second) << "duplicate case " << k.name;
  return c;
}

const std::vector<GradCase>& cases() {
  static const std::vector<GradCase> c = make_cases();
  return c;
}

// Input data for a case: see Gen.
std::vector<HostTensor> case_data(const GradCase& c, Rng& rng) {
  int64_t n_distinct = 0;
  for (auto& in : c.inputs)
    if (in.gen == Gen::distinct) n_distinct += numel(in.shape);
  EXPECT_LE(n_distinct, 300) << c.name << ": ties would come closer than 0.01";
  std::vector<double> grid(static_cast<size_t>(n_distinct));
  for (int64_t k = 0; k < n_distinct; ++k) grid[k] = -1.5 + 3.0 * (k + 0.5) / n_distinct;
  std::shuffle(grid.begin(), grid.end(), rng.engine());
  size_t next = 0;
  std::vector<HostTensor> data;
  for (auto& in : c.inputs) {
    HostTensor t = zeros(in.dt, in.shape);
    for (auto& x : t.v) {
      switch (in.gen) {
        case Gen::any:
          x = rng.uniform(-1.5, 1.5);
          break;
        case Gen::positive:
          x = rng.uniform(0.5, 2);
          break;
        case Gen::nonzero:
          x = rng.uniform(0.3, 1.5) * (rng.integer(0, 1) ? 1 : -1);
          break;
        case Gen::distinct:
          x = grid[next++];
          break;
        case Gen::index:
          x = static_cast<double>(rng.integer(0, in.hi));
          break;
        case Gen::boolean:
          x = static_cast<double>(rng.integer(0, 1));
          break;
      }
    }
    data.push_back(std::move(t));
  }
  return data;
}

uint64_t name_seed(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

class GradCheck : public testing::TestWithParam<GradCase> {};

TEST_P(GradCheck, MatchesCentralDifferences) {
  const GradCase& c = GetParam();
  Graph g(ops::registry());
  Emitter e(g, Origin::here());
  std::vector<Value> vals;
  for (auto& in : c.inputs) vals.push_back(e.input(in.name, in.dt, in.shape));
  const Value out = c.build(e, vals);
  ASSERT_EQ(g.type(out).dtype, DType::f64);
  const Value w = e.input("W", DType::f64, e.shape(out));
  const Value loss = e.sum(e.mul(out, w));

  std::vector<size_t> diff;  // differentiated inputs
  std::vector<Value> wrt;
  for (size_t i = 0; i < c.inputs.size(); ++i)
    if (is_floating(c.inputs[i].dt)) {
      diff.push_back(i);
      wrt.push_back(vals[i]);
    }
  const std::vector<Value> grads = gradients(g, loss, wrt);
  ASSERT_EQ(grads.size(), wrt.size());
  g.set_output("loss", loss);
  std::vector<std::string> outs = {"loss"};
  for (size_t k = 0; k < diff.size(); ++k)
    if (grads[k].valid()) {
      g.set_output("grad_" + c.inputs[diff[k]].name, grads[k]);
      outs.push_back("grad_" + c.inputs[diff[k]].name);
    }
  g.verify();  // autodiff's output must pass the verifier (STYLE rule 8)

  SerialParallel serial;
  // The gradients once; the loss alone (a program of its own) for the differences.
  const runtime::ExecutorOptions eo{.seed = 7, .use_blas = false, .parallel = &serial};
  runtime::Executor all(planner::one_device(g, outs, ""), eo), ex(planner::one_device(g, {"loss"}, ""), eo);
  all.initialize();
  ex.initialize();
  Rng rng(name_seed(c.name));
  const std::vector<HostTensor> data = case_data(c, rng);
  const HostTensor w_data = random_tensor(rng, DType::f64, e.shape(out), -1, 1);
  for (runtime::Executor* x : {&all, &ex}) {
    for (size_t i = 0; i < c.inputs.size(); ++i)
      if (const TensorRef t = x->input(c.inputs[i].name); t.data) store(t, data[i]);
    store(x->input("W"), w_data);
  }
  all.step();

  std::vector<HostTensor> analytic;
  for (size_t k = 0; k < diff.size(); ++k) {
    const In& in = c.inputs[diff[k]];
    analytic.push_back(grads[k].valid() ? load(all.output("grad_" + in.name))
                                        : zeros(in.dt, in.shape));
    ASSERT_EQ(analytic.back().shape, in.shape) << in.name;
  }

  const TensorRef loss_ref = ex.output("loss");
  auto f = [&] {
    ex.step();
    return loss_ref.as<const double>()[0];
  };
  for (size_t k = 0; k < diff.size(); ++k) {
    const In& in = c.inputs[diff[k]];
    const HostTensor& a = analytic[k];
    if (in.zero_grad) {
      for (int64_t j = 0; j < a.numel(); ++j)
        EXPECT_EQ(a.v[j], 0.0) << c.name << ": gradient of " << in.name << " element " << j;
      continue;
    }
    double* x = ex.input(in.name).as<double>();
    std::vector<double> numeric(static_cast<size_t>(a.numel()));
    double max_num = 0, max_err = 0;
    int64_t worst = -1;
    for (int64_t j = 0; j < a.numel(); ++j) {
      const double x0 = x[j];
      const double h = 1e-3 * std::max(1.0, std::fabs(x0));
      auto at = [&](double dx) {
        x[j] = x0 + dx;
        return f();
      };
      const double d1 = at(h) - at(-h), d2 = at(2 * h) - at(-2 * h);
      x[j] = x0;
      numeric[j] = (8 * d1 - d2) / (12 * h);
      max_num = std::max(max_num, std::fabs(numeric[j]));
      const double err = std::fabs(a.v[j] - numeric[j]);
      if (err > max_err) {
        max_err = err;
        worst = j;
      }
    }
    const double rel = max_err / std::max(1e-3, max_num);
    EXPECT_LT(rel, kMaxRelError) << c.name << ": d loss / d " << in.name << shape_str(in.shape)
                                 << " relative error " << rel << " at element " << worst
                                 << ": analytic " << a.v[worst] << ", numeric " << numeric[worst];
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, GradCheck, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<GradCase>& i) { return i.param.name; });

// dropout's gradient is its mask exactly: 0 or 1/(1-p), both present.
TEST(GradCheckDropout, GradientIsTheMask) {
  Graph g(ops::registry());
  Emitter e(g, Origin::here());
  const Value x = e.input("x", DType::f64, {50, 20});
  const Value counter = e.constant(3, DType::i64);
  const double p = 0.25;
  const Value y = e.dropout(x, counter, p, 99);
  const Value grad = gradients(g, e.sum(y), std::vector<Value>{x})[0];
  ASSERT_TRUE(grad.valid());
  g.set_output("grad", grad);
  g.set_output("mask", e.dropout_mask(counter, {50, 20}, p, 99, DType::f64));
  SerialParallel serial;
  runtime::Executor ex(planner::one_device(g), {.seed = 5, .use_blas = false, .parallel = &serial});
  ex.initialize();
  ex.step();  // the gradient does not read x
  const HostTensor gr = load(ex.output("grad")), mask = load(ex.output("mask"));
  EXPECT_TRUE(all_close(gr, mask, 0, 0));
  int zeros_seen = 0, kept_seen = 0;
  for (double v : gr.v) {
    EXPECT_TRUE(v == 0 || v == 1 / (1 - p)) << v;
    (v == 0 ? zeros_seen : kept_seen)++;
  }
  EXPECT_GT(zeros_seen, 0);
  EXPECT_GT(kept_seen, 0);
}

}  // namespace

std::vector<GradCaseInfo> grad_case_index() {
  std::vector<GradCaseInfo> v;
  for (auto& c : cases()) v.push_back({c.op, c.name});
  return v;
}

}  // namespace tessel::test
