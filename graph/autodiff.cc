#include "graph/autodiff.h"

#include <unordered_map>

#include "graph/error.h"

namespace tessel {

std::vector<Value> gradients(Graph& g, Value loss, std::span<const Value> wrt) {
  const TensorType loss_type = g.type(loss);
  if (!is_floating(loss_type.dtype))
    throw Error(g.node(loss.node).where() + ": cannot differentiate a " + loss_type.str() + " loss");
  const int32_t n = g.size();

  // Nodes on some path from a wrt value to the loss.
  std::vector<char> from_wrt(n, 0), to_loss(n, 0);
  for (auto& v : wrt) {
    g.type(v);  // validates
    from_wrt.at(v.node) = 1;
  }
  for (int32_t id = 0; id < n; ++id) {
    if (from_wrt[id]) continue;
    for (auto& in : g.node(id).inputs)
      if (from_wrt[in.node]) { from_wrt[id] = 1; break; }
  }
  to_loss[loss.node] = 1;
  for (int32_t id = loss.node; id >= 0; --id)
    if (to_loss[id])
      for (auto& in : g.node(id).inputs) to_loss[in.node] = 1;

  std::unordered_map<Value, Value, ValueHash> grad;
  auto accumulate = [&](Value at, Value gv) {
    auto [it, fresh] = grad.emplace(at, gv);
    if (!fresh) {
      const Node& src = g.node(at.node);
      const int32_t first = g.size();
      it->second = g.add("add", {it->second, gv}, {}, src.name + "/grad/acc", src.origin);
      g.annotate(first, Pass::backward, at.node);
    }
  };
  {
    const Node& ln = g.node(loss.node);
    const int32_t first = g.size();
    Value seed = g.add("constant", {},
                       {{"dtype", std::string(dtype_name(loss_type.dtype))},
                        {"shape", loss_type.shape},
                        {"value", 1.0}},
                       ln.name + "/grad/seed", ln.origin);
    g.annotate(first, Pass::backward, -1);
    grad.emplace(loss, seed);
  }

  for (int32_t id = loss.node; id >= 0; --id) {
    if (!from_wrt[id] || !to_loss[id]) continue;
    const Node& node = g.node(id);
    std::vector<Value> out_grads(node.outputs.size());
    bool any = false;
    for (size_t i = 0; i < node.outputs.size(); ++i) {
      auto it = grad.find(Value{id, static_cast<int32_t>(i)});
      if (it != grad.end()) {
        out_grads[i] = it->second;
        any = true;
      }
    }
    if (!any || node.inputs.empty()) continue;
    bool needs = false;
    for (auto& in : node.inputs) needs |= from_wrt[in.node] && is_floating(g.type(in).dtype);
    if (!needs) continue;
    if (!node.def->grad)
      throw Error(node.where() + ": op has no gradient, but lies between a differentiated "
                  "value and the loss (wrap the input in stop_gradient if that is intended)");
    GradCtx ctx{g, id, out_grads, std::vector<Value>(node.inputs.size()), {}};
    for (auto& in : node.inputs) ctx.needed.push_back(from_wrt[in.node] && is_floating(g.type(in).dtype));
    const int32_t first = g.size();
    node.def->grad(ctx);
    g.annotate(first, Pass::backward, id);
    const Node& fwd = g.node(id);  // re-fetch: the rule added nodes
    for (size_t i = 0; i < fwd.inputs.size(); ++i) {
      Value in = fwd.inputs[i];
      Value gv = ctx.in_grads[i];
      if (!gv.valid() || !from_wrt[in.node]) continue;
      if (g.type(gv) != g.type(in))
        throw Error(fwd.where() + ": gradient rule gave " + g.type(gv).str() + " for input " +
                    std::to_string(i) + " of type " + g.type(in).str());
      accumulate(in, gv);
    }
  }

  std::vector<Value> result;
  for (auto& v : wrt) {
    auto it = grad.find(v);
    result.push_back(it == grad.end() ? Value{} : it->second);
  }
  return result;
}

}  // namespace tessel
