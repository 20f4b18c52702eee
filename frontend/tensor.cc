#include "frontend/tensor.h"

#include <cstring>

#include "graph/error.h"
#include "ops/kernel_util.h"
#include "ops/registry.h"

namespace tessel {

namespace {
Model& model_of(const Tensor& a) {
  if (!a.valid()) throw Error("use of an empty Tensor");
  return a.model();
}
Model& model_of(const Tensor& a, const Tensor& b) {
  Model& m = model_of(a);
  if (&model_of(b) != &m) throw Error("tensors from two different models combined");
  return m;
}
ops::Emitter em(const Tensor& a, SourceLoc loc) { return model_of(a).emit(loc); }
}  // namespace

const TensorType& Tensor::type() const { return model_of(*this).graph().type(value_); }
const Node& Tensor::node() const { return model_of(*this).graph().node(value_.node); }
int64_t Tensor::dim(int i) const { return shape().at(normalize_axis(i, rank())); }

Model::Model() : Model(ops::registry()) {}
Model::Model(const OpRegistry& registry) : graph_(registry) {}

Model::Scope::Scope(Model& m, std::string_view name, bool absolute) : m_(m), saved_(m.scope_) {
  m.scope_ = absolute ? std::string(name) : m.scoped(name);
}
Model::Scope::~Scope() { m_.scope_ = std::move(saved_); }

Tensor Model::input(std::string_view name, Shape shape, DType dt, std::string_view role, int64_t batch_dim,
                    SourceLoc loc) {
  if (batch_dim < -1 || batch_dim >= static_cast<int64_t>(shape.size()))
    throw Error(Origin::at(loc).str() + ": input '" + std::string(name) + "': batch_dim " + std::to_string(batch_dim) +
                " is not a dim of " + shape_str(shape) + " (-1: not batched)");
  return wrap(emit(loc).input(name, dt, std::move(shape), role, batch_dim));
}
Tensor Model::parameter(std::string_view name, Shape shape, ops::Init init, double scale, SourceLoc loc) {
  return wrap(emit(loc).parameter(name, std::move(shape), init, scale, float_dtype_));
}
Tensor Model::constant(double v, Shape shape, DType dt, SourceLoc loc) {
  return wrap(emit(loc).constant(v, dt, std::move(shape)));
}

Tensor Model::dropout_counter() {
  if (!dropout_counter_.valid()) {
    ops::Emitter e(graph_, Origin::here(), "");
    dropout_counter_ = e.state("dropout/counter", {}, DType::i64, 0);
  }
  return wrap(dropout_counter_);
}

void Model::set_float_dtype(DType dt) {
  if (!is_floating(dt))
    throw Error("Model::set_float_dtype: " + std::string(dtype_name(dt)) + " is not a floating type");
  float_dtype_ = dt;
}

Tensor Model::constant(std::string_view name, Shape shape, std::span<const double> values, DType dt,
                       SourceLoc loc) {
  const std::string where = Origin::at(loc).str() + ": constant '" + scoped(name) + "': ";
  if (static_cast<int64_t>(values.size()) != numel(shape))
    throw Error(where + std::to_string(values.size()) + " values for shape " + shape_str(shape));
  std::vector<std::byte> bytes(values.size() * dtype_size(dt));
  auto put = [&](auto conv) {
    for (size_t i = 0; i < values.size(); ++i) {
      auto x = conv(values[i]);
      std::memcpy(bytes.data() + i * sizeof x, &x, sizeof x);
    }
  };
  switch (dt) {
    case DType::f64: put([](double x) { return x; }); break;
    case DType::f32: put([](double x) { return static_cast<float>(x); }); break;
    case DType::bf16: put([](double x) { return ops::f32_to_bf16(static_cast<float>(x)); }); break;
    case DType::f16: put([](double x) { return ops::f32_to_f16(static_cast<float>(x)); }); break;
    default: throw Error(where + "stored values must be floating point, not " + std::string(dtype_name(dt)));
  }
  Value v = emit(loc).op("constant", {}, {{"dtype", std::string(dtype_name(dt))}, {"shape", std::move(shape)},
                                          {"value", 0.0}}, name);
  graph_.set_data(v.node, std::move(bytes));
  return wrap(v);
}

#define TESSEL_BINARY(sym, method)                                                        \
  Tensor operator sym(const Tensor& a, At<Tensor> b) {                                    \
    Model& m = model_of(a, b.v);                                                          \
    return m.wrap(m.emit(b.loc).method(a.value(), b.v.value()));                          \
  }                                                                                       \
  Tensor operator sym(const Tensor& a, At<double> b) {                                    \
    ops::Emitter e = em(a, b.loc);                                                        \
    return a.model().wrap(e.method(a.value(), e.scalar_like(a.value(), b.v)));            \
  }                                                                                       \
  Tensor operator sym(At<double> a, const Tensor& b) {                                    \
    ops::Emitter e = em(b, a.loc);                                                        \
    return b.model().wrap(e.method(e.scalar_like(b.value(), a.v), b.value()));            \
  }
TESSEL_BINARY(+, add)
TESSEL_BINARY(-, sub)
TESSEL_BINARY(*, mul)
TESSEL_BINARY(/, div)
#undef TESSEL_BINARY

Tensor operator-(const Tensor& a) {
  Model& m = model_of(a);
  ops::Emitter e(m.graph(), a.node().origin, m.current_scope());
  return m.wrap(e.neg(a.value()));
}

#define TESSEL_UNARY(fn)                                      \
  Tensor fn(const Tensor& x, SourceLoc loc) {                 \
    return x.model().wrap(em(x, loc).fn(x.value()));          \
  }
TESSEL_UNARY(exp) TESSEL_UNARY(log) TESSEL_UNARY(sqrt) TESSEL_UNARY(rsqrt) TESSEL_UNARY(tanh)
TESSEL_UNARY(relu) TESSEL_UNARY(gelu) TESSEL_UNARY(sigmoid) TESSEL_UNARY(abs)
TESSEL_UNARY(stop_gradient)
#undef TESSEL_UNARY

Tensor silu(const Tensor& x, SourceLoc loc) {
  ops::Emitter e = em(x, loc);
  return x.model().wrap(e.mul(x.value(), e.sigmoid(x.value())));
}
Tensor maximum(const Tensor& a, const Tensor& b, SourceLoc loc) {
  return model_of(a, b).wrap(em(a, loc).maximum(a.value(), b.value()));
}
Tensor minimum(const Tensor& a, const Tensor& b, SourceLoc loc) {
  return model_of(a, b).wrap(em(a, loc).minimum(a.value(), b.value()));
}
Tensor greater(const Tensor& a, const Tensor& b, SourceLoc loc) {
  return model_of(a, b).wrap(em(a, loc).greater(a.value(), b.value()));
}
Tensor where(const Tensor& c, const Tensor& a, const Tensor& b, SourceLoc loc) {
  model_of(c, a);
  return model_of(a, b).wrap(em(a, loc).where(c.value(), a.value(), b.value()));
}
Tensor cast(const Tensor& x, DType dt, SourceLoc loc) {
  return x.model().wrap(em(x, loc).cast(x.value(), dt));
}
Tensor matmul(const Tensor& a, const Tensor& b, bool ta, bool tb, SourceLoc loc) {
  return model_of(a, b).wrap(em(a, loc).matmul(a.value(), b.value(), ta, tb));
}
Tensor sum(const Tensor& x, std::vector<int64_t> axes, bool keepdims, SourceLoc loc) {
  return x.model().wrap(em(x, loc).sum(x.value(), std::move(axes), keepdims));
}
Tensor mean(const Tensor& x, std::vector<int64_t> axes, bool keepdims, SourceLoc loc) {
  return x.model().wrap(em(x, loc).mean(x.value(), std::move(axes), keepdims));
}
Tensor max(const Tensor& x, std::vector<int64_t> axes, bool keepdims, SourceLoc loc) {
  return x.model().wrap(em(x, loc).max(x.value(), std::move(axes), keepdims));
}
Tensor reshape(const Tensor& x, Shape shape, SourceLoc loc) {
  return x.model().wrap(em(x, loc).reshape(x.value(), std::move(shape)));
}
Tensor transpose(const Tensor& x, std::vector<int64_t> perm, SourceLoc loc) {
  return x.model().wrap(em(x, loc).transpose(x.value(), std::move(perm)));
}
Tensor broadcast_to(const Tensor& x, Shape shape, SourceLoc loc) {
  return x.model().wrap(em(x, loc).broadcast_to(x.value(), std::move(shape)));
}
Tensor concat(const std::vector<Tensor>& xs, int64_t axis, SourceLoc loc) {
  if (xs.empty()) throw Error(Origin::at(loc).str() + ": concat of no tensors");
  std::vector<Value> vs;
  for (auto& t : xs) {
    model_of(xs[0], t);
    vs.push_back(t.value());
  }
  return xs[0].model().wrap(em(xs[0], loc).concat(std::move(vs), axis));
}
Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t end, SourceLoc loc) {
  return x.model().wrap(em(x, loc).slice(x.value(), {axis}, {start}, {end}));
}
Tensor gather(const Tensor& table, const Tensor& idx, SourceLoc loc) {
  return model_of(table, idx).wrap(em(table, loc).gather(table.value(), idx.value()));
}
Tensor softmax(const Tensor& x, int64_t axis, SourceLoc loc) {
  return x.model().wrap(em(x, loc).softmax(x.value(), axis));
}
Tensor log_softmax(const Tensor& x, int64_t axis, SourceLoc loc) {
  return x.model().wrap(em(x, loc).log_softmax(x.value(), axis));
}
Tensor dropout(const Tensor& x, double p, SourceLoc loc) {
  Model& m = model_of(x);
  if (!m.training() || p <= 0) return x;
  if (p >= 1) throw Error(Origin::at(loc).str() + ": dropout probability must be below 1, got " + std::to_string(p));
  ops::Emitter e = m.emit(loc);
  // Each dropout site draws its own masks: seed it from the node name it will get.
  uint64_t seed = ops::hash_name(m.current_scope() + "/dropout@" + std::to_string(m.graph().size()));
  return m.wrap(e.dropout(x.value(), m.dropout_counter().value(), p, seed));
}
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, SourceLoc loc) {
  return model_of(logits, labels).wrap(em(logits, loc).cross_entropy(logits.value(), labels.value()));
}
Tensor mse_loss(const Tensor& pred, const Tensor& target, SourceLoc loc) {
  ops::Emitter e = em(pred, loc);
  model_of(pred, target);
  return pred.model().wrap(e.mean(e.square(e.sub(pred.value(), target.value()))));
}

}  // namespace tessel
