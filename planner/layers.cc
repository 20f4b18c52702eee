#include "planner/layers.h"

#include <map>

#include "graph/error.h"

namespace tessel::planner {

namespace {
std::string top_scope(const std::string& name) {
  auto slash = name.find('/');
  return slash == std::string::npos ? std::string() : name.substr(0, slash);
}
}  // namespace

LayerStructure find_layers(const Graph& g, const std::string& phase) {
  std::vector<Value> targets;
  for (auto& u : g.updates())
    if (u.phase == phase) targets.push_back(u.value);
  if (auto l = g.output("loss")) targets.push_back(*l);
  if (targets.empty()) throw Error("the graph has neither updates in phase '" + phase + "' nor a 'loss' output");
  std::vector<int32_t> nodes = needed_nodes(g, targets);

  LayerStructure ls;
  ls.layer_of.assign(g.size(), -1);
  std::map<std::string, int> index;
  auto layer_named = [&](const std::string& name) {
    auto it = index.find(name);
    if (it != index.end()) return it->second;
    ls.layers.push_back(Layer{name, {}, {}, {}});
    return index[name] = static_cast<int>(ls.layers.size()) - 1;
  };
  enum class Part { forward, backward, optimizer };
  std::vector<Part> part(g.size(), Part::forward);

  // Forward nodes: by top-level scope; unscoped compute nodes follow their first placed
  // input. Unscoped sources wait for their first consumer (below).
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    const std::string& name = n.name;
    if (name.rfind("optimizer/", 0) == 0) {
      part[id] = Part::optimizer;
      continue;
    }
    if (name.find("/grad/") != std::string::npos) {
      part[id] = Part::backward;
      continue;
    }
    std::string scope = top_scope(name);
    if (!scope.empty()) {
      ls.layer_of[id] = layer_named(scope);
    } else if (n.def->kind == OpKind::compute) {
      for (auto& in : n.inputs)
        if (ls.layer_of[in.node] >= 0) {
          ls.layer_of[id] = ls.layer_of[in.node];
          break;
        }
    }
  }
  // Unscoped sources join their first consumer's layer (a parameter "wpe" joins the layer
  // that adds it); data inputs and shared constants stay global.
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    if (part[id] != Part::forward || ls.layer_of[id] < 0) continue;
    for (auto& in : n.inputs) {
      const Node& src = g.node(in.node);
      if (ls.layer_of[in.node] < 0 && src.op == "parameter") ls.layer_of[in.node] = ls.layer_of[id];
    }
  }
  // Backward nodes: the layer of the forward node they differentiate.
  for (int32_t id : nodes) {
    if (part[id] != Part::backward) continue;
    const std::string& name = g.node(id).name;
    auto fwd = g.find(name.substr(0, name.find("/grad/")));
    if (fwd) ls.layer_of[id] = ls.layer_of[*fwd];
  }
  // Optimizer nodes: the layer of their parameter ("optimizer/<param>/...").
  for (int32_t id : nodes) {
    if (part[id] != Part::optimizer) continue;
    std::string rest = g.node(id).name.substr(10);
    for (auto slash = rest.rfind('/'); slash != std::string::npos; slash = rest.rfind('/', slash - 1)) {
      auto p = g.find(rest.substr(0, slash));
      if (p && g.node(*p).op == "parameter") {
        ls.layer_of[id] = ls.layer_of[*p];
        break;
      }
      if (slash == 0) break;
    }
  }
  for (int32_t id : nodes) {
    const int l = ls.layer_of[id];
    if (l < 0) {
      ls.global.push_back(id);
      continue;
    }
    Layer& layer = ls.layers[l];
    switch (part[id]) {
      case Part::forward: layer.forward.push_back(id); break;
      case Part::backward: layer.backward.push_back(id); break;
      case Part::optimizer: layer.optimizer.push_back(id); break;
    }
  }
  return ls;
}

bool attention_core(const Node& n) {
  const auto at = n.name.find("/attn/");
  if (at == std::string::npos || n.def->kind != OpKind::compute || n.name.find("/grad/") != std::string::npos) return false;
  const std::string rest = n.name.substr(at + 6);
  for (const char* proj : {"q/", "k/", "v/", "proj/"})
    if (rest.rfind(proj, 0) == 0) return false;
  return true;
}

}  // namespace tessel::planner
