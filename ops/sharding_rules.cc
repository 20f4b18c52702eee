// Sharding rules shared by several op families. Op-specific rules live with their ops.
#include "ops/defs.h"

namespace tessel::ops {

ShardingRule rule_elementwise(const Node& n, std::span<const TensorType> in) {
  ShardingRule r;
  const Shape& out = n.outputs[0].shape;
  const int R = static_cast<int>(out.size());
  std::vector<int> of(R);
  for (int d = 0; d < R; ++d) of[d] = r.add_factor(out[d]);
  r.outputs = {of};
  for (const TensorType& t : in) {
    const int off = R - t.rank();
    std::vector<int> f(t.rank());
    for (int d = 0; d < t.rank(); ++d) f[d] = t.shape[d] == out[d + off] ? of[d + off] : -1;
    r.inputs.push_back(f);
  }
  r.linear.assign(in.size(), false);
  return r;
}

ShardingRule rule_source(const Node& n, std::span<const TensorType> in) {
  ShardingRule r;
  for (const TensorType& t : n.outputs) {
    std::vector<int> f;
    for (int64_t d : t.shape) f.push_back(r.add_factor(d));
    r.outputs.push_back(f);
  }
  for (const TensorType& t : in) r.inputs.push_back(std::vector<int>(t.rank(), -1));
  r.linear.assign(in.size(), false);
  return r;
}

ShardingRule rule_identity(const Node& n, std::span<const TensorType> in) {
  ShardingRule r;
  std::vector<int> f;
  for (int64_t d : in[0].shape) f.push_back(r.add_factor(d));
  r.inputs = {f};
  r.outputs = {f};
  r.linear = {true};
  return r;
}

}  // namespace tessel::ops
