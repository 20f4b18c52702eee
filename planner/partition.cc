#include "planner/partition.h"

#include <cstring>
#include <map>
#include <optional>
#include <set>

#include "graph/error.h"
#include "planner/analysis.h"
#include "planner/layers.h"

namespace tessel::planner {

namespace {

}  // namespace

std::vector<int64_t> shard_offsets(std::span<const int64_t> global, const Sharding& s, const Mesh& m,
                                   const std::vector<int64_t>& coords) {
  std::vector<int64_t> off(global.size(), 0);
  Shape cur(global.begin(), global.end());
  // The last axis picks the outer block (planner/sharding.h: nested splits).
  for (size_t a = s.size(); a-- > 0;) {
    if (!s[a].is_shard()) continue;
    const int d = s[a].dim;
    cur[d] /= m.sizes[a];
    off[d] += coords[a] * cur[d];
  }
  return off;
}

namespace {

// Copies this rank's block of a row-major tensor's bytes.
std::vector<std::byte> slice_bytes(const std::vector<std::byte>& all, const TensorType& t, const Shape& local,
                                   const std::vector<int64_t>& off) {
  const size_t es = dtype_size(t.dtype);
  std::vector<std::byte> out(static_cast<size_t>(numel(local)) * es);
  const int rank = t.rank();
  if (rank == 0) {
    std::memcpy(out.data(), all.data(), es);
    return out;
  }
  const int64_t inner = local.back();
  const int64_t rows = inner ? numel(local) / inner : 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rest = r, src = 0, stride = t.shape.back();
    src = off[rank - 1];
    for (int d = rank - 2; d >= 0; --d) {
      const int64_t c = rest % local[d];
      rest /= local[d];
      src += (c + off[d]) * stride;
      stride *= t.shape[d];
    }
    std::memcpy(out.data() + static_cast<size_t>(r * inner) * es, all.data() + static_cast<size_t>(src) * es,
                static_cast<size_t>(inner) * es);
  }
  return out;
}

// Where every node runs: its pipeline stage (-1: every stage that needs it).
struct Staging {
  std::vector<int> stage_of;
  int64_t stage_size = 1;  // ranks per stage
  std::vector<Section> section_of;  // per node of the training graph
  std::vector<int> layer_of;        // per node of the training graph
  std::vector<char> recompute;      // per node of the training graph: in its layer's recompute region
};

// The section of every node: layers' forward, backward and optimizer nodes by the layer
// structure; shared nodes (data, counters, learning rate, gradient norms) run in the
// earliest section that reads them, but never before a section they read.
std::vector<Section> sections(const Graph& g, const LayerStructure& ls, std::span<const int32_t> nodes) {
  std::vector<Section> sec(g.size(), Section::apply);
  std::vector<char> global(g.size(), 1), read(g.size(), 0);
  for (auto& l : ls.layers) {
    for (int32_t id : l.forward) sec[id] = Section::forward, global[id] = 0;
    for (int32_t id : l.backward) sec[id] = Section::backward, global[id] = 0;
    for (int32_t id : l.optimizer) sec[id] = Section::apply, global[id] = 0;
  }
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {  // earliest reader
    const Node& n = g.node(*it);
    for (auto& in : n.inputs)
      if (global[in.node]) {
        sec[in.node] = read[in.node] ? std::min(sec[in.node], sec[*it]) : sec[*it];
        read[in.node] = 1;
      }
  }
  for (int32_t id : nodes) {  // not before what it reads
    if (!global[id]) continue;
    if (!read[id]) sec[id] = Section::forward;  // an output only (logits)
    for (auto& in : g.node(id).inputs) sec[id] = std::max(sec[id], sec[in.node]);
  }
  return sec;
}

// Per node: in its layer's recompute region under `r`.
std::vector<char> recompute_marks(const Graph& g, const LayerStructure& ls, Recompute r) {
  std::vector<char> marks(g.size(), 0);
  if (r != Recompute::none)
    for (const Layer& l : ls.layers)
      for (int32_t id : l.forward)
        marks[id] = g.node(id).def->kind == OpKind::compute && (r == Recompute::full || ls.attention_core[id]);
  return marks;
}

class RankBuilder {
 public:
  RankBuilder(const Graph& g, const GraphPlacement& gp, const Mesh& m, int64_t local_rank, int64_t stage,
              const Staging& st)
      : g_(g), gp_(gp), m_(m), rank_(stage * st.stage_size + local_rank), local_rank_(local_rank), stage_(stage),
        st_(st), coords_(m.coords(local_rank)), out_(g.registry()), local_(g.size()) {
    for (size_t r = 0; r < gp.reshards.size(); ++r)
      for (auto& [node, input] : gp.reshards[r].consumers)
        if (input >= 0) at_[{node, input}] = r;
  }

  RankProgram build(const std::vector<int32_t>& all) {
    // This stage's nodes, and the shared ones (data, counters, schedules) it needs.
    std::vector<char> mine(g_.size(), 0);
    for (int32_t id : all)
      if (st_.stage_of[id] == stage_) mine[id] = 1;
    for (auto it = all.rbegin(); it != all.rend(); ++it)
      if (mine[*it])
        for (auto& in : g_.node(*it).inputs)
          if (st_.stage_of[in.node] < 0) mine[in.node] = 1;
    for (auto& u : g_.updates())
      if (mine[u.variable] && st_.stage_of[u.variable] < 0) mine[u.value.node] = 1;
    for (auto it = all.rbegin(); it != all.rend(); ++it)  // shared values' own inputs
      if (mine[*it] && st_.stage_of[*it] < 0)
        for (auto& in : g_.node(*it).inputs)
          if (st_.stage_of[in.node] < 0) mine[in.node] = 1;
    std::vector<int32_t> nodes;
    for (int32_t id : all)
      if (mine[id]) nodes.push_back(id);
    // Values of this stage that other stages read: sent as soon as they are computed.
    for (int32_t id : all) {
      if (mine[id] && st_.stage_of[id] < 0) continue;
      for (auto& in : g_.node(id).inputs) {
        const int from = st_.stage_of[in.node], to = st_.stage_of[id];
        if (from == stage_ && to != stage_ && to >= 0) readers_[{in.node, in.index}].insert(to);
      }
    }
    for (int32_t id : nodes) {
      add(g_.node(id));
      mark(id);
    }
    RankProgram p{rank_, stage_, on_stage_coords(), Graph(g_.registry()), {}, {}, {}, {}, {}, {}, {}, {}, {}};
    for (int32_t id : nodes) {
      const Node& n = g_.node(id);
      if (n.def->kind == OpKind::input) p.input_placements.push_back({n.name, on_stage_mesh(gp_.values[id][0])});
      if (n.def->kind == OpKind::variable) p.variable_placements.push_back({n.name, on_stage_mesh(gp_.values[id][0])});
    }
    // Outputs: partial sums are completed (every rank then holds the result); splits stay.
    for (auto& o : g_.outputs()) {
      if (local_[o.value.node].empty() || (st_.stage_of[o.value.node] >= 0 && st_.stage_of[o.value.node] != stage_)) continue;
      Sharding want = gp_.at(o.value);
      for (auto& pl : want)
        if (pl.is_partial()) pl = Placement::R();
      out_.set_output(o.name, resharded(o.value, want, g_.node(o.value.node)));
      mark(o.value.node);
      p.output_placements.push_back({o.name, on_stage_mesh(want)});
    }
    for (auto& u : g_.updates()) {
      if (local_[u.variable].empty() || local_[u.value.node].empty()) continue;
      Value v = resharded(u.value, gp_.values[u.variable][0], g_.node(u.variable));
      out_.add_update(local_[u.variable][0].node, v, u.phase);
      mark(u.variable, Section::apply);
    }
    out_.verify();
    p.graph = std::move(out_);
    p.section = std::move(section_);
    p.layer = std::move(layer_);
    p.recompute = std::move(recompute_);
    summed_.resize(static_cast<size_t>(p.graph.size()), 0);
    p.summed = std::move(summed_);
    microbatch_dim_.resize(static_cast<size_t>(p.graph.size()), -1);
    p.microbatch_dim = std::move(microbatch_dim_);
    return p;
  }


 private:
  // Nodes added since the last mark serve training-graph node `id` (its section unless
  // given, its layer and recompute region).
  std::vector<int64_t> on_stage_coords() const { return std::vector<int64_t>(coords_.begin() + 1, coords_.end()); }

  // Node `id` of the program holds a microbatch's part of a sum over the batch.
  void summed(int32_t id, bool partial) {
    summed_.resize(static_cast<size_t>(out_.size()), 0);
    summed_[static_cast<size_t>(id)] = partial;
  }

  void mark(int32_t id, std::optional<Section> s = std::nullopt) {
    const size_t n = static_cast<size_t>(out_.size());
    section_.resize(n, s.value_or(st_.section_of[id]));
    layer_.resize(n, st_.layer_of[id]);
    recompute_.resize(n, s ? 0 : st_.recompute[id]);
  }

  // A unique tag for a value sent to a stage, the same on both ends.
  int64_t tag(Value v, int to) const { return (int64_t{v.node} * 64 + v.index) * 4096 + to; }

  void add(const Node& n) {
    // Inputs computed on another stage arrive by recv, placed as their producer left them.
    for (auto& v : n.inputs) {
      const int from = st_.stage_of[v.node];
      if (from < 0 || from == stage_ || !local_[v.node].empty()) continue;
      const TensorType& t = g_.type(v);
      const Sharding& s = gp_.at(v);
      const int64_t peer = from * st_.stage_size + local_rank_;
      Value r = out_.add("recv", {}, {{"peer", peer}, {"tag", tag(v, stage_)},
                                      {"dtype", std::string(dtype_name(t.dtype))}, {"shape", local_shape(t.shape, s, m_)}},
                         n.name + "/recv", n.origin);
      local_[v.node].resize(g_.node(v.node).outputs.size());
      local_[v.node][v.index] = r;
      summed(r.node, s[kMicrobatchAxis].is_partial());
    }
    std::vector<Value> in;
    ShardView view;
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      auto it = at_.find({n.id, static_cast<int>(i)});
      const Sharding& s = it != at_.end() ? gp_.reshards[it->second].to : gp_.at(n.inputs[i]);
      in.push_back(resharded(n.inputs[i], s, n));
      const Shape& global = g_.type(n.inputs[i]).shape;
      view.input_offsets.push_back(shard_offsets(global, s, m_, coords_));
      view.global_inputs.push_back(global);
      view.local_inputs.push_back(local_shape(global, s, m_));
    }
    const Sharding& os = gp_.values[n.id][0];
    std::vector<TensorType> local;
    for (auto& t : n.outputs) local.push_back(TensorType{t.dtype, local_shape(t.shape, os, m_)});
    std::vector<int64_t> off = shard_offsets(n.outputs[0].shape, os, m_, coords_);
    view.local_outputs = local;
    view.output_offsets = off;
    view.global_output_shape = n.outputs[0].shape;
    Attrs attrs;
    if (n.def->localize) {
      attrs = n.def->localize(n, view);
    } else {
      attrs = n.attrs;
      if (attrs.has("shape")) attrs.set("shape", local[0].shape);
    }
    int32_t id;
    try {
      id = out_.add_node_typed(n.op, in, attrs, n.name, n.origin, local);
    } catch (const Error& e) {
      throw Error("partition, rank " + std::to_string(rank_) + ": " + e.what());
    }
    for (size_t o = 0; o < n.outputs.size(); ++o) local_[n.id].push_back(Value{id, static_cast<int32_t>(o)});
    summed(id, gp_.values[n.id][0][kMicrobatchAxis].is_partial());
    microbatch_dim_.resize(static_cast<size_t>(out_.size()), -1);
    if (const Placement& mb = gp_.values[n.id][0][kMicrobatchAxis]; mb.is_shard())
      microbatch_dim_[static_cast<size_t>(id)] = static_cast<int8_t>(mb.dim);
    for (size_t o = 0; o < n.outputs.size(); ++o) {
      auto it = readers_.find({n.id, static_cast<int32_t>(o)});
      if (it == readers_.end()) continue;
      for (int to : it->second) {
        const Value v{n.id, static_cast<int32_t>(o)};
        const int64_t peer = to * st_.stage_size + local_rank_;
        Value tok = out_.add("send", {local_[n.id][o]}, {{"peer", peer}, {"tag", tag(v, to)}}, n.name + "/send", n.origin);
        out_.set_output("send:" + std::to_string(tag(v, to)), tok);
      }
    }
    if (const auto* data = g_.data(n.id)) out_.set_data(id, slice_bytes(*data, n.outputs[0], local[0].shape, off));
  }

  // The local value of `v` placed as `to`, inserting the collectives (memoised).
  Value resharded(Value v, const Sharding& to, const Node& consumer) {
    const Sharding& from = gp_.at(v);
    Value cur = local_.at(v.node).at(v.index);
    if (from == to) return cur;
    // A parameter gathered for the forward pass is gathered again for the backward (ZeRO-3):
    // a copy kept in between would hold the whole parameter across every microbatch.
    const bool per_section = g_.node(v.node).def->kind == OpKind::variable;
    auto key = std::make_tuple(v.node, v.index, sharding_str(to), per_section ? static_cast<int>(st_.section_of[consumer.id]) : -1);
    if (auto it = memo_.find(key); it != memo_.end()) return it->second;
    const TensorType& t = g_.type(v);
    Sharding s = from;
    const bool partial = from[kMicrobatchAxis].is_partial();
    for (const ReshardStep& st : reshard(t, from, to, m_)) {
      // A sum over microbatches is the runtime's (RankProgram::summed); a slice over them
      // is of a value the same in every microbatch (microbatch_problem), taken at 0.
      if (st.axis == kMicrobatchAxis && st.op == Collective::all_reduce) {
        s[st.axis] = st.to;
        continue;
      }
      std::vector<int64_t> group = m_.group(local_rank_, st.axis);
      for (auto& r : group) r += stage_ * st_.stage_size;  // global ranks
      const std::string base = consumer.name + "/" + std::string(reshard_name(st));
      Attrs a{{"ranks", group}, {"group", m_.names[st.axis]}};
      std::string op = st.op ? std::string(collective_name(*st.op)) : "slice";
      if (!st.op) {
        const int d = st.to.dim;
        const int64_t len = out_.type(cur).shape[d] / m_.sizes[st.axis];
        const int64_t start = coords_[st.axis] * len;
        a = Attrs{{"axes", std::vector<int64_t>{d}}, {"starts", std::vector<int64_t>{start}},
                  {"ends", std::vector<int64_t>{start + len}}};
      } else {
        switch (*st.op) {
          case Collective::all_reduce:
            a.set("reduce", std::string(st.from.reduce == FactorReduce::max ? "max" : "sum"));
            break;
          case Collective::reduce_scatter:
            a.set("reduce", std::string(st.from.reduce == FactorReduce::max ? "max" : "sum"));
            a.set("dim", int64_t{st.to.dim});
            break;
          case Collective::all_gather:
            a.set("dim", int64_t{st.from.dim});
            break;
          case Collective::all_to_all:
            a.set("split_dim", int64_t{st.to.dim});
            a.set("concat_dim", int64_t{st.from.dim});
            break;
          default:
            throw Error("partition: resharding inserts no " + op);
        }
      }
      s[st.axis] = st.to;
      try {
        cur = out_.add(op, {cur}, a, base, consumer.origin);
      } catch (const Error& e) {
        throw Error("partition, rank " + std::to_string(rank_) + ": " + e.what());
      }
      summed(cur.node, partial);
    }
    memo_[key] = cur;
    return cur;
  }

  const Graph& g_;
  const GraphPlacement& gp_;
  const Mesh& m_;
  int64_t rank_, local_rank_, stage_;
  const Staging& st_;
  std::vector<int64_t> coords_;
  Graph out_;
  std::vector<std::vector<Value>> local_;
  std::map<std::pair<int32_t, int>, size_t> at_;
  std::map<std::tuple<int32_t, int32_t, std::string, int>, Value> memo_;
  std::map<std::pair<int32_t, int32_t>, std::set<int>> readers_;  // value -> stages reading it
  std::vector<Section> section_;
  std::vector<int32_t> layer_;
  std::vector<char> recompute_;
  std::vector<char> summed_;
  std::vector<int8_t> microbatch_dim_;
};

}  // namespace

std::vector<RankProgram> partition(const Graph& g, const PlanConfig& config, std::vector<int64_t> stage_bounds) {
  const std::string phase = g.updates().empty() ? "train" : g.updates().front().phase;
  const LayerStructure ls = find_layers(g, phase);
  PlanConfig c = config;
  if (c.tp > 1 && c.tp_dims.empty())  // chosen for this host
    c.tp_dims = choose_tensor_parallel(g, ls, c, parse_cluster("local:" + std::to_string(c.devices())), CostOptions{});
  if (std::string why = tp_dims_problem(g, c.tp_dims); !why.empty()) throw Error("partition: " + why);
  const Mesh m = planning_mesh(c);
  const std::vector<int32_t> nodes = needed_nodes(g);
  const GraphPlacement gp = place_graph(g, c, m, nodes);
  if (std::string why = microbatch_problem(g, gp, m); !why.empty()) throw Error("partition: " + why);

  Staging st;
  st.stage_size = c.dp * c.tp;
  st.stage_of.assign(g.size(), 0);
  st.section_of = sections(g, ls, nodes);
  st.layer_of = ls.layer_of;
  st.recompute = recompute_marks(g, ls, c.recompute);
  if (c.pp > 1) {
    // A stage per contiguous range of layers; shared nodes computed from one stage's
    // values join it.
    const int64_t L = static_cast<int64_t>(ls.layers.size());
    if (c.pp > L) throw Error("partition: " + std::to_string(c.pp) + " stages for " + std::to_string(L) + " layers");
    if (stage_bounds.empty() && !c.stage_layers.empty()) {
      stage_bounds.push_back(0);
      for (int64_t n : c.stage_layers) stage_bounds.push_back(stage_bounds.back() + n);
    }
    if (stage_bounds.empty())
      for (int64_t s = 0; s <= c.pp; ++s) stage_bounds.push_back(s * L / c.pp);
    if (static_cast<int64_t>(stage_bounds.size()) != c.pp + 1 || stage_bounds.front() != 0 || stage_bounds.back() != L)
      throw Error("partition: stage bounds must run from 0 to the " + std::to_string(L) + " layers in " +
                  std::to_string(c.pp) + " steps");
    std::vector<int> layer_stage(L);
    for (int64_t s = 0; s < c.pp; ++s)
      for (int64_t l = stage_bounds[s]; l < stage_bounds[s + 1]; ++l) layer_stage[l] = static_cast<int>(s);
    for (int32_t id : nodes) st.stage_of[id] = ls.layer_of[id] >= 0 ? layer_stage[ls.layer_of[id]] : -1;
    // A shared node joins the stage of its inputs. One that reads several stages (a global
    // reduction such as the gradient norm for clipping, and what scales each gradient by it)
    // runs where most of its input bytes already are, the later stage on a tie, and the
    // other stages send it their values: a chain of partial sums passes along the pipeline
    // as scalars and the whole gradients stay where they are.
    for (int32_t id : nodes) {
      if (st.stage_of[id] >= 0) continue;
      std::map<int, double> bytes_from;
      for (auto& in : g.node(id).inputs)
        if (const int s = st.stage_of[in.node]; s >= 0) bytes_from[s] += static_cast<double>(g.type(in).bytes());
      int from = -1;
      double most = -1;
      for (auto& [s, b] : bytes_from)
        if (b >= most) from = s, most = b;
      st.stage_of[id] = from;
    }
    // A sum of gradients that all come from one later stage (a value of this stage read by
    // several ops of the next: the embedding's output by a block's residual and its norm) is
    // added there: one gradient crosses the boundary, not one per reader.
    for (int32_t id : nodes) {
      const Node& n = g.node(id);
      if (n.pass != Pass::backward || n.op != "add" || st.stage_of[id] < 0) continue;
      int from = -1;
      bool one = true;
      for (auto& in : n.inputs) {
        const int s = st.stage_of[in.node];
        if (from >= 0 && s != from) one = false;
        from = s;
      }
      if (one && from > st.stage_of[id]) st.stage_of[id] = from;
    }
  }
  std::vector<RankProgram> out;
  for (int64_t s = 0; s < c.pp; ++s)
    for (int64_t r = 0; r < st.stage_size; ++r) {
      out.push_back(RankBuilder(g, gp, m, r, s, st).build(nodes));
      out.back().schedule = stage_schedule(c, s);
    }
  return out;
}

RankProgram one_device(Graph g, int64_t microbatches, Recompute recompute) {
  if (microbatches < 1) throw Error("one_device: microbatches must be >= 1, got " + std::to_string(microbatches));
  const std::vector<int32_t> nodes = needed_nodes(g);
  std::vector<Section> section(g.size(), Section::forward);
  std::vector<int32_t> layer(g.size(), -1);
  std::vector<char> marks(g.size(), 0);
  if (!g.updates().empty() || g.output("loss")) {
    const LayerStructure ls = find_layers(g, g.updates().empty() ? "train" : g.updates().front().phase);
    section = sections(g, ls, nodes);
    layer.assign(ls.layer_of.begin(), ls.layer_of.end());
    marks = recompute_marks(g, ls, recompute);
  }
  if (microbatches > 1) {
    bool reads_backward = false;
    for (int32_t id : nodes)
      if (section[id] == Section::apply)
        for (auto& in : g.node(id).inputs) reads_backward |= section[in.node] == Section::backward;
    for (auto& u : g.updates()) reads_backward |= section[u.value.node] == Section::backward;
    if (!reads_backward)
      throw Error("one_device: " + std::to_string(microbatches) +
                  " microbatches, but no update reads a gradient (the graph has no backward to accumulate)");
  }
  PlanConfig c;
  c.microbatches = microbatches;
  c.recompute = recompute;
  const size_t n = static_cast<size_t>(g.size());
  return RankProgram{0, 0, {0, 0}, std::move(g), {}, {}, {}, std::move(section), stage_schedule(c, 0), std::move(layer),
                     std::move(marks), std::vector<char>(n, 0), std::vector<int8_t>(n, -1)};
}

RankProgram one_device(Graph g, const std::vector<std::string>& outputs, std::string_view phase) {
  g.retain(outputs, phase);
  return one_device(std::move(g));
}

}  // namespace tessel::planner
