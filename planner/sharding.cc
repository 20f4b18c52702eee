#include "planner/sharding.h"

#include <algorithm>
#include <map>
#include <unordered_map>

#include "graph/error.h"

namespace tessel::planner {

// ---- mesh -------------------------------------------------------------------------------

Mesh::Mesh(std::vector<std::string> n, std::vector<int64_t> s) : names(std::move(n)), sizes(std::move(s)) {
  if (names.size() != sizes.size()) throw Error("mesh: " + std::to_string(names.size()) + " names for " + std::to_string(sizes.size()) + " axes");
  for (size_t i = 0; i < names.size(); ++i) {
    if (sizes[i] < 1) throw Error("mesh: axis '" + names[i] + "' has size " + std::to_string(sizes[i]));
    for (size_t j = 0; j < i; ++j)
      if (names[i] == names[j]) throw Error("mesh: axis '" + names[i] + "' appears twice");
  }
}

int64_t Mesh::size() const {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

int Mesh::axis(std::string_view name) const {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return static_cast<int>(i);
  return -1;
}

std::vector<int64_t> Mesh::coords(int64_t rank) const {
  std::vector<int64_t> c(sizes.size());
  for (int a = static_cast<int>(sizes.size()) - 1; a >= 0; --a) {
    c[a] = rank % sizes[a];
    rank /= sizes[a];
  }
  return c;
}

int64_t Mesh::rank(std::span<const int64_t> c) const {
  int64_t r = 0;
  for (size_t a = 0; a < sizes.size(); ++a) r = r * sizes[a] + c[a];
  return r;
}

std::vector<int64_t> Mesh::group(int64_t r, int axis) const {
  std::vector<int64_t> c = coords(r), g;
  for (int64_t i = 0; i < sizes[axis]; ++i) {
    c[axis] = i;
    g.push_back(rank(c));
  }
  return g;
}

std::string Mesh::str() const {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += (i ? " x " : "") + names[i] + "=" + std::to_string(sizes[i]);
  return s.empty() ? "1 device" : s;
}

// ---- placements -------------------------------------------------------------------------

std::string Placement::str() const {
  switch (kind) {
    case Kind::replicate: return "R";
    case Kind::shard: return "S(" + std::to_string(dim) + ")";
    case Kind::partial: return reduce == FactorReduce::max ? "P(max)" : "P(sum)";
  }
  return "?";
}

uint8_t Sharding::checked(size_t n) {
  if (n > kMaxAxes) throw Error("a placement over " + std::to_string(n) + " mesh axes; at most " + std::to_string(kMaxAxes));
  return static_cast<uint8_t>(n);
}

std::string sharding_str(const Sharding& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + s[i].str();
  return r + "]";
}

Sharding replicated(const Mesh& m) { return Sharding(m.sizes.size(), Placement::R()); }

Shape local_shape(std::span<const int64_t> global, const Sharding& s, const Mesh& m) {
  Shape l(global.begin(), global.end());
  for (size_t a = 0; a < s.size(); ++a) {
    if (!s[a].is_shard()) continue;
    const int d = s[a].dim;
    if (d < 0 || d >= static_cast<int>(l.size()))
      throw Error("placement " + s[a].str() + " on axis '" + m.names[a] + "' for shape " + shape_str(global));
    if (l[d] % m.sizes[a] != 0)
      throw Error("dim " + std::to_string(d) + " of " + shape_str(global) + " (" + std::to_string(l[d]) +
                  " locally) does not split evenly over " + m.names[a] + "=" + std::to_string(m.sizes[a]));
    l[d] /= m.sizes[a];
  }
  return l;
}

// ---- resharding -------------------------------------------------------------------------

std::string_view reshard_name(const ReshardStep& s) { return s.op ? collective_label(*s.op) : "slice"; }

std::string ReshardStep::str(const Mesh& m) const {
  return std::string(reshard_name(*this)) + " over " + m.names[axis] + " (" + from.str() + " -> " + to.str() +
         "), " + std::to_string(static_cast<int64_t>(bytes)) + " B";
}

std::vector<ReshardStep> reshard(const TensorType& type, const Sharding& from, const Sharding& to, const Mesh& m) {
  // Several axes may split one dim; their blocks nest (sharding.h). A collective or slice on
  // axis a that adds or removes a split of dim d is right only while no axis nested inside a
  // splits d: were dp's chunk of a tensor split along the sequence by both dp and tp taken
  // by a reduce-scatter over dp before tp's, it would be cut from tp's piece instead of
  // tp's piece from it. So every axis nested inside a change and splitting a dim that the
  // change touches is gathered first and split again after (`reset`); splits are removed
  // innermost first and added outermost first.
  const int axes = static_cast<int>(m.sizes.size());
  if (static_cast<int>(from.size()) != axes || static_cast<int>(to.size()) != axes)
    throw Error("reshard: placements " + sharding_str(from) + " -> " + sharding_str(to) + " for a mesh of " +
                std::to_string(axes) + " axes");
  for (int a = 0; a < axes; ++a)
    if (to[a].is_partial() && from[a] != to[a])
      throw Error("cannot reshard " + type.str() + " from " + from[a].str() + " to " + to[a].str() + " on axis '" +
                  m.names[a] + "'");
  // Nesting: axis b lies inside axis a when b < a.
  std::vector<char> reset(axes, 0);
  for (int a = 0; a < axes; ++a) reset[a] = from[a] != to[a] && m.sizes[a] > 1;
  auto touches = [&](int a, int d) {
    return (from[a].is_shard() && from[a].dim == d) || (to[a].is_shard() && to[a].dim == d);
  };
  for (bool grew = true; grew;) {
    grew = false;
    for (int b = 0; b < axes; ++b) {
      if (reset[b] || !from[b].is_shard() || m.sizes[b] == 1) continue;
      for (int a = b + 1; a < axes && !reset[b]; ++a)
        if (reset[a] && touches(a, from[b].dim)) reset[b] = grew = true;
    }
  }
  std::vector<ReshardStep> steps;
  Sharding cur = from;
  for (int a = 0; a < axes; ++a)
    if (m.sizes[a] == 1) cur[a] = to[a];  // nothing moves on an axis of one device
  const double esize = static_cast<double>(dtype_size(type.dtype));
  auto local_bytes = [&] { return static_cast<double>(numel(local_shape(type.shape, cur, m))) * esize; };
  auto nested_splits = [&](int a, int d) {
    for (int b = 0; b < a; ++b)
      if (cur[b].is_shard() && cur[b].dim == d && m.sizes[b] > 1) return true;
    return false;
  };
  auto others_touch = [&](int a, int d) {
    for (int b = 0; b < axes; ++b)
      if (b != a && reset[b] && touches(b, d)) return true;
    return false;
  };
  using K = Collective;
  auto push = [&](std::optional<Collective> k, int a, Placement t, double bytes) {
    steps.push_back(ReshardStep{k, a, cur[a], t, bytes});
    cur[a] = t;
    local_shape(type.shape, cur, m);  // validates divisibility of the new split
  };
  // Removals, innermost first: gathers, and all-reduces of sums that end replicated.
  for (int a = 0; a < axes; ++a) {
    if (!reset[a]) continue;
    const Placement f = cur[a], t = to[a];
    if (f.is_shard() && t.is_shard() && f.dim != t.dim && !nested_splits(a, f.dim) && !nested_splits(a, t.dim) &&
        !others_touch(a, f.dim) && !others_touch(a, t.dim)) {
      push(K::all_to_all, a, t, local_bytes());
    } else if (f.is_shard()) {
      push(K::all_gather, a, Placement::R(), local_bytes() * static_cast<double>(m.sizes[a]));
    } else if (f.is_partial() && !t.is_shard()) {
      push(K::all_reduce, a, Placement::R(), local_bytes());
    }
  }
  // Additions, outermost first: reduce-scatters of sums, and local slices.
  for (int a = axes - 1; a >= 0; --a) {
    if (!reset[a] || cur[a] == to[a]) continue;
    if (cur[a].is_partial()) push(K::reduce_scatter, a, to[a], local_bytes());
    else push(std::nullopt, a, to[a], 0);
  }
  return steps;
}

// ---- propagation ------------------------------------------------------------------------

namespace {
int find_dim(const std::vector<int>& dims, int factor) {
  for (size_t d = 0; d < dims.size(); ++d)
    if (dims[d] == factor) return static_cast<int>(d);
  return -1;
}
}  // namespace

NodePlacement propagate(const Graph& g, const Node& n, std::span<const Sharding> in, const Mesh& m,
                        std::span<const double> weight, const PropagationHints& hints) {
  const int axes = static_cast<int>(m.sizes.size());
  std::vector<TensorType> types;
  for (auto& v : n.inputs) types.push_back(g.type(v));
  if (in.size() != types.size())
    throw Error(n.where() + ": propagate got " + std::to_string(in.size()) + " input placements for " +
                std::to_string(types.size()) + " inputs");
  const ShardingRule rule = n.def->sharding(n, types);
  NodePlacement out;
  out.inputs.assign(types.size(), Sharding(axes));
  out.outputs.assign(n.outputs.size(), Sharding(axes));
  for (int a = 0; a < axes; ++a) {
    // The factor already split on the most input bytes, among those that divide evenly.
    std::map<int, double> score;
    for (size_t i = 0; i < types.size(); ++i) {
      const Placement p = in[i][a];
      if (!p.is_shard()) continue;
      const int f = rule.inputs[i][p.dim];
      if (f < 0 || rule.factor_sizes[f] % m.sizes[a] != 0) continue;
      score[f] += static_cast<double>(types[i].bytes()) * (i < weight.size() ? weight[i] : 1.0);
    }
    int chosen = -1;
    double best = -1;
    for (auto& [f, s] : score)
      if (s > best) {
        best = s;
        chosen = f;
      }
    // Partial sums pass through additive ops when every input is partial (summing partial
    // gradients of a shared value costs one all-reduce, not one per use). Through ops with
    // several inputs (mul, matmul) they could pass too, but resolving right away is what
    // Megatron does and never costs more: a value read by several consumers is all-reduced
    // once.
    std::vector<size_t> partial;
    for (size_t i = 0; i < types.size(); ++i)
      if (in[i][a].is_partial()) partial.push_back(i);
    // Views (reshape) pass them on as well: they move no data.
    bool passthrough = false;
    const bool all_partial = partial.size() == types.size();
    if (chosen < 0 && !partial.empty() && all_partial && (rule.additive || n.def->view))
      passthrough = std::all_of(partial.begin(), partial.end(), [&](size_t i) {
        return in[i][a].reduce == FactorReduce::sum && rule.linear[i];
      });
    if (chosen < 0 && !passthrough && a == hints.deferred_sum_axis && n.pass != Pass::update && partial.size() == 1 &&
        in[partial[0]][a].reduce == FactorReduce::sum && rule.linear[partial[0]]) {
      passthrough = true;
      for (size_t i = 0; i < types.size(); ++i)
        passthrough &= i == partial[0] || in[i][a].kind == Placement::Kind::replicate;
    }
    // Sequence parallelism: a partial [batch, seq, ...] activation is resolved into a split
    // along its sequence (a reduce-scatter), and the op runs on that split; an op that
    // reduces over the sequence (a norm's bias gradient) leaves a small partial sum instead.
    if (chosen < 0 && !passthrough && !partial.empty() && a == hints.sequence_axis) {
      int f = -1;
      bool ok = true;
      for (size_t i : partial) {
        const int fi = types[i].rank() >= 3 ? rule.inputs[i][1] : -1;
        ok = ok && in[i][a].reduce == FactorReduce::sum && fi >= 0 && (f < 0 || fi == f);
        f = fi;
      }
      if (ok && f >= 0 && rule.factor_sizes[f] % m.sizes[a] == 0) chosen = f;
    }
    for (size_t i = 0; i < types.size(); ++i) {
      Placement want = Placement::R();
      if (chosen >= 0) {
        int d = find_dim(rule.inputs[i], chosen);
        if (d >= 0) want = Placement::S(d);
      } else if (passthrough && in[i][a].is_partial()) {
        want = in[i][a];
      }
      out.inputs[i][a] = want;
    }
    for (size_t o = 0; o < n.outputs.size(); ++o) {
      Placement p = Placement::R();
      if (chosen >= 0) {
        int d = find_dim(rule.outputs[o], chosen);
        if (d >= 0) p = Placement::S(d);
        else if (rule.reduce[chosen] != FactorReduce::none) p = Placement::P(rule.reduce[chosen]);
      } else if (passthrough) {
        p = Placement::P(FactorReduce::sum);
      }
      out.outputs[o][a] = p;
    }
  }
  return out;
}

namespace {

// The placement `consumer` reads `v` in: as stored, unless the hints read a source otherwise.
Sharding read_placement(const Graph& g, const GraphPlacement& gp, const PropagationHints& hints, Value v,
                        const Node& consumer) {
  const Node& src = g.node(v.node);
  if (hints.read_as && src.inputs.empty())
    if (std::optional<Sharding> read = hints.read_as(src, consumer)) return *read;
  return gp.at(v);
}

// A replicated value that every consumer only slices (say a broadcast of the loss gradient
// that the batch-split backward then cuts) is better produced split: its producer computes
// just the part each device needs. Walking backwards, move such slices up through producers
// whose inputs can be sliced (or already are) instead, so no device materialises the whole.
// A sum deferred over microbatches that the consumers resolve (a weight gradient the update
// reads) does not stop the slices moving: the value stays partial over the microbatches and
// its consumers still sum it.
template <class AddReshard>
void sink_slices(const Graph& g, const Mesh& m, std::span<const int32_t> nodes, GraphPlacement& gp,
                 AddReshard& add_reshard, const PropagationHints& hints) {
  // Per-node scratch, kept between calls: planning places small parts of large graphs often.
  static thread_local std::vector<int> direct;
  static thread_local std::vector<char> pinned;  // outputs and update values keep their placement
  direct.assign(static_cast<size_t>(g.size()), 0);
  pinned.assign(static_cast<size_t>(g.size()), 0);
  for (auto& o : g.outputs()) pinned[o.value.node] = 1;
  for (auto& u : g.updates()) pinned[u.value.node] = 1;
  for (size_t id = 0; id < hints.keep.size(); ++id) pinned[id] |= hints.keep[id];
  for (int32_t id : nodes)
    for (auto& in : g.node(id).inputs) direct[in.node]++;
  for (auto& r : gp.reshards)
    for (auto& [node, input] : r.consumers)
      if (input >= 0) direct[r.value.node]--;
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
    const int32_t id = *it;
    const Node& n = g.node(id);
    if (n.inputs.empty() || n.def->kind != OpKind::compute || n.outputs.size() != 1 || pinned[id] || direct[id] > 0) continue;
    std::vector<size_t> mine;
    for (size_t r = 0; r < gp.reshards.size(); ++r)
      if (gp.reshards[r].value.node == id && !gp.reshards[r].consumers.empty()) mine.push_back(r);
    if (mine.empty()) continue;
    const Sharding target = gp.reshards[mine[0]].to;
    const int deferred = hints.deferred_sum_axis;
    bool all_slices = true;
    for (size_t r : mine) {
      all_slices &= gp.reshards[r].to == target;
      for (auto& st : gp.reshards[r].steps) all_slices &= !st.is_collective() || st.axis == deferred;
    }
    if (!all_slices) continue;
    std::vector<TensorType> types;
    std::vector<Sharding> in;
    for (auto& v : n.inputs) {
      types.push_back(g.type(v));
      in.push_back(read_placement(g, gp, hints, v, n));
    }
    const ShardingRule rule = n.def->sharding(n, types);
    NodePlacement before = propagate(g, n, in, m, {}, hints);
    std::vector<Sharding> want = before.inputs;
    Sharding placed = before.outputs[0];  // the value's new placement
    bool ok = true;
    for (size_t a = 0; a < target.size() && ok; ++a) {
      if (target[a] == before.outputs[0][a]) continue;
      const Placement was = before.outputs[0][a];
      if (static_cast<int>(a) == deferred && was.is_partial() && was.reduce == FactorReduce::sum &&
          target[a].kind == Placement::Kind::replicate)
        continue;  // summed by its consumers, as before
      if (!target[a].is_shard() || was.kind != Placement::Kind::replicate) { ok = false; break; }
      placed[a] = target[a];
      const int f = rule.outputs[0][target[a].dim];
      if (f < 0 || rule.factor_sizes[f] % m.sizes[a] != 0) { ok = false; break; }
      for (size_t i = 0; i < in.size(); ++i) {
        int d = find_dim(rule.inputs[i], f);
        if (d < 0) continue;  // this input does not carry the split dim: stays as it is
        const Placement cur = in[i][a];
        // A partial sum resolved for this op is reduce-scattered instead of all-reduced.
        const bool resolvable = cur.is_partial() && cur.reduce == FactorReduce::sum &&
                                before.inputs[i][a].kind == Placement::Kind::replicate;
        if (!(cur == Placement::S(d) || cur.kind == Placement::Kind::replicate || resolvable)) { ok = false; break; }
        want[i][a] = Placement::S(d);
      }
    }
    for (size_t i = 0; i < in.size() && ok; ++i) {
      try {
        local_shape(types[i].shape, want[i], m);
      } catch (const Error&) {
        ok = false;
      }
    }
    if (!ok) continue;
    if (placed == target) {
      for (size_t r : mine) gp.reshards[r].consumers.clear();  // consumers now read the value as is
    } else {
      for (size_t r : mine) gp.reshards[r].steps = reshard(n.outputs[0], placed, target, m);  // the sum alone
    }
    gp.values[id][0] = placed;
    for (size_t i = 0; i < in.size(); ++i) {
      if (want[i] == before.inputs[i]) continue;
      const std::pair<int32_t, int> me{id, static_cast<int>(i)};
      for (auto& r : gp.reshards) std::erase(r.consumers, me);
      const Sharding& stored = gp.at(n.inputs[i]);
      if (stored == want[i]) {
        direct[n.inputs[i].node]++;
      } else {
        add_reshard(n.inputs[i], want[i], id, static_cast<int>(i));
        if (before.inputs[i] == stored) direct[n.inputs[i].node]--;
      }
    }
  }
}

// An op whose output leaves a partial sum on an axis that its one consumer layout then
// reduce-scatters along a dim of its own (the embedding's gradient: the sequence-split
// activation gradient scattered into the whole table, then reduce-scattered over the
// vocabulary) can instead read the inputs that carry the summed factor whole and compute only
// its part of that dim: an all-gather of the (smaller) inputs in place of the reduce-scatter
// of the (larger) output, as Megatron-LM's vocabulary-parallel embedding does. Chosen where it
// moves fewer bytes; an all-gather another consumer already made costs nothing. Only on the
// sequence-parallel axis, whose activations are split within a pass: a data-parallel
// gradient's reduce-scatter overlaps the backward, an all-gather of other replicas'
// activations would stall it.
template <class AddReshard>
void gather_before_reducing(const Graph& g, const Mesh& m, std::span<const int32_t> nodes, GraphPlacement& gp,
                            AddReshard& add_reshard, const PropagationHints& hints) {
  if (hints.sequence_axis < 0) return;
  // Candidates first (few nodes leave a partial sum on this axis), so that a layer without
  // any costs one pass over its nodes.
  std::vector<int32_t> candidates;
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    if (!n.inputs.empty() && n.def->kind == OpKind::compute && n.outputs.size() == 1 && !gp.values[id].empty() &&
        gp.values[id][0][hints.sequence_axis].is_partial())
      candidates.push_back(id);
  }
  if (candidates.empty()) return;
  // Per candidate: consumers that read it as placed (it cannot change under them), and
  // whether something outside keeps its placement (an output, an update's value).
  std::unordered_map<int32_t, int> direct;
  for (int32_t id : candidates) direct[id] = 0;
  for (int32_t id : nodes)
    for (auto& in : g.node(id).inputs)
      if (auto it = direct.find(in.node); it != direct.end()) it->second++;
  for (auto& r : gp.reshards)
    if (auto it = direct.find(r.value.node); it != direct.end())
      for (auto& [node, input] : r.consumers)
        if (input >= 0) it->second--;
  for (auto& o : g.outputs())
    if (auto it = direct.find(o.value.node); it != direct.end()) it->second = 1;
  for (auto& u : g.updates())
    if (auto it = direct.find(u.value.node); it != direct.end()) it->second = 1;
  for (auto& [id, count] : direct)
    if (static_cast<size_t>(id) < hints.keep.size() && hints.keep[id]) count = 1;
  const int axes = static_cast<int>(m.sizes.size());
  for (int32_t id : candidates) {
    const Node& n = g.node(id);
    if (direct[id] > 0) continue;
    std::vector<size_t> mine;
    for (size_t r = 0; r < gp.reshards.size(); ++r)
      if (gp.reshards[r].value.node == id && !gp.reshards[r].consumers.empty()) mine.push_back(r);
    if (mine.empty()) continue;
    const Sharding target = gp.reshards[mine[0]].to;
    bool same = true;
    for (size_t r : mine) same &= gp.reshards[r].to == target;
    if (!same) continue;
    const Sharding have = gp.values[id][0];
    for (const int a : {hints.sequence_axis}) {  // the one axis it revises
      if (a == hints.deferred_sum_axis || !have[a].is_partial() || have[a].reduce != FactorReduce::sum ||
          !target[a].is_shard())
        continue;
      double saved = 0;
      for (size_t r : mine)
        for (auto& st : gp.reshards[r].steps)
          if (st.axis == a && st.op == Collective::reduce_scatter) saved = std::max(saved, st.bytes);
      if (saved <= 0) continue;
      std::vector<TensorType> types;
      std::vector<Sharding> cur;  // the inputs as this node reads them now
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        types.push_back(g.type(n.inputs[i]));
        Sharding c = gp.at(n.inputs[i]);
        for (auto& r : gp.reshards)
          for (auto& cons : r.consumers)
            if (cons == std::pair<int32_t, int>{id, static_cast<int>(i)}) c = r.to;
        cur.push_back(std::move(c));
      }
      const ShardingRule rule = n.def->sharding(n, types);
      const int f = rule.outputs[0][target[a].dim];
      if (f < 0 || rule.factor_sizes[f] % m.sizes[a] != 0) continue;
      Sharding placed = have;
      placed[a] = target[a];
      std::vector<Sharding> want = cur;
      bool ok = true;
      double cost = 0;
      for (size_t i = 0; i < n.inputs.size() && ok; ++i) {
        const int d = find_dim(rule.inputs[i], f);
        want[i][a] = d >= 0 ? Placement::S(d) : Placement::R();
        if (want[i] == cur[i]) continue;
        if (cur[i][a].is_partial()) { ok = false; break; }
        try {
          local_shape(types[i].shape, want[i], m);
          const Sharding& stored = gp.at(n.inputs[i]);
          bool exists = stored == want[i];
          for (auto& r : gp.reshards) exists |= r.value == n.inputs[i] && r.to == want[i] && !r.consumers.empty();
          if (!exists)
            for (auto& st : reshard(types[i], stored, want[i], m)) cost += st.is_collective() ? st.bytes : 0;
        } catch (const Error&) {
          ok = false;
        }
      }
      // The output's other axes must not split the dim this one now splits.
      for (int b = 0; b < axes && ok; ++b)
        ok = b == a || !(placed[b].is_shard() && placed[b].dim == target[a].dim);
      if (!ok || cost >= saved) continue;
      try {
        local_shape(n.outputs[0].shape, placed, m);
      } catch (const Error&) {
        continue;
      }
      bool whole = placed == target;
      for (size_t r : mine) {
        if (whole) gp.reshards[r].consumers.clear();
        else gp.reshards[r].steps = reshard(n.outputs[0], placed, target, m);
      }
      gp.values[id][0] = placed;
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        if (want[i] == cur[i]) continue;
        const std::pair<int32_t, int> me{id, static_cast<int>(i)};
        for (auto& r : gp.reshards) std::erase(r.consumers, me);
        if (gp.at(n.inputs[i]) != want[i]) add_reshard(n.inputs[i], want[i], id, static_cast<int>(i));
      }
    }
  }
}

}  // namespace

GraphPlacement propagate_graph(const Graph& g, const Mesh& m, const SourcePlacement& source,
                               std::span<const int32_t> nodes, const PropagationHints& hints,
                               std::span<const int32_t> same_as, const GraphPlacement* base, GraphPlacement* reuse) {
  GraphPlacement gp;
  std::map<std::pair<std::pair<int32_t, int32_t>, std::string>, size_t> done;  // (value, target) -> reshard
  auto add_reshard = [&](Value v, const Sharding& to, int32_t consumer, int input) {
    auto key = std::make_pair(std::make_pair(v.node, v.index), sharding_str(to));
    auto it = done.find(key);
    if (it == done.end()) {
      gp.reshards.push_back({v, to, reshard(g.type(v), gp.at(v), to, m), {}});
      it = done.emplace(key, gp.reshards.size() - 1).first;
    }
    gp.reshards[it->second].consumers.push_back({consumer, input});
  };
  if (reuse) {  // its storage, not its contents
    gp.values = std::move(reuse->values);
    gp.values.clear();
  }
  gp.values.resize(g.size());
  gp.base = base;
  if (!same_as.empty()) gp.alias.assign(same_as.begin(), same_as.end());
  std::vector<int32_t> all;
  if (nodes.empty()) {
    for (int32_t i = 0; i < g.size(); ++i) all.push_back(i);
    nodes = all;
  }
  // Parameters, and views of them, hold their placement.
  static thread_local std::vector<char> is_weight;
  is_weight.assign(static_cast<size_t>(g.size()), 0);
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    is_weight[id] = n.op == "parameter" || (n.def->view && is_weight[n.inputs[0].node]) ||
                    (n.op == "cast" && is_weight[n.inputs[0].node]);
  }
  std::vector<int32_t> propagated;  // what sink_slices may revisit
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    if (!same_as.empty() && same_as[id] >= 0) continue;
    propagated.push_back(id);
    if (n.inputs.empty()) {
      std::optional<Sharding> s = source ? source(n) : std::nullopt;
      if (s) {
        for (auto& t : n.outputs) local_shape(t.shape, *s, m);  // validates
        gp.values[id].assign(n.outputs.size(), *s);
      } else {
        gp.values[id].assign(n.outputs.size(), replicated(m));
      }
      continue;
    }
    std::vector<Sharding> in;
    for (auto& v : n.inputs) {
      if (!gp.has(v)) throw Error(n.where() + ": input '" + g.node(v.node).name + "' was not placed before it");
      in.push_back(read_placement(g, gp, hints, v, n));
    }
    std::vector<double> weight;
    for (auto& v : n.inputs) weight.push_back(is_weight[v.node] ? 1e6 : 1.0);
    NodePlacement p = propagate(g, n, in, m, weight, hints);
    for (size_t i = 0; i < in.size(); ++i) {
      if (gp.at(n.inputs[i]) == p.inputs[i]) continue;
      try {
        add_reshard(n.inputs[i], p.inputs[i], id, static_cast<int>(i));
      } catch (const Error& e) {
        throw Error(n.where() + ": input " + std::to_string(i) + ": " + e.what());
      }
    }
    gp.values[id] = p.outputs;
  }
  sink_slices(g, m, propagated, gp, add_reshard, hints);
  gather_before_reducing(g, m, propagated, gp, add_reshard, hints);
  for (auto& u : g.updates()) {
    if (!same_as.empty() && (same_as[u.variable] >= 0 || same_as[u.value.node] >= 0)) continue;
    if (gp.values[u.variable].empty() || gp.values[u.value.node].empty()) continue;  // only what it placed
    const Sharding& want = gp.values[u.variable][0];
    const Sharding& have = gp.at(u.value);
    if (want == have) continue;
    try {
      add_reshard(u.value, want, u.variable, -1);
    } catch (const Error& e) {
      throw Error(g.node(u.variable).where() + ": update: " + e.what());
    }
  }
  std::erase_if(gp.reshards, [](const GraphPlacement::Reshard& r) { return r.consumers.empty(); });
  return gp;
}

}  // namespace tessel::planner
