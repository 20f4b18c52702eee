#include "planner/partition.h"

#include <cstring>
#include <map>

#include "graph/error.h"

namespace tessel::planner {

namespace {

}  // namespace

std::vector<int64_t> shard_offsets(std::span<const int64_t> global, const Sharding& s, const Mesh& m,
                                   const std::vector<int64_t>& coords) {
  std::vector<int64_t> off(global.size(), 0);
  Shape cur(global.begin(), global.end());
  for (size_t a = 0; a < s.size(); ++a) {
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

class RankBuilder {
 public:
  RankBuilder(const Graph& g, const GraphPlacement& gp, const Mesh& m, int64_t rank)
      : g_(g), gp_(gp), m_(m), rank_(rank), coords_(m.coords(rank)), out_(g.registry()), local_(g.size()) {
    for (size_t r = 0; r < gp.reshards.size(); ++r)
      for (auto& [node, input] : gp.reshards[r].consumers)
        if (input >= 0) at_[{node, input}] = r;
  }

  RankProgram build(const std::vector<int32_t>& nodes) {
    for (int32_t id : nodes) add(g_.node(id));
    RankProgram p{rank_, coords_, Graph(g_.registry()), {}, {}, {}};
    for (int32_t id : nodes) {
      const Node& n = g_.node(id);
      if (n.def->kind == OpKind::input) p.input_placements.push_back({n.name, gp_.values[id][0]});
      if (n.def->kind == OpKind::variable) p.variable_placements.push_back({n.name, gp_.values[id][0]});
    }
    // Outputs: partial sums are completed (every rank then holds the result); splits stay.
    for (auto& o : g_.outputs()) {
      if (local_[o.value.node].empty()) continue;
      Sharding want = gp_.at(o.value);
      for (auto& pl : want)
        if (pl.is_partial()) pl = Placement::R();
      out_.set_output(o.name, resharded(o.value, want, g_.node(o.value.node)));
      p.output_placements.push_back({o.name, want});
    }
    for (auto& u : g_.updates()) {
      if (local_[u.variable].empty() || local_[u.value.node].empty()) continue;
      Value v = resharded(u.value, gp_.values[u.variable][0], g_.node(u.variable));
      out_.add_update(local_[u.variable][0].node, v, u.phase);
    }
    out_.verify();
    p.graph = std::move(out_);
    return p;
  }


 private:
  void add(const Node& n) {
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
    if (const auto* data = g_.data(n.id)) out_.set_data(id, slice_bytes(*data, n.outputs[0], local[0].shape, off));
  }

  // The local value of `v` placed as `to`, inserting the collectives (memoised).
  Value resharded(Value v, const Sharding& to, const Node& consumer) {
    const Sharding& from = gp_.at(v);
    Value cur = local_.at(v.node).at(v.index);
    if (from == to) return cur;
    auto key = std::make_tuple(v.node, v.index, sharding_str(to));
    if (auto it = memo_.find(key); it != memo_.end()) return it->second;
    const TensorType& t = g_.type(v);
    Sharding s = from;
    for (const ReshardStep& st : reshard(t, from, to, m_)) {
      const std::vector<int64_t> group = m_.group(rank_, st.axis);
      const std::string base = consumer.name + "/" + std::string(reshard_name(st.kind));
      Attrs a{{"ranks", group}, {"group", m_.names[st.axis]}};
      std::string op;
      switch (st.kind) {
        case ReshardStep::Kind::all_reduce:
          op = "all_reduce";
          a.set("reduce", std::string(st.from.reduce == FactorReduce::max ? "max" : "sum"));
          break;
        case ReshardStep::Kind::reduce_scatter:
          op = "reduce_scatter";
          a.set("reduce", std::string(st.from.reduce == FactorReduce::max ? "max" : "sum"));
          a.set("dim", int64_t{st.to.dim});
          break;
        case ReshardStep::Kind::all_gather:
          op = "all_gather";
          a.set("dim", int64_t{st.from.dim});
          break;
        case ReshardStep::Kind::all_to_all:
          op = "all_to_all";
          a.set("split_dim", int64_t{st.to.dim});
          a.set("concat_dim", int64_t{st.from.dim});
          break;
        case ReshardStep::Kind::slice: {
          op = "slice";
          const int d = st.to.dim;
          const int64_t len = out_.type(cur).shape[d] / m_.sizes[st.axis];
          const int64_t start = coords_[st.axis] * len;
          a = Attrs{{"axes", std::vector<int64_t>{d}}, {"starts", std::vector<int64_t>{start}},
                    {"ends", std::vector<int64_t>{start + len}}};
          break;
        }
      }
      s[st.axis] = st.to;
      try {
        cur = out_.add(op, {cur}, a, base, consumer.origin);
      } catch (const Error& e) {
        throw Error("partition, rank " + std::to_string(rank_) + ": " + e.what());
      }
    }
    memo_[key] = cur;
    return cur;
  }

  const Graph& g_;
  const GraphPlacement& gp_;
  const Mesh& m_;
  int64_t rank_;
  std::vector<int64_t> coords_;
  Graph out_;
  std::vector<std::vector<Value>> local_;
  std::map<std::pair<int32_t, int>, size_t> at_;
  std::map<std::tuple<int32_t, int32_t, std::string>, Value> memo_;
};

}  // namespace

std::vector<RankProgram> partition(const Graph& g, const PlanConfig& c) {
  if (c.pp > 1)
    throw Error("partition: pipeline stages (pp=" + std::to_string(c.pp) +
                ") are not partitioned yet; plans with pp=1 are");
  const Mesh m = stage_mesh(c);
  std::vector<Value> targets;
  for (auto& u : g.updates()) targets.push_back(u.value), targets.push_back(Value{u.variable, 0});
  for (auto& o : g.outputs()) targets.push_back(o.value);
  const std::vector<int32_t> nodes = needed_nodes(g, targets);
  const GraphPlacement gp = propagate_graph(g, m, source_placements(g, c, m), nodes);
  std::vector<RankProgram> out;
  for (int64_t r = 0; r < m.size(); ++r) out.push_back(RankBuilder(g, gp, m, r).build(nodes));
  return out;
}

}  // namespace tessel::planner
