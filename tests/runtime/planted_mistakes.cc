#include "tests/runtime/planted_mistakes.h"

#include <algorithm>
#include <set>

#include "graph/error.h"
#include "ops/emit.h"

namespace tessel::fuzz {

using planner::RankProgram;
using planner::Section;

void rebuild(RankProgram& p, const NodeEdit& edit) {
  const Graph& g = p.graph;
  Graph out(g.registry());
  std::vector<Section> section;
  std::vector<std::vector<Value>> now(static_cast<size_t>(g.size()));
  for (const Node& n : g.nodes()) {
    std::vector<Value> in;
    for (const Value& v : n.inputs) in.push_back(now.at(static_cast<size_t>(v.node)).at(static_cast<size_t>(v.index)));
    std::optional<std::vector<Value>> r = edit ? edit(out, n, in) : std::nullopt;
    if (!r) {
      const int32_t id = out.add_node_typed(n.op, in, n.attrs, n.name, n.origin, n.outputs);
      if (const auto* d = g.data(n.id)) out.set_data(id, *d);
      r.emplace();
      for (size_t o = 0; o < n.outputs.size(); ++o) r->push_back(Value{id, static_cast<int32_t>(o)});
    }
    now[static_cast<size_t>(n.id)] = std::move(*r);
    section.resize(static_cast<size_t>(out.size()), p.section.at(static_cast<size_t>(n.id)));
  }
  auto at = [&](Value v) { return now.at(static_cast<size_t>(v.node)).at(static_cast<size_t>(v.index)); };
  for (const NamedValue& o : g.outputs()) out.set_output(o.name, at(o.value));
  for (const Update& u : g.updates()) out.add_update(at(Value{u.variable, 0}).node, at(u.value), u.phase);
  out.verify();
  p.graph = std::move(out);
  p.section = std::move(section);
}

namespace {

// A node of one program.
struct Site {
  size_t program = 0;
  int32_t node = -1;
};

// Per node: whether it changes a variable's update other than through the gradient norm (the
// "grad_norm" output of clipping): a collective that only feeds the norm changes nothing
// while the norm stays under the clipping threshold.
std::vector<char> moves_updates(const RankProgram& p) {
  const Graph& g = p.graph;
  std::vector<char> r(static_cast<size_t>(g.size()), 0);
  const auto norm = g.output("grad_norm");
  for (const Update& u : g.updates()) r[static_cast<size_t>(u.value.node)] = 1;
  for (int32_t id = g.size() - 1; id >= 0; --id) {
    if (!r[static_cast<size_t>(id)] || (norm && norm->node == id)) continue;
    for (const Value& v : g.node(id).inputs) r[static_cast<size_t>(v.node)] = 1;
  }
  return r;
}

// The best node by `score` (larger is better; < 0: not a candidate) over every program.
Site choose(const std::vector<RankProgram>& programs,
            const std::function<double(const RankProgram&, const Node&, bool moves)>& score) {
  Site best;
  double top = -1;
  for (size_t i = 0; i < programs.size(); ++i) {
    const std::vector<char> moves = moves_updates(programs[i]);
    for (const Node& n : programs[i].graph.nodes()) {
      const double s = score(programs[i], n, moves[static_cast<size_t>(n.id)] != 0);
      if (s > top) top = s, best = Site{i, n.id};
    }
  }
  return best;
}

int64_t group_size(const Node& n) {
  return n.attrs.has("ranks") ? static_cast<int64_t>(n.attrs.get_i64s("ranks").size()) : 0;
}

// Applies `edit` to the node named like the chosen one in every program that has it (the
// ranks of a stage run the same program on their shards): the mistake is the same on every
// rank, so the collectives stay in step and the mistake shows as different numbers.
std::string on_every_rank(std::vector<RankProgram>& programs, Site s, const std::string& what,
                          const std::function<std::vector<Value>(Graph&, const Node&, const std::vector<Value>&)>& edit) {
  const Node chosen = programs[s.program].graph.node(s.node);
  std::string ranks;
  for (RankProgram& p : programs) {
    const auto id = p.graph.find(chosen.name);
    if (!id || p.graph.node(*id).op != chosen.op) continue;
    bool found = false;
    rebuild(p, [&](Graph& out, const Node& n, const std::vector<Value>& in) -> std::optional<std::vector<Value>> {
      if (n.name != chosen.name || n.op != chosen.op) return std::nullopt;
      found = true;
      return edit(out, n, in);
    });
    if (found) ranks += (ranks.empty() ? "" : ",") + std::to_string(p.rank);
  }
  return what + " '" + chosen.name + "' " + chosen.outputs[0].str() + " on ranks " + ranks;
}

std::vector<Value> copy(Graph& out, const Node& n, const std::vector<Value>& in) {
  const int32_t id = out.add_node_typed(n.op, in, n.attrs, n.name, n.origin, n.outputs);
  return {Value{id, 0}};
}

}  // namespace

std::string drop_all_reduce(std::vector<RankProgram>& programs) {
  const Site s = choose(programs, [](const RankProgram&, const Node& n, bool moves) {
    if (n.op != "all_reduce" || group_size(n) < 2) return -1.0;
    return static_cast<double>(n.outputs[0].numel()) + (moves ? 1e12 : 0);
  });
  if (s.node < 0) return "";
  return on_every_rank(programs, s, "dropped all_reduce",
                  [](Graph&, const Node&, const std::vector<Value>& in) { return std::vector<Value>{in.at(0)}; });
}

std::string double_gradient(std::vector<RankProgram>& programs) {
  // The partitioner names a collective after the node it serves: "optimizer/..." reduces a
  // gradient for its update (in the apply section, after the microbatches' sum).
  const Site s = choose(programs, [](const RankProgram& p, const Node& n, bool moves) {
    if ((n.op != "all_reduce" && n.op != "reduce_scatter") || group_size(n) < 2) return -1.0;
    const bool gradient = n.name.rfind("optimizer/", 0) == 0;
    if (!gradient && p.section.at(static_cast<size_t>(n.id)) != Section::backward) return -1.0;
    return static_cast<double>(n.outputs[0].numel()) + (gradient ? 1e9 : 0) + (moves ? 1e12 : 0);
  });
  if (s.node < 0) return "";
  return on_every_rank(programs, s, "doubled the gradient after", [](Graph& out, const Node& n, const std::vector<Value>& in) {
    const Value x = copy(out, n, in)[0];
    ops::Emitter e(out, n.origin, "planted");
    return std::vector<Value>{e.mul(x, 2.0)};
  });
}

std::string shift_shard(std::vector<RankProgram>& programs) {
  // A slice the partitioner inserted is named "<consumer>/slice..." after a node of the program.
  auto sharding_slice = [](const RankProgram& p, const Node& n) {
    if (n.op != "slice" || n.attrs.get_i64s("axes").size() != 1) return false;
    const auto slash = n.name.rfind('/');
    if (slash == std::string::npos || n.name.compare(slash + 1, 5, "slice") != 0) return false;
    if (!p.graph.find(n.name.substr(0, slash))) return false;
    const int64_t axis = n.attrs.get_i64s("axes")[0];
    const int64_t len = n.attrs.get_i64s("ends")[0] - n.attrs.get_i64s("starts")[0];
    const int64_t dim = p.graph.type(n.inputs.at(0)).shape.at(static_cast<size_t>(axis));
    return len > 0 && dim > len && dim % len == 0;
  };
  const Site s = choose(programs, [&](const RankProgram& p, const Node& n, bool) {
    if (!sharding_slice(p, n)) return -1.0;
    return p.section.at(static_cast<size_t>(n.id)) == Section::forward ? 2.0 : 1.0;
  });
  if (s.node < 0) return "";
  RankProgram& p = programs[s.program];
  const Node chosen = p.graph.node(s.node);
  const int64_t axis = chosen.attrs.get_i64s("axes")[0];
  const int64_t start = chosen.attrs.get_i64s("starts")[0], end = chosen.attrs.get_i64s("ends")[0];
  const int64_t dim = p.graph.type(chosen.inputs.at(0)).shape.at(static_cast<size_t>(axis));
  const int64_t moved = (start + (end - start)) % dim;
  rebuild(p, [&](Graph& out, const Node& n, const std::vector<Value>& in) -> std::optional<std::vector<Value>> {
    if (n.id != chosen.id) return std::nullopt;
    Attrs a = n.attrs;
    a.set("starts", std::vector<int64_t>{moved});
    a.set("ends", std::vector<int64_t>{moved + end - start});
    return std::vector<Value>{Value{out.add_node_typed(n.op, in, a, n.name, n.origin, n.outputs), 0}};
  });
  return "slice '" + chosen.name + "' on rank " + std::to_string(p.rank) + " reads [" + std::to_string(moved) + ", " +
         std::to_string(moved + end - start) + ") of dim " + std::to_string(axis) + " instead of [" +
         std::to_string(start) + ", " + std::to_string(end) + ")";
}

}  // namespace tessel::fuzz
