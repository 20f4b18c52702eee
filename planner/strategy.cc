#include "planner/strategy.h"

#include <algorithm>
#include <map>

#include "graph/error.h"

namespace tessel::planner {

std::string_view schedule_name(Schedule s) { return s == Schedule::gpipe ? "gpipe" : "1f1b"; }
std::string_view recompute_name(Recompute r) {
  switch (r) {
    case Recompute::full: return "full";
    case Recompute::selective: return "selective";
    case Recompute::none: break;
  }
  return "none";
}

std::optional<Recompute> recompute_from_name(std::string_view s) {
  for (Recompute r : {Recompute::none, Recompute::full, Recompute::selective})
    if (recompute_name(r) == s) return r;
  return std::nullopt;
}

std::string PlanConfig::str() const {
  std::string s = "dp=" + std::to_string(dp) + " tp=" + std::to_string(tp) + " pp=" + std::to_string(pp);
  if (zero) s += " zero=" + std::to_string(zero);
  if (sequence_parallel) s += " sp";
  s += " mb=" + std::to_string(microbatches);
  if (pp > 1) s += " " + std::string(schedule_name(schedule));
  if (recompute != Recompute::none) s += " recompute=" + std::string(recompute_name(recompute));
  if (!stage_layers.empty()) {
    s += " stages=";
    for (size_t i = 0; i < stage_layers.size(); ++i) s += (i ? "," : "") + std::to_string(stage_layers[i]);
  }
  return s;
}

std::string_view section_name(Section s) {
  switch (s) {
    case Section::forward: return "forward";
    case Section::backward: return "backward";
    case Section::apply: return "apply";
  }
  return "?";
}

std::vector<ScheduleStep> stage_schedule(const PlanConfig& c, int64_t stage) {
  const int64_t m = c.microbatches;
  std::vector<ScheduleStep> out;
  auto fwd = [&](int64_t j) { out.push_back({Section::forward, j}); };
  auto bwd = [&](int64_t j) { out.push_back({Section::backward, j}); };
  if (c.schedule == Schedule::gpipe || c.pp == 1) {
    // One stage: each microbatch's forward and backward back to back (what 1F1B gives too;
    // GPipe with one stage keeps every microbatch's activations, for no gain).
    if (c.pp == 1) {
      for (int64_t j = 0; j < m; ++j) fwd(j), bwd(j);
    } else {
      for (int64_t j = 0; j < m; ++j) fwd(j);
      for (int64_t j = 0; j < m; ++j) bwd(j);
    }
  } else {
    const int64_t warm = std::min(c.pp - stage - 1, m);
    for (int64_t j = 0; j < warm; ++j) fwd(j);
    for (int64_t j = 0; j + warm < m; ++j) fwd(j + warm), bwd(j);
    for (int64_t j = m - warm; j < m; ++j) bwd(j);
  }
  out.push_back({Section::apply, 0});
  return out;
}

Mesh stage_mesh(const PlanConfig& c) { return Mesh({"dp", "tp"}, {c.dp, c.tp}); }

Mesh planning_mesh(const PlanConfig& c) { return Mesh({"microbatch", "dp", "tp"}, {c.microbatches, c.dp, c.tp}); }

Sharding on_stage_mesh(const Sharding& s) { return Sharding(s.begin() + 1, s.end()); }

int64_t graph_batch(const Graph& g) {
  int64_t batch = -1;
  std::string first;
  for (int32_t id : g.nodes_of_kind(OpKind::input)) {
    const Node& n = g.node(id);
    const int b = input_batch_dim(n);
    if (b < 0 || b >= n.outputs[0].rank()) continue;
    const int64_t size = n.outputs[0].shape[b];
    if (batch < 0) {
      batch = size;
      first = n.where();
    } else if (size != batch) {
      throw Error(n.where() + ": batch " + std::to_string(size) + " (dim " + std::to_string(b) + " of " + n.outputs[0].str() +
                  ") differs from " + first + "'s " + std::to_string(batch));
    }
  }
  if (batch < 0) throw Error("the graph has no batched input (an input whose batch_dim is a dim of its shape)");
  return batch;
}

const Node* owner_parameter(const Graph& g, const Node& n) {
  if (n.op == "parameter") return &n;
  if (n.pass != Pass::update || n.serves < 0) return nullptr;
  const Node& p = g.node(n.serves);
  return p.op == "parameter" && p.outputs[0].shape == n.outputs[0].shape ? &p : nullptr;
}

std::string tp_dims_problem(const Graph& g, const std::vector<int8_t>& tp_dims) {
  for (size_t id = 0; id < tp_dims.size(); ++id) {
    if (tp_dims[id] < 0) continue;
    if (static_cast<int32_t>(id) >= g.size() || g.node(static_cast<int32_t>(id)).op != "parameter")
      return "the plan splits node " + std::to_string(id) + " over tp, which is not a parameter of this graph (a plan for another model?)";
    const Node& p = g.node(static_cast<int32_t>(id));
    if (tp_dims[id] >= p.outputs[0].rank())
      return "the plan splits dim " + std::to_string(tp_dims[id]) + " of " + p.where() + " " + p.outputs[0].str() +
             " over tp (a plan for another model?)";
  }
  return "";
}

int input_batch_dim(const Node& n) {
  if (n.attrs.has("batch_dim")) return static_cast<int>(n.attrs.get_i64("batch_dim"));
  return n.outputs[0].rank() > 0 ? 0 : -1;
}

ParameterPlacement parameter_placement(const Graph& g, const Node& n, const PlanConfig& c, const Mesh& m,
                                       bool optimizer_state) {
  const Node* owner = owner_parameter(g, n);
  const Shape& shape = n.outputs[0].shape;
  Sharding s = replicated(m);
  const int tp = m.axis("tp"), dp = m.axis("dp");
  if (c.tp > 1 && owner && static_cast<size_t>(owner->id) < c.tp_dims.size()) {
    const int d = c.tp_dims[static_cast<size_t>(owner->id)];
    // A split that does not divide evenly stays replicated.
    if (d >= 0 && d < static_cast<int>(shape.size()) && shape[d] % c.tp == 0) s[tp] = Placement::S(d);
  }
  ParameterPlacement p{s, s};
  // ZeRO: split over dp along a dim that tp leaves whole and dp divides.
  const bool split_storage = c.dp > 1 && (optimizer_state ? c.zero >= 1 : c.zero >= 3);
  if (split_storage) {
    for (int d = 0; d < static_cast<int>(shape.size()); ++d) {
      if (s[tp].is_shard() && s[tp].dim == d) {
        if ((shape[d] / c.tp) % c.dp != 0) continue;
      } else if (shape[d] % c.dp != 0) {
        continue;
      }
      p.stored[dp] = Placement::S(d);
      break;
    }
    // Optimizer state is used where it is stored: the update runs on shards.
    if (optimizer_state) p.used = p.stored;
  }
  return p;
}

SourcePlacement source_placements(const Graph& g, const PlanConfig& c, const Mesh& m) {
  return [&g, c, m](const Node& n) -> std::optional<Sharding> {
    const int dp = m.axis("dp"), tp = m.axis("tp");
    switch (n.def->kind) {
      case OpKind::input: {
        // Split along the batch over dp, and with sequence parallelism along the next dim
        // (the sequence of [batch, seq, ...] data) over tp.
        Sharding s = replicated(m);
        const Shape& shape = n.outputs[0].shape;
        const int b = input_batch_dim(n);
        if (b < 0 || b >= static_cast<int>(shape.size())) return s;
        if (c.dp > 1 && shape[b] % c.dp == 0) s[dp] = Placement::S(b);
        // Microbatches: pieces of each replica's part (the last axis's split is outermost).
        if (const int mb = m.axis("microbatch"); mb >= 0 && c.microbatches > 1 &&
                                                  shape[b] % (c.dp * c.microbatches) == 0)
          s[mb] = Placement::S(b);
        if (c.sequence_parallel && c.tp > 1 && b + 1 < static_cast<int>(shape.size()) && shape[b + 1] % c.tp == 0)
          s[tp] = Placement::S(b + 1);
        return s;
      }
      case OpKind::variable: {
        if (n.op == "parameter") return parameter_placement(g, n, c, m, false).stored;
        // Optimizer state takes its parameter's placement; other state (counters) replicated.
        if (n.outputs[0].rank() > 0 && owner_parameter(g, n)) return parameter_placement(g, n, c, m, true).used;
        return std::nullopt;
      }
      default: return std::nullopt;
    }
  };
}

GraphPlacement place_graph(const Graph& g, const PlanConfig& c, const Mesh& m, std::span<const int32_t> nodes,
                           std::span<const int32_t> same_as, std::span<const char> keep,
                           const GraphPlacement* base, GraphPlacement* reuse) {
  PropagationHints hints;
  if (c.sequence_parallel && c.tp > 1) hints.sequence_axis = m.axis("tp");
  if (const int mb = m.axis("microbatch"); mb >= 0 && m.sizes[mb] > 1) hints.deferred_sum_axis = mb;
  hints.keep = keep;
  if (c.zero >= 3 && c.dp > 1)
    hints.read_as = [&g, c, m](const Node& src, const Node& consumer) -> std::optional<Sharding> {
      if (src.op != "parameter" || consumer.pass == Pass::update) return std::nullopt;
      return parameter_placement(g, src, c, m, false).used;
    };
  return propagate_graph(g, m, source_placements(g, c, m), nodes, hints, same_as, base, reuse);
}

namespace {
// Whether every slice of v along `dim` holds the same values (a broadcast along it), so
// that microbatch 0's slice stands for every microbatch's.
bool uniform_along(const Graph& g, Value v, int dim) {
  const Node& n = g.node(v.node);
  if (n.op == "constant") return g.data(n.id) == nullptr;
  if (n.op != "broadcast_to") return false;
  const TensorType& in = g.type(n.inputs[0]);
  const int lead = n.outputs[0].rank() - in.rank();
  return dim < lead || in.shape[dim - lead] == 1;
}
}  // namespace

std::string microbatch_problem(const Graph& g, const GraphPlacement& gp, const Mesh& m) {
  if (m.axis("microbatch") != kMicrobatchAxis || m.sizes[kMicrobatchAxis] == 1) return "";
  for (const auto& r : gp.reshards)
    for (const ReshardStep& s : r.steps) {
      if (s.axis != kMicrobatchAxis) continue;
      const Node& v = g.node(r.value.node);
      for (auto& [node, input] : r.consumers) {
        if (input < 0) continue;
        const Node& user = g.node(node);
        std::string why;
        if (s.op == Collective::all_reduce && user.pass != Pass::update)
          why = "reads '" + v.name + "' " + v.outputs[r.value.index].str() + " summed over the whole batch";
        else if (!s.op && !uniform_along(g, r.value, s.to.dim))
          why = "reads a part of '" + v.name + "' that depends on which microbatch runs";
        else if (s.op && s.op != Collective::all_reduce)
          why = "reads '" + v.name + "' " + v.outputs[r.value.index].str() + " across the whole batch (" +
                std::string(reshard_name(s)) + ")";
        if (!why.empty())
          return "the step cannot be split into " + std::to_string(m.sizes[kMicrobatchAxis]) + " microbatches: " +
                 user.where() + " " + why;
      }
    }
  return "";
}

}  // namespace tessel::planner
