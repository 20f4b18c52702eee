#include "planner/cost.h"

#include <algorithm>
#include <map>

#include "graph/error.h"

namespace tessel::planner {

GraphCost graph_cost(const Graph& g, std::span<const Value> targets) {
  std::vector<int32_t> ids;
  if (targets.empty()) {
    for (int32_t i = 0; i < g.size(); ++i) ids.push_back(i);
  } else {
    ids = needed_nodes(g, targets);
  }
  std::map<std::string, OpCost> rows;
  GraphCost total;
  for (int32_t id : ids) {
    const Node& n = g.node(id);
    std::vector<TensorType> in;
    for (auto& v : n.inputs) in.push_back(g.type(v));
    Cost c;
    if (n.def->cost) {
      c = n.def->cost(n, in);
    } else {
      for (auto& t : in) c.bytes += static_cast<double>(t.bytes());
      for (auto& t : n.outputs) c.bytes += static_cast<double>(t.bytes());
    }
    OpCost& r = rows[n.op];
    r.op = n.op;
    r.count += 1;
    r.flops += c.flops;
    r.bytes += c.bytes;
    total.flops += c.flops;
    total.bytes += c.bytes;
  }
  for (auto& [k, r] : rows) total.by_op.push_back(r);
  std::sort(total.by_op.begin(), total.by_op.end(), [](const OpCost& a, const OpCost& b) {
    return a.flops != b.flops ? a.flops > b.flops : a.op < b.op;
  });
  return total;
}

GraphCost phase_cost(const Graph& g, const std::string& phase,
                     const std::vector<std::string>& outputs) {
  std::vector<Value> targets;
  for (auto& u : g.updates())
    if (u.phase == phase) targets.push_back(u.value);
  for (auto& name : outputs) {
    auto v = g.output(name);
    if (!v) throw Error("the graph has no output '" + name + "'");
    targets.push_back(*v);
  }
  if (targets.empty()) return GraphCost{};
  return graph_cost(g, targets);
}

ParameterCount count_parameters(const Graph& g) {
  ParameterCount c;
  for (int32_t id : g.parameters()) {
    const TensorType& t = g.node(id).outputs[0];
    c.tensors += 1;
    c.elements += t.numel();
    c.bytes += t.bytes();
  }
  return c;
}

}  // namespace tessel::planner
