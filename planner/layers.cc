#include "planner/layers.h"

#include <algorithm>
#include <map>

#include "graph/error.h"

namespace tessel::planner {

namespace {

std::string top_scope(const std::string& scope) { return scope.substr(0, scope.find('/')); }

// Values that are a parameter seen through views and casts.
std::vector<char> weight_values(const Graph& g, std::span<const int32_t> nodes) {
  std::vector<char> w(g.size(), 0);
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    w[id] = n.op == "parameter" || ((n.def->view || n.op == "cast") && !n.inputs.empty() && w[n.inputs[0].node]);
  }
  return w;
}

bool reads(const Node& n, const std::vector<char>& flag) {
  return std::any_of(n.inputs.begin(), n.inputs.end(), [&](const Value& v) { return flag[v.node]; });
}

// Forward layers of a graph without scopes: segments between cut nodes (after which no
// earlier value is read again), a new layer starting at a segment that reads a weight of
// rank >= 2 (a projection or an embedding), the other segments joining the one before.
void structural_layers(const Graph& g, std::span<const int32_t> forward, const std::vector<char>& weight,
                       std::vector<int>& layer_of, std::vector<Layer>& layers) {
  std::vector<int32_t> compute;
  for (int32_t id : forward)
    if (g.node(id).def->kind == OpKind::compute) compute.push_back(id);
  std::vector<int64_t> last_use(g.size(), -1);
  std::vector<int64_t> pos(g.size(), -1);
  for (size_t i = 0; i < compute.size(); ++i) pos[compute[i]] = static_cast<int64_t>(i);
  for (size_t i = 0; i < compute.size(); ++i)
    for (auto& in : g.node(compute[i]).inputs)
      if (pos[in.node] >= 0) last_use[in.node] = std::max<int64_t>(last_use[in.node], static_cast<int64_t>(i));
  std::vector<std::vector<int32_t>> segments(1);
  int64_t reach = -1;  // the latest use of any value made before the current node
  for (size_t i = 0; i < compute.size(); ++i) {
    segments.back().push_back(compute[i]);
    const bool cut = reach <= static_cast<int64_t>(i);
    reach = std::max(reach, last_use[compute[i]]);
    if (cut && i + 1 < compute.size()) segments.emplace_back();
  }
  auto heavy = [&](int32_t id) {
    const Node& n = g.node(id);
    for (auto& in : n.inputs)
      if (weight[in.node] && g.type(in).rank() >= 2) return true;
    return false;
  };
  for (auto& seg : segments) {
    if (seg.empty()) continue;
    if (layers.empty() || std::any_of(seg.begin(), seg.end(), heavy))
      layers.push_back(Layer{"layer" + std::to_string(layers.size()), {}, {}, {}, -1});
    for (int32_t id : seg) layer_of[id] = static_cast<int>(layers.size()) - 1;
  }
}

// The attention core of each layer: the forward nodes connected (through nodes of the
// layer that read no weight) to a matrix product of two activations (QK^T, scores x V):
// what lies between the q/k/v projections and the output projection.
std::vector<char> attention_cores(const Graph& g, const LayerStructure& ls, const std::vector<char>& weight) {
  std::vector<char> core(g.size(), 0);
  std::vector<int32_t> parent(g.size(), -1);
  auto find = [&](int32_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  for (const Layer& l : ls.layers) {
    std::vector<int32_t> members;
    for (int32_t id : l.forward) {
      const Node& n = g.node(id);
      if (n.def->kind == OpKind::compute && !reads(n, weight)) members.push_back(id), parent[id] = id;
    }
    for (int32_t id : members)
      for (auto& in : g.node(id).inputs)
        if (parent[in.node] >= 0 && ls.layer_of[in.node] == ls.layer_of[id]) parent[find(in.node)] = find(id);
    std::vector<char> root_has(g.size(), 0);
    for (int32_t id : members) {
      const Node& n = g.node(id);
      if (n.op != "matmul") continue;
      bool activations = true;
      for (auto& in : n.inputs) activations &= g.node(in.node).def->kind == OpKind::compute;
      if (activations) root_has[find(id)] = 1;
    }
    for (int32_t id : members) core[id] = root_has[find(id)];
    for (int32_t id : members) parent[id] = -1;
  }
  return core;
}

// A layer's subgraph as tokens: per node its op, attributes (but seeds, which differ per
// parameter), output types and inputs (a node of the same layer by part and index; another
// layer's by relative layer, op and output; a global node by id).
std::string attrs_str(const Node& n) {
  std::string s;
  for (auto& [k, v] : n.attrs.items())
    if (k != "seed") s += " " + k + "=" + attr_value_str(v);
  return s;
}

std::vector<std::string> canonical(const Graph& g, const LayerStructure& ls, int li, bool forward_only = false) {
  std::vector<std::string> t;
  const Layer& l = ls.layers[li];
  auto part_of = [&](int32_t id) {
    const Node& n = g.node(id);
    return n.pass == Pass::forward ? 'f' : n.pass == Pass::backward ? 'b' : 'o';
  };
  for (const auto* part : {&l.forward, &l.backward, &l.optimizer}) {
    if (forward_only && part != &l.forward) break;
    t.push_back("|");
    for (int32_t id : *part) {
      const Node& n = g.node(id);
      std::string s = n.op + attrs_str(n);
      for (auto& o : n.outputs) s += " " + o.str();
      for (auto& in : n.inputs) {
        const int lj = ls.layer_of[in.node];
        const Node& src = g.node(in.node);
        if (lj == li) s += " <" + std::string(1, part_of(in.node)) + std::to_string(ls.position[in.node]);
        else if (lj >= 0) s += " <L" + std::to_string(lj - li) + ":" + src.op + ":" + g.type(in).str();
        else if (src.def->kind == OpKind::constant && !g.data(src.id)) s += " <c" + attrs_str(src);  // by value
        else s += " <g" + std::to_string(in.node);
        s += "." + std::to_string(in.index);
      }
      if (n.pass != Pass::forward && n.serves >= 0)
        s += ls.layer_of[n.serves] == li ? " @" + std::to_string(ls.position[n.serves]) : " @x";
      t.push_back(std::move(s));
    }
  }
  return t;
}

}  // namespace

LayerStructure find_layers(const Graph& g, const std::string& phase) {
  std::vector<Value> targets;
  for (auto& u : g.updates())
    if (u.phase == phase) targets.push_back(u.value);
  if (auto l = g.output("loss")) targets.push_back(*l);
  if (targets.empty()) throw Error("the graph has neither updates in phase '" + phase + "' nor a 'loss' output");
  const std::vector<int32_t> nodes = needed_nodes(g, targets);
  const std::vector<char> weight = weight_values(g, nodes);

  LayerStructure ls;
  ls.layer_of.assign(g.size(), -1);
  std::vector<int32_t> forward;
  bool scoped = false;
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    if (n.pass != Pass::forward) continue;
    forward.push_back(id);
    scoped |= n.def->kind == OpKind::compute && !n.origin.scope.empty();
  }
  if (scoped) {
    // Forward nodes by top-level scope; unscoped compute nodes follow their first placed
    // input. Unscoped sources wait for their first consumer (below).
    std::map<std::string, int> index;
    for (int32_t id : forward) {
      const Node& n = g.node(id);
      if (!n.origin.scope.empty()) {
        const std::string name = top_scope(n.origin.scope);
        auto [it, fresh] = index.try_emplace(name, static_cast<int>(ls.layers.size()));
        if (fresh) ls.layers.push_back(Layer{name, {}, {}, {}, -1});
        ls.layer_of[id] = it->second;
      } else if (n.def->kind == OpKind::compute) {
        for (auto& in : n.inputs)
          if (ls.layer_of[in.node] >= 0) {
            ls.layer_of[id] = ls.layer_of[in.node];
            break;
          }
      }
    }
  } else {
    structural_layers(g, forward, weight, ls.layer_of, ls.layers);
  }
  // Unscoped parameters join their first consumer's layer (a position embedding joins the
  // layer that adds it); data inputs and shared constants stay global.
  for (int32_t id : forward) {
    if (ls.layer_of[id] < 0) continue;
    for (auto& in : g.node(id).inputs)
      if (ls.layer_of[in.node] < 0 && g.node(in.node).op == "parameter") ls.layer_of[in.node] = ls.layer_of[id];
  }
  // Backward nodes: the layer of the forward node they serve; optimizer nodes: the layer of
  // their parameter.
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    if (n.pass != Pass::forward && n.serves >= 0) ls.layer_of[id] = ls.layer_of[n.serves];
  }
  ls.position.assign(g.size(), -1);
  for (int32_t id : nodes) {
    const int l = ls.layer_of[id];
    if (l < 0) {
      ls.global.push_back(id);
      continue;
    }
    Layer& layer = ls.layers[l];
    const Node& n = g.node(id);
    auto& part = n.pass == Pass::forward ? layer.forward : n.pass == Pass::backward ? layer.backward : layer.optimizer;
    ls.position[id] = static_cast<int32_t>(part.size());
    part.push_back(id);
  }
  // Classes of identical layers.
  std::map<std::vector<std::string>, int> classes;
  for (size_t li = 0; li < ls.layers.size(); ++li)
    ls.layers[li].klass = classes.try_emplace(canonical(g, ls, static_cast<int>(li)), static_cast<int>(li)).first->second;
  std::map<std::vector<std::string>, int> forward_classes;
  for (size_t li = 0; li < ls.layers.size(); ++li)
    ls.layers[li].forward_class =
        forward_classes.try_emplace(canonical(g, ls, static_cast<int>(li), true), static_cast<int>(li)).first->second;
  ls.attention_core = attention_cores(g, ls, weight);
  ls.users.assign(g.size(), {});
  for (int32_t id : nodes)
    for (auto& in : g.node(id).inputs) ls.users[in.node].push_back(id);

  // The backward pass meets a class's layers last to first. Its last layer's backward starts
  // from another class's (the output layer's), so the one that stands for the others is the
  // one before it, whose backward starts from a layer of its own class; the last is placed
  // on its own.
  std::vector<std::vector<int>> members(ls.layers.size());
  for (size_t l = 0; l < ls.layers.size(); ++l) members[static_cast<size_t>(ls.layers[l].klass)].push_back(static_cast<int>(l));
  ls.last_of_class.assign(ls.layers.size(), -1);
  for (auto& m : members)
    if (!m.empty()) ls.last_of_class[static_cast<size_t>(m.front())] = m.size() >= 3 ? m[m.size() - 2] : m.back();
  ls.repeats.assign(g.size(), -1);
  ls.read_by_repeat.assign(g.size(), 0);
  for (int32_t id : nodes) {
    const int l = ls.layer_of[id];
    const Node& n = g.node(id);
    const bool last = l >= 0 && members[static_cast<size_t>(ls.layers[l].klass)].back() == l;
    const int from = l < 0                     ? l
                     : n.pass != Pass::backward ? ls.layers[l].klass
                     : last                     ? l
                                                : ls.last_of_class[ls.layers[l].klass];
    if (from == l) {
      ls.distinct.push_back(id);
      continue;
    }
    const Layer& rep = ls.layers[from];
    const auto& part = n.pass == Pass::forward ? rep.forward : n.pass == Pass::backward ? rep.backward : rep.optimizer;
    ls.repeats[id] = part.at(static_cast<size_t>(ls.position[id]));
    for (auto& in : n.inputs) ls.read_by_repeat[in.node] = 1;
  }
  return ls;
}

}  // namespace tessel::planner
