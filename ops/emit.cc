#include "ops/emit.h"

#include <cmath>
#include <limits>
#include <numeric>

#include "graph/error.h"
#include "ops/kernel_util.h"

namespace tessel::ops {

namespace {
std::string init_name(Init i) {
  switch (i) {
    case Init::zeros: return "zeros";
    case Init::ones: return "ones";
    case Init::constant: return "constant";
    case Init::normal: return "normal";
    case Init::uniform: return "uniform";
  }
  return "zeros";
}
}  // namespace

Emitter Emitter::with_scope(std::string_view sub) const {
  std::string s = scope_.empty() ? std::string(sub) : scope_ + "/" + std::string(sub);
  Origin o = origin_;
  if (o.scope == scope_) o.scope = s;  // an emitter that records its scope (the DSL's) keeps doing so
  return Emitter(*g_, std::move(o), std::move(s));
}

Value Emitter::op(std::string_view op, std::vector<Value> in, Attrs attrs,
                  std::string_view name) const {
  std::string full = std::string(name.empty() ? op : name);
  if (!scope_.empty()) full = scope_ + "/" + full;
  return g_->add(op, std::move(in), std::move(attrs), full, origin_);
}

Value Emitter::input(std::string_view name, DType dt, Shape shape, std::string_view role, int64_t batch_dim) const {
  Attrs a{{"dtype", std::string(dtype_name(dt))}, {"shape", std::move(shape)}, {"batch_dim", batch_dim}};
  if (!role.empty()) a.set("role", std::string(role));
  return op("input", {}, std::move(a), name);
}

Value Emitter::parameter(std::string_view name, Shape shape, Init init, double scale,
                         DType dt) const {
  std::string full = scope_.empty() ? std::string(name) : scope_ + "/" + std::string(name);
  Attrs a{{"dtype", std::string(dtype_name(dt))},
          {"shape", std::move(shape)},
          {"init", init_name(init)},
          {"scale", scale},
          // A parameter's values depend on its name and the run's seed, not on the order
          // in which the model was built.
          {"seed", static_cast<int64_t>(hash_name(full) >> 1)}};
  return g_->add("parameter", {}, std::move(a), full, origin_);
}

Value Emitter::state(std::string_view name, Shape shape, DType dt, double value) const {
  return op("state", {}, {{"dtype", std::string(dtype_name(dt))}, {"shape", std::move(shape)},
                          {"value", value}}, name);
}

Value Emitter::constant(double v, DType dt, Shape shape) const {
  return op("constant", {}, {{"dtype", std::string(dtype_name(dt))}, {"shape", std::move(shape)},
                             {"value", v}});
}

Value Emitter::cast(Value x, DType dt) const {
  if (type(x).dtype == dt) return x;
  return op("cast", {x}, {{"dtype", std::string(dtype_name(dt))}});
}

Value Emitter::sum(Value x, std::vector<int64_t> axes, bool keepdims) const {
  return op("sum", {x}, {{"axes", std::move(axes)}, {"keepdims", keepdims}});
}
Value Emitter::max(Value x, std::vector<int64_t> axes, bool keepdims) const {
  return op("max", {x}, {{"axes", std::move(axes)}, {"keepdims", keepdims}});
}
Value Emitter::mean(Value x, std::vector<int64_t> axes, bool keepdims) const {
  const Shape& s = shape(x);
  int64_t n = 1;
  if (axes.empty())
    n = numel(s);
  else
    for (int64_t a : axes) n *= s[normalize_axis(a, static_cast<int>(s.size()))];
  Value total = sum(x, std::move(axes), keepdims);
  return n == 1 ? total : mul(total, 1.0 / static_cast<double>(n));
}

Value Emitter::reshape(Value x, Shape shape) const {
  if (this->shape(x) == shape) return x;
  return op("reshape", {x}, {{"shape", std::move(shape)}});
}
Value Emitter::transpose(Value x, std::vector<int64_t> perm) const {
  return op("transpose", {x}, {{"perm", std::move(perm)}});
}
Value Emitter::concat(std::vector<Value> xs, int64_t axis) const {
  if (xs.size() == 1) return xs[0];
  return op("concat", std::move(xs), {{"axis", axis}});
}
Value Emitter::slice(Value x, std::vector<int64_t> axes, std::vector<int64_t> starts,
                     std::vector<int64_t> ends) const {
  return op("slice", {x}, {{"axes", std::move(axes)}, {"starts", std::move(starts)},
                           {"ends", std::move(ends)}});
}
Value Emitter::pad(Value x, std::vector<int64_t> before, std::vector<int64_t> after) const {
  return op("pad", {x}, {{"before", std::move(before)}, {"after", std::move(after)}});
}
Value Emitter::broadcast_to(Value x, Shape shape) const {
  if (this->shape(x) == shape) return x;
  return op("broadcast_to", {x}, {{"shape", std::move(shape)}});
}

Value Emitter::sum_to(Value x, const Shape& target) const {
  const Shape& s = shape(x);
  if (s == target) return x;
  int lead = static_cast<int>(s.size()) - static_cast<int>(target.size());
  if (lead < 0)
    throw Error(origin_.str() + ": cannot sum " + shape_str(s) + " down to " + shape_str(target));
  std::vector<int64_t> axes;
  for (int i = 0; i < static_cast<int>(s.size()); ++i)
    if (i < lead || (target[i - lead] == 1 && s[i] != 1)) axes.push_back(i);
  Value r = axes.empty() ? x : sum(x, axes, true);
  return reshape(r, target);
}

Value Emitter::matmul(Value a, Value b, bool ta, bool tb) const {
  return op("matmul", {a, b}, {{"transpose_a", ta}, {"transpose_b", tb}});
}

Value Emitter::scatter_add(Value idx, Value updates, int64_t size) const {
  return op("scatter_add", {idx, updates}, {{"size", size}});
}

Value Emitter::one_hot(Value labels, int64_t depth, DType dt) const {
  return op("one_hot", {labels}, {{"depth", depth}, {"dtype", std::string(dtype_name(dt))}});
}

Value Emitter::causal_mask(int64_t rows, int64_t cols, DType dt) const {
  return op("causal_mask", {}, {{"rows", rows}, {"cols", cols}, {"dtype", std::string(dtype_name(dt))}});
}

Value Emitter::dropout_mask(Value counter, Shape shape, double p, uint64_t seed, DType dt) const {
  return op("dropout_mask", {counter}, {{"shape", std::move(shape)}, {"p", p},
                                        {"seed", static_cast<int64_t>(seed >> 1)},
                                        {"dtype", std::string(dtype_name(dt))}});
}

Value Emitter::softmax(Value x, int64_t axis) const {
  Emitter e = with_scope("softmax");
  Value m = e.stop_gradient(e.max(x, {axis}, true));
  Value z = e.exp(e.sub(x, m));
  return e.div(z, e.sum(z, {axis}, true));
}

Value Emitter::log_softmax(Value x, int64_t axis) const {
  Emitter e = with_scope("log_softmax");
  Value m = e.stop_gradient(e.max(x, {axis}, true));
  Value shifted = e.sub(x, m);
  return e.sub(shifted, e.log(e.sum(e.exp(shifted), {axis}, true)));
}

Value Emitter::cross_entropy(Value logits, Value labels) const {
  Emitter e = with_scope("cross_entropy");
  const TensorType& lt = type(logits);
  if (lt.rank() < 1) throw Error(origin_.str() + ": cross_entropy: logits must have a class axis, got " + lt.str());
  Shape want(lt.shape.begin(), lt.shape.end() - 1);
  if (shape(labels) != want || !is_integral(type(labels).dtype))
    throw Error(origin_.str() + ": cross_entropy: labels must be integers of shape " +
                shape_str(want) + " for logits " + lt.str() + ", got " + type(labels).str());
  Value lp = e.log_softmax(logits, -1);
  Value picked = e.mul(lp, e.one_hot(labels, lt.shape.back(), lt.dtype));
  return e.neg(e.mean(e.sum(picked, {-1}), {}));
}

Value Emitter::layer_norm(Value x, Value gamma, Value beta, double eps) const {
  Emitter e = with_scope("layer_norm");
  Value mu = e.mean(x, {-1}, true);
  Value xc = e.sub(x, mu);
  Value var = e.mean(e.square(xc), {-1}, true);
  Value y = e.mul(xc, e.rsqrt(e.add(var, eps)));
  return e.add(e.mul(y, gamma), beta);
}

Value Emitter::dropout(Value x, Value counter, double p, uint64_t seed) const {
  if (p <= 0) return x;
  Emitter e = with_scope("dropout");
  return e.mul(x, e.dropout_mask(counter, shape(x), p, seed, type(x).dtype));
}

}  // namespace tessel::ops
