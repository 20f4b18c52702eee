// Optimizer helpers that are not plain arithmetic. Optimizer updates themselves (SGD,
// AdamW, clipping) are compositions of elementwise ops built by the frontend, so they fuse
// and shard like any other node.
#include <cmath>

#include "ops/defs.h"

namespace tessel::ops {

double lr_at(const std::string& kind, double base, double min_lr, int64_t warmup, int64_t total,
             int64_t step) {
  double lr = base;
  if (warmup > 0 && step < warmup) return base * static_cast<double>(step + 1) / warmup;
  if (kind == "cosine" && total > warmup) {
    double progress = std::min(1.0, static_cast<double>(step - warmup) / (total - warmup));
    lr = min_lr + 0.5 * (base - min_lr) * (1 + std::cos(3.141592653589793 * progress));
  }
  return lr;
}

namespace {

std::vector<TensorType> infer_lr(const Node& n, std::span<const TensorType> in) {
  if (!is_integral(in[0].dtype) || in[0].rank() != 0)
    throw Error("the step must be an integer scalar, got " + in[0].str());
  const std::string& kind = n.attrs.get_str("kind");
  if (kind != "constant" && kind != "cosine")
    throw Error("unknown schedule '" + kind + "' (constant, cosine)");
  if (n.attrs.get_i64("warmup") < 0 || n.attrs.get_i64("total") < 0)
    throw Error("warmup and total must be >= 0");
  TensorType t{attr_dtype(n), {}};
  require_float(t, "the learning rate");
  return {t};
}

void lr_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
               const KernelCtx&) {
  int64_t step = 0;
  dispatch_index(n, in[0].dtype, [&](auto t) { step = static_cast<int64_t>(in[0].as<const decltype(t)>()[0]); });
  double lr = lr_at(n.attrs.get_str("kind"), n.attrs.get_f64("base"), n.attrs.get_f64_or("min", 0),
                    n.attrs.get_i64("warmup"), n.attrs.get_i64("total"), step);
  dispatch_float(n, out[0].dtype, [&](auto t) { out[0].as<decltype(t)>()[0] = static_cast<decltype(t)>(lr); });
}

}  // namespace

void register_optimizer_ops(OpRegistry& r) {
  OpDef d;
  d.name = "lr_schedule";
  d.min_inputs = d.max_inputs = 1;
  d.attrs = {attr("kind", AttrType::string), attr("base", AttrType::f64), attr("min", AttrType::f64, false),
             attr("warmup", AttrType::i64), attr("total", AttrType::i64), attr("dtype", AttrType::string)};
  d.infer = infer_lr;
  d.kernel = lr_kernel;
  d.cost = [](const Node&, std::span<const TensorType>) { return Cost{10, 16}; };
  d.sharding = rule_source;
  d.doc = "learning rate at an optimizer step: linear warmup, then constant or cosine decay";
  r.add(std::move(d));
}

}  // namespace tessel::ops
