#include "ops/registry.h"

#include "ops/defs.h"

namespace tessel::ops {

const OpRegistry& registry() {
  static const OpRegistry r = [] {
    OpRegistry reg;
    register_source_ops(reg);
    register_elementwise_ops(reg);
    register_reduce_ops(reg);
    register_shape_ops(reg);
    register_matmul_ops(reg);
    register_nn_ops(reg);
    register_optimizer_ops(reg);
    register_collective_ops(reg);
    register_fused_ops(reg);
    return reg;
  }();
  return r;
}

DType attr_dtype(const Node& n, const char* name) {
  const std::string& s = n.attrs.get_str(name);
  auto dt = parse_dtype(s);
  if (!dt) throw Error("unknown dtype '" + s + "' in attribute '" + name + "'");
  return *dt;
}

Shape attr_shape(const Node& n, const char* name) {
  Shape s = n.attrs.get_i64s(name);
  checked_numel(s);
  return s;
}

int64_t ShardIndex::global(int64_t i) const {
  if (whole) return i;
  int64_t g = 0, stride = 1;
  for (int d = static_cast<int>(local_shape.size()) - 1; d >= 0; --d) {
    const int64_t c = i % local_shape[d];
    i /= local_shape[d];
    g += (c + offsets[d]) * stride;
    stride *= global_shape[d];
  }
  return g;
}

ShardIndex shard_index(const Node& n, std::span<const int64_t> local, std::span<const int64_t> shift) {
  ShardIndex s;
  s.local_shape.assign(local.begin(), local.end());
  if (!n.attrs.has("global_shape")) return s;
  s.whole = false;
  s.global_shape = n.attrs.get_i64s("global_shape");
  s.offsets = n.attrs.get_i64s("offsets");
  for (size_t d = 0; d < shift.size() && d < s.offsets.size(); ++d) s.offsets[d] += shift[d];
  if (s.global_shape.size() != local.size() || s.offsets.size() != local.size())
    throw Error(n.where() + ": global_shape and offsets need one entry per dim of " + shape_str(local));
  for (size_t d = 0; d < local.size(); ++d)
    if (s.offsets[d] < 0 || s.offsets[d] + local[d] > s.global_shape[d])
      throw Error(n.where() + ": shard " + shape_str(local) + " at " + shape_str(s.offsets) + " lies outside " +
                  shape_str(s.global_shape));
  return s;
}

Attrs localize_generated(const Node& n, const ShardView& v) {
  Attrs a = n.attrs;
  const Shape local = v.local_outputs[0].shape;
  a.set("shape", local);
  if (local != Shape(v.global_output_shape.begin(), v.global_output_shape.end())) {
    a.set("global_shape", std::vector<int64_t>(v.global_output_shape.begin(), v.global_output_shape.end()));
    a.set("offsets", std::vector<int64_t>(v.output_offsets.begin(), v.output_offsets.end()));
  }
  return a;
}

Cost streaming_cost(const Node& n, std::span<const TensorType> in, double flops_per_out) {
  Cost c;
  for (auto& t : in) c.bytes += static_cast<double>(t.bytes());
  for (auto& t : n.outputs) {
    c.bytes += static_cast<double>(t.bytes());
    c.flops += flops_per_out * static_cast<double>(t.numel());
  }
  return c;
}

Cost elementwise_cost(const Node& n, std::span<const TensorType> in) {
  return streaming_cost(n, in, n.def->scalar ? n.def->scalar(n).flops() : 1);
}

}  // namespace tessel::ops
