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
