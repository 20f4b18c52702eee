// Source ops: inputs fed each step, variables (parameters, optimizer state) and constants.
#include <cmath>

#include "ops/defs.h"

namespace tessel::ops {

namespace {

// Writes v(i) into element i of t, converting to t's dtype.
template <class F>
void fill(const KernelCtx& ctx, const TensorRef& t, F v) {
  auto run = [&](auto* p, auto conv) {
    parallel_range(ctx, t.numel, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = conv(v(i));
    });
  };
  switch (t.dtype) {
    case DType::f32: run(t.as<float>(), [](double x) { return static_cast<float>(x); }); break;
    case DType::f64: run(t.as<double>(), [](double x) { return x; }); break;
    case DType::bf16: run(t.as<uint16_t>(), [](double x) { return f32_to_bf16(float(x)); }); break;
    case DType::f16: run(t.as<uint16_t>(), [](double x) { return f32_to_f16(float(x)); }); break;
    case DType::i32: run(t.as<int32_t>(), [](double x) { return static_cast<int32_t>(x); }); break;
    case DType::i64: run(t.as<int64_t>(), [](double x) { return static_cast<int64_t>(x); }); break;
    case DType::boolean: run(t.as<bool>(), [](double x) { return x != 0; }); break;
  }
}

std::vector<TensorType> infer_source(const Node& n, std::span<const TensorType>) {
  return {TensorType{attr_dtype(n), attr_shape(n)}};
}

void nothing_kernel(const Node&, std::span<const TensorRef>, std::span<const TensorRef>,
                    const KernelCtx&) {}

void parameter_init(const Node& n, std::span<const TensorRef>, std::span<const TensorRef> out,
                    const KernelCtx& ctx) {
  const std::string& init = n.attrs.get_str("init");
  const double scale = n.attrs.get_f64_or("scale", 0);
  const uint64_t seed = mix64(ctx.seed ^ static_cast<uint64_t>(n.attrs.get_i64("seed")));
  const ShardIndex at = shard_index(n, out[0].shape);  // a shard draws its slice of the whole
  if (init == "zeros") fill(ctx, out[0], [](int64_t) { return 0.0; });
  else if (init == "ones") fill(ctx, out[0], [](int64_t) { return 1.0; });
  else if (init == "constant") fill(ctx, out[0], [=](int64_t) { return scale; });
  else if (init == "normal") fill(ctx, out[0], [&](int64_t i) { return scale * rand_normal(seed, at.global(i)); });
  else if (init == "uniform")
    fill(ctx, out[0], [&](int64_t i) { return scale * (2 * rand_uniform(seed, at.global(i)) - 1); });
  else throw Error(n.where() + ": unknown initializer '" + init + "'");
}

void fill_value_kernel(const Node& n, std::span<const TensorRef>, std::span<const TensorRef> out,
                       const KernelCtx& ctx) {
  const double v = n.attrs.get_f64("value");
  fill(ctx, out[0], [=](int64_t) { return v; });
}

std::vector<TensorType> infer_parameter(const Node& n, std::span<const TensorType> in) {
  const std::string& init = n.attrs.get_str("init");
  if (init != "zeros" && init != "ones" && init != "constant" && init != "normal" && init != "uniform")
    throw Error("unknown initializer '" + init + "' (zeros, ones, constant, normal, uniform)");
  auto t = infer_source(n, in);
  if (!is_floating(t[0].dtype)) throw Error("a parameter must be floating point, got " + t[0].str());
  return t;
}

Cost no_cost(const Node&, std::span<const TensorType>) { return {}; }

}  // namespace

void register_source_ops(OpRegistry& r) {
  OpDef in;
  in.name = "input";
  in.kind = OpKind::input;
  // batch_dim: the dim that holds the samples (absent: 0; -1: not batched), which the planner
  // splits into microbatches and over data-parallel replicas. role: what a dataset feeds
  // ("data", "labels", "tokens", "targets", or any other word).
  in.attrs = {attr("dtype", AttrType::string), attr("shape", AttrType::i64s), attr("batch_dim", AttrType::i64, false),
              attr("role", AttrType::string, false)};
  in.infer = infer_source;
  in.kernel = nothing_kernel;
  in.cost = no_cost;
  in.sharding = rule_source;
  in.doc = "data fed by the caller each step";
  r.add(std::move(in));

  OpDef p;
  p.name = "parameter";
  p.kind = OpKind::variable;
  p.attrs = {attr("dtype", AttrType::string), attr("shape", AttrType::i64s),
             attr("init", AttrType::string), attr("scale", AttrType::f64, false),
             attr("seed", AttrType::i64), attr("global_shape", AttrType::i64s, false),
             attr("offsets", AttrType::i64s, false)};
  p.localize = localize_generated;
  p.infer = infer_parameter;
  p.kernel = parameter_init;
  p.cost = no_cost;
  p.sharding = rule_source;
  p.doc = "trainable weight; its kernel is the seeded initializer";
  r.add(std::move(p));

  OpDef s;
  s.name = "state";
  s.kind = OpKind::variable;
  s.attrs = {attr("dtype", AttrType::string), attr("shape", AttrType::i64s),
             attr("value", AttrType::f64)};
  s.infer = infer_source;
  s.kernel = fill_value_kernel;
  s.cost = no_cost;
  s.sharding = rule_source;
  s.doc = "persistent non-trainable tensor (optimizer state, counters), filled with value";
  r.add(std::move(s));

  OpDef c;
  c.name = "constant";
  c.kind = OpKind::constant;
  c.attrs = {attr("dtype", AttrType::string), attr("shape", AttrType::i64s),
             attr("value", AttrType::f64)};
  c.infer = infer_source;
  c.kernel = fill_value_kernel;
  c.cost = no_cost;
  c.sharding = rule_source;
  c.doc = "tensor filled with value (or with stored data) before the first step";
  r.add(std::move(c));
}

}  // namespace tessel::ops
