// Elementwise ops: unary math, broadcasting binary arithmetic, comparisons, where, cast.
#include <cmath>
#include <limits>

#include "ops/defs.h"
#include "ops/fast_math.h"

namespace tessel::ops {

namespace {

// ---- unary -----------------------------------------------------------------------------

constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluA = 0.044715;

struct Neg { template <class T> static T f(T x) { return -x; } };
struct Exp { template <class T> static T f(T x) { return fast_exp(x); } };
struct Log { template <class T> static T f(T x) { return std::log(x); } };
struct Sqrt { template <class T> static T f(T x) { return std::sqrt(x); } };
struct Rsqrt { template <class T> static T f(T x) { return T(1) / std::sqrt(x); } };
struct Tanh { template <class T> static T f(T x) { return fast_tanh(x); } };
struct Abs { template <class T> static T f(T x) { return std::fabs(x); } };
struct Relu { template <class T> static T f(T x) { return x > T(0) ? x : T(0); } };
struct Sigmoid { template <class T> static T f(T x) { return fast_sigmoid(x); } };
// GELU, tanh approximation as in GPT-2: 0.5 x (1 + tanh(u)), u = c (x + a x^3), computed as
// the equal x * sigmoid(2u): one exp instead of tanh's, and no cancellation in 1 + tanh(u)
// for negative x.
struct Gelu {
  template <class T> static T f(T x) {
    return x * fast_sigmoid(T(2 * kGeluC) * (x + T(kGeluA) * x * x * x));
  }
};

template <class F>
void unary_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                  const KernelCtx& ctx) {
  dispatch_float(n, out[0].dtype, [&](auto t) {
    using T = decltype(t);
    map_unary<T, T>(ctx, in[0], out[0], [](T x) { return F::f(x); });
  });
}

std::vector<TensorType> infer_unary_float(const Node&, std::span<const TensorType> in) {
  require_float(in[0], "input");
  return {in[0]};
}

ScalarExpr expr_unary(ScalarOp op) {
  ScalarExpr e;
  e.unary(op, e.arg(0));
  return e;
}

ScalarExpr gelu_expr(const Node&) {
  ScalarExpr e;
  int x = e.arg(0);
  int x3 = e.binary(ScalarOp::mul, e.binary(ScalarOp::mul, x, x), x);
  int two_u = e.binary(ScalarOp::mul, e.constant(2 * kGeluC),
                       e.binary(ScalarOp::add, x, e.binary(ScalarOp::mul, e.constant(kGeluA), x3)));
  e.binary(ScalarOp::mul, x, e.unary(ScalarOp::sigmoid, two_u));
  return e;
}

ScalarExpr sigmoid_expr(const Node&) { return expr_unary(ScalarOp::sigmoid); }

ScalarExpr relu_expr(const Node&) {
  ScalarExpr e;
  e.binary(ScalarOp::max, e.arg(0), e.constant(0));
  return e;
}

// Which inputs partial sums may pass through, per op (see ShardingRule).
template <bool A, bool B = false, bool Additive = false>
ShardingRule rule_ew(const Node& n, std::span<const TensorType> in) {
  ShardingRule r = rule_elementwise(n, in);
  r.linear = {A, B, false};
  r.linear.resize(in.size());
  r.additive = Additive;
  return r;
}

void add_unary(OpRegistry& r, std::string name, KernelFn k, ScalarFn s, GradFn g, std::string doc,
               ShardingFn sh = rule_ew<false>) {
  OpDef d;
  d.name = std::move(name);
  d.min_inputs = d.max_inputs = 1;
  d.infer = infer_unary_float;
  d.kernel = k;
  d.scalar = s;
  d.grad = g;
  d.cost = elementwise_cost;
  d.sharding = sh;
  d.doc = std::move(doc);
  r.add(std::move(d));
}

// Gradient of x -> y given dy: each returns dx.
void grad_neg(GradCtx& c) { c.in_grads[0] = grad_emitter(c).neg(c.out_grads[0]); }
void grad_exp(GradCtx& c) { c.in_grads[0] = grad_emitter(c).mul(c.out_grads[0], fwd(c).out()); }
void grad_log(GradCtx& c) {
  c.in_grads[0] = grad_emitter(c).div(c.out_grads[0], fwd(c).inputs[0]);
}
void grad_sqrt(GradCtx& c) {
  Emitter e = grad_emitter(c);
  c.in_grads[0] = e.div(e.mul(c.out_grads[0], 0.5), fwd(c).out());
}
void grad_rsqrt(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  Value y = n.out(), x = n.inputs[0];
  c.in_grads[0] = e.mul(c.out_grads[0], e.mul(e.div(y, x), -0.5));
}
void grad_tanh(GradCtx& c) {
  Emitter e = grad_emitter(c);
  Value y = fwd(c).out();
  Value one = e.scalar_like(y, 1);
  c.in_grads[0] = e.mul(c.out_grads[0], e.sub(one, e.square(y)));
}
void grad_sigmoid(GradCtx& c) {
  Emitter e = grad_emitter(c);
  Value y = fwd(c).out();
  Value one = e.scalar_like(y, 1);
  c.in_grads[0] = e.mul(c.out_grads[0], e.mul(y, e.sub(one, y)));
}
void grad_relu(GradCtx& c) {
  Emitter e = grad_emitter(c);
  Value x = fwd(c).inputs[0];
  Value zero = e.scalar_like(x, 0);
  c.in_grads[0] = e.where(e.greater(x, zero), c.out_grads[0], zero);
}
void grad_abs(GradCtx& c) {
  Emitter e = grad_emitter(c);
  Value x = fwd(c).inputs[0];
  Value g = c.out_grads[0];
  c.in_grads[0] = e.where(e.greater(x, e.scalar_like(x, 0)), g, e.neg(g));
}
void grad_gelu(GradCtx& c) {
  // gelu(x) = x s, s = sigmoid(2u), u = c(x + a x^3); d/dx = s + x s (1 - s) 2u'
  //         = s (1 + x (1 - s) 2c(1 + 3a x^2)). One sigmoid, as the forward has (equal to the
  // tanh form's 0.5(1 + t) + 0.5x(1 - t^2)u' with t = 2s - 1).
  Emitter e = grad_emitter(c);
  Value x = fwd(c).inputs[0];
  Value x2 = e.square(x);
  Value s = e.sigmoid(e.mul(e.mul(x, e.add(e.mul(x2, kGeluA), 1.0)), 2 * kGeluC));
  Value du2 = e.mul(e.add(e.mul(x2, 3 * kGeluA), 1.0), 2 * kGeluC);
  Value one = e.scalar_like(x, 1);
  Value inner = e.add(e.mul(e.mul(x, e.sub(one, s)), du2), 1.0);
  c.in_grads[0] = e.mul(c.out_grads[0], e.mul(s, inner));
}

// ---- binary ----------------------------------------------------------------------------

struct Add { template <class T> static T f(T a, T b) { return a + b; } };
struct Sub { template <class T> static T f(T a, T b) { return a - b; } };
struct Mul { template <class T> static T f(T a, T b) { return a * b; } };
struct Div {
  template <class T> static T f(T a, T b) {
    if constexpr (std::is_integral_v<T>) {
      // INT_MIN / -1 overflows: wrap like two's-complement negation instead of trapping.
      if (b == -1) return static_cast<T>(std::make_unsigned_t<T>(0) - static_cast<std::make_unsigned_t<T>>(a));
    }
    return a / b;
  }
};
struct Maximum { template <class T> static T f(T a, T b) { return a > b ? a : b; } };
struct Minimum { template <class T> static T f(T a, T b) { return a < b ? a : b; } };
struct Greater { template <class T> static bool f(T a, T b) { return a > b; } };
struct Equal { template <class T> static bool f(T a, T b) { return a == b; } };

template <class F>
void binary_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                   const KernelCtx& ctx) {
  dispatch_numeric(n, in[0].dtype, [&](auto t) {
    using T = decltype(t);
    if constexpr (std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>) {
      if constexpr (std::is_same_v<F, Div>) {
        // Integer division by zero is undefined behaviour: refuse it instead.
        const T* b = in[1].as<const T>();
        for (int64_t i = 0; i < in[1].numel; ++i)
          if (b[i] == 0) throw Error(n.where() + ": integer division by zero");
      }
    }
    using R = decltype(F::f(T{}, T{}));
    map_binary<T, T, R>(ctx, in[0], in[1], out[0], [](T a, T b) { return F::f(a, b); });
  });
}

std::vector<TensorType> infer_binary(const Node&, std::span<const TensorType> in) {
  if (in[0].dtype != in[1].dtype)
    throw Error("dtypes differ: " + in[0].str() + " vs " + in[1].str());
  require_numeric(in[0], "operands");
  return {TensorType{in[0].dtype, broadcast_shapes(in[0].shape, in[1].shape)}};
}
std::vector<TensorType> infer_compare(const Node& n, std::span<const TensorType> in) {
  auto t = infer_binary(n, in);
  t[0].dtype = DType::boolean;
  return t;
}

template <ScalarOp Op>
ScalarExpr expr_binary(const Node&) {
  ScalarExpr e;
  e.binary(Op, e.arg(0), e.arg(1));
  return e;
}

void add_binary(OpRegistry& r, std::string name, KernelFn k, ScalarFn s, GradFn g,
                bool compare, std::string doc, ShardingFn sh = rule_ew<false, false>) {
  OpDef d;
  d.name = std::move(name);
  d.min_inputs = d.max_inputs = 2;
  d.infer = compare ? infer_compare : infer_binary;
  d.kernel = k;
  d.scalar = s;
  d.grad = g;
  d.cost = elementwise_cost;
  d.sharding = sh;
  d.doc = std::move(doc);
  r.add(std::move(d));
}

// Sets input grads, summing broadcast dims back to each input's shape.
void set_binary_grads(GradCtx& c, const Emitter& e, Value ga, Value gb) {
  const Node& n = fwd(c);
  if (ga.valid()) c.in_grads[0] = e.sum_to(ga, e.shape(n.inputs[0]));
  if (gb.valid()) c.in_grads[1] = e.sum_to(gb, e.shape(n.inputs[1]));
}
// Builds an input's gradient only if it is wanted.
template <class F>
Value if_wanted(const GradCtx& c, size_t i, F f) {
  return c.wants(i) ? f() : Value{};
}

void grad_add(GradCtx& c) {
  Value g = c.out_grads[0];
  set_binary_grads(c, grad_emitter(c), if_wanted(c, 0, [&] { return g; }), if_wanted(c, 1, [&] { return g; }));
}
void grad_sub(GradCtx& c) {
  Emitter e = grad_emitter(c);
  Value g = c.out_grads[0];
  set_binary_grads(c, e, g, if_wanted(c, 1, [&] { return e.neg(g); }));
}
void grad_mul(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  Value g = c.out_grads[0];
  Value a = n.inputs[0], b = n.inputs[1];
  set_binary_grads(c, e, if_wanted(c, 0, [&] { return e.mul(g, b); }),
                   if_wanted(c, 1, [&] { return e.mul(g, a); }));
}
void grad_div(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  Value g = c.out_grads[0];
  Value b = n.inputs[1], y = n.out();
  Value ga = e.div(g, b);
  set_binary_grads(c, e, ga, if_wanted(c, 1, [&] { return e.neg(e.mul(ga, y)); }));  // d(a/b)/db = -(a/b)/b
}
void grad_maximum(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  Value g = c.out_grads[0], a = n.inputs[0], b = n.inputs[1];
  Value zero = e.scalar_like(g, 0);
  Value b_wins = e.greater(b, a);  // ties go to a
  set_binary_grads(c, e, e.where(b_wins, zero, g), e.where(b_wins, g, zero));
}
void grad_minimum(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  Value g = c.out_grads[0], a = n.inputs[0], b = n.inputs[1];
  Value zero = e.scalar_like(g, 0);
  Value b_wins = e.greater(a, b);
  set_binary_grads(c, e, e.where(b_wins, zero, g), e.where(b_wins, g, zero));
}

// ---- where, cast, stop_gradient ---------------------------------------------------------

std::vector<TensorType> infer_where(const Node&, std::span<const TensorType> in) {
  if (in[0].dtype != DType::boolean) throw Error("condition must be bool, got " + in[0].str());
  if (in[1].dtype != in[2].dtype)
    throw Error("branches differ in dtype: " + in[1].str() + " vs " + in[2].str());
  require_numeric(in[1], "branches");
  Shape s = broadcast_shapes(broadcast_shapes(in[0].shape, in[1].shape), in[2].shape);
  return {TensorType{in[1].dtype, s}};
}
void where_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                  const KernelCtx& ctx) {
  dispatch_numeric(n, out[0].dtype, [&](auto t) {
    using T = decltype(t);
    map_ternary<bool, T, T, T>(ctx, in[0], in[1], in[2], out[0],
                               [](bool c, T a, T b) { return c ? a : b; });
  });
}
ScalarExpr where_expr(const Node&) {
  ScalarExpr e;
  e.select(e.arg(0), e.arg(1), e.arg(2));
  return e;
}
void grad_where(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  Value g = c.out_grads[0], cond = n.inputs[0];
  Value zero = e.scalar_like(g, 0);
  if (c.wants(1)) c.in_grads[1] = e.sum_to(e.where(cond, g, zero), e.shape(n.inputs[1]));
  if (c.wants(2)) c.in_grads[2] = e.sum_to(e.where(cond, zero, g), e.shape(n.inputs[2]));
}

template <class T>
double load_as_double(const void* p, int64_t i) {
  if constexpr (std::is_same_v<T, uint16_t>) return 0;  // handled by caller
  else return static_cast<double>(static_cast<const T*>(p)[i]);
}

// Element i of a tensor of any dtype, as double / int64.
double load_f(const TensorRef& t, int64_t i) {
  switch (t.dtype) {
    case DType::f32: return t.as<const float>()[i];
    case DType::f64: return t.as<const double>()[i];
    case DType::bf16: return bf16_to_f32(t.as<const uint16_t>()[i]);
    case DType::f16: return f16_to_f32(t.as<const uint16_t>()[i]);
    case DType::i32: return t.as<const int32_t>()[i];
    case DType::i64: return static_cast<double>(t.as<const int64_t>()[i]);
    case DType::boolean: return t.as<const bool>()[i] ? 1.0 : 0.0;
  }
  return 0;
}
void store_f(const TensorRef& t, int64_t i, double v) {
  switch (t.dtype) {
    case DType::f32: t.as<float>()[i] = static_cast<float>(v); return;
    case DType::f64: t.as<double>()[i] = v; return;
    case DType::bf16: t.as<uint16_t>()[i] = f32_to_bf16(static_cast<float>(v)); return;
    case DType::f16: t.as<uint16_t>()[i] = f32_to_f16(static_cast<float>(v)); return;
    case DType::i32: t.as<int32_t>()[i] = std::isfinite(v) ? static_cast<int32_t>(std::clamp(v, -2147483648.0, 2147483647.0)) : 0; return;
    case DType::i64: t.as<int64_t>()[i] = std::isfinite(v) ? static_cast<int64_t>(std::clamp(v, -9.2233720368547748e18, 9.2233720368547748e18)) : 0; return;
    case DType::boolean: t.as<bool>()[i] = v != 0; return;
  }
}

void cast_kernel(const Node&, std::span<const TensorRef> in, std::span<const TensorRef> out,
                 const KernelCtx& ctx) {
  const TensorRef& x = in[0];
  const TensorRef& y = out[0];
  if (x.dtype == DType::f32 && y.dtype == DType::f64) {
    map_unary<float, double>(ctx, x, y, [](float v) { return double(v); });
  } else if (x.dtype == DType::f64 && y.dtype == DType::f32) {
    map_unary<double, float>(ctx, x, y, [](double v) { return float(v); });
  } else if (x.dtype == DType::i64 && y.dtype == DType::i32) {
    map_unary<int64_t, int32_t>(ctx, x, y, [](int64_t v) { return int32_t(v); });
  } else if (x.dtype == DType::i32 && y.dtype == DType::i64) {
    map_unary<int32_t, int64_t>(ctx, x, y, [](int32_t v) { return int64_t(v); });
  } else {
    parallel_range(ctx, y.numel, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) store_f(y, i, load_f(x, i));
    });
  }
}
std::vector<TensorType> infer_cast(const Node& n, std::span<const TensorType> in) {
  return {TensorType{attr_dtype(n), in[0].shape}};
}
ScalarExpr cast_expr(const Node&) {
  ScalarExpr e;
  e.arg(0);
  return e;
}
void grad_cast(GradCtx& c) {
  const Node& n = fwd(c);
  DType from = c.graph.type(n.inputs[0]).dtype;
  if (!is_floating(from)) return;
  c.in_grads[0] = grad_emitter(c).cast(c.out_grads[0], from);
}

std::vector<TensorType> infer_same(const Node&, std::span<const TensorType> in) { return {in[0]}; }

}  // namespace

void register_elementwise_ops(OpRegistry& r) {
  add_unary(r, "neg", unary_kernel<Neg>, [](const Node&) { return expr_unary(ScalarOp::neg); }, grad_neg, "-x", rule_ew<true>);
  add_unary(r, "exp", unary_kernel<Exp>, [](const Node&) { return expr_unary(ScalarOp::exp); }, grad_exp, "e^x");
  add_unary(r, "log", unary_kernel<Log>, [](const Node&) { return expr_unary(ScalarOp::log); }, grad_log, "natural logarithm");
  add_unary(r, "sqrt", unary_kernel<Sqrt>, [](const Node&) { return expr_unary(ScalarOp::sqrt); }, grad_sqrt, "square root");
  add_unary(r, "rsqrt", unary_kernel<Rsqrt>, [](const Node&) { return expr_unary(ScalarOp::rsqrt); }, grad_rsqrt, "1/sqrt(x)");
  add_unary(r, "tanh", unary_kernel<Tanh>, [](const Node&) { return expr_unary(ScalarOp::tanh); }, grad_tanh, "hyperbolic tangent");
  add_unary(r, "abs", unary_kernel<Abs>, [](const Node&) { return expr_unary(ScalarOp::abs); }, grad_abs, "|x|");
  add_unary(r, "relu", unary_kernel<Relu>, relu_expr, grad_relu, "max(x, 0)");
  add_unary(r, "sigmoid", unary_kernel<Sigmoid>, sigmoid_expr, grad_sigmoid, "1/(1+e^-x)");
  add_unary(r, "gelu", unary_kernel<Gelu>, gelu_expr, grad_gelu, "GELU, tanh approximation");

  add_binary(r, "add", binary_kernel<Add>, expr_binary<ScalarOp::add>, grad_add, false, "a + b (broadcasting)", rule_ew<true, true, true>);
  add_binary(r, "sub", binary_kernel<Sub>, expr_binary<ScalarOp::sub>, grad_sub, false, "a - b (broadcasting)", rule_ew<true, true, true>);
  add_binary(r, "mul", binary_kernel<Mul>, expr_binary<ScalarOp::mul>, grad_mul, false, "a * b (broadcasting)", rule_ew<true, true>);
  add_binary(r, "div", binary_kernel<Div>, expr_binary<ScalarOp::div>, grad_div, false, "a / b (broadcasting)", rule_ew<true, false>);
  add_binary(r, "maximum", binary_kernel<Maximum>, expr_binary<ScalarOp::max>, grad_maximum, false, "elementwise max(a, b)");
  add_binary(r, "minimum", binary_kernel<Minimum>, expr_binary<ScalarOp::min>, grad_minimum, false, "elementwise min(a, b)");
  add_binary(r, "greater", binary_kernel<Greater>, expr_binary<ScalarOp::gt>, nullptr, true, "a > b, bool");
  add_binary(r, "equal", binary_kernel<Equal>, expr_binary<ScalarOp::eq>, nullptr, true, "a == b, bool");

  OpDef w;
  w.name = "where";
  w.min_inputs = w.max_inputs = 3;
  w.infer = infer_where;
  w.kernel = where_kernel;
  w.scalar = where_expr;
  w.grad = grad_where;
  w.cost = elementwise_cost;
  w.sharding = rule_ew<false>;
  w.doc = "cond ? a : b (broadcasting)";
  r.add(std::move(w));

  OpDef c;
  c.name = "cast";
  c.min_inputs = c.max_inputs = 1;
  c.attrs = {attr("dtype", AttrType::string)};
  c.infer = infer_cast;
  c.kernel = cast_kernel;
  c.scalar = cast_expr;
  c.grad = grad_cast;
  c.cost = elementwise_cost;
  c.sharding = rule_ew<true>;
  c.doc = "convert to another dtype (round to nearest even for bf16/f16)";
  r.add(std::move(c));

  OpDef s;
  s.name = "stop_gradient";
  s.min_inputs = s.max_inputs = 1;
  s.infer = infer_same;
  s.kernel = copy_kernel;
  s.grad = [](GradCtx&) {};  // deliberately passes no gradient
  s.view = true;
  s.sharding = rule_identity;
  s.cost = [](const Node&, std::span<const TensorType>) { return Cost{}; };
  s.doc = "identity whose gradient is zero";
  r.add(std::move(s));
}

}  // namespace tessel::ops
