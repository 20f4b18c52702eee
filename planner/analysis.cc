#include "planner/analysis.h"

#include "planner/pipeline.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "graph/error.h"

namespace tessel::planner {

namespace {

// As the runtime's fusion pass (runtime/fusion.cc) takes them: f32 elementwise ops and the
// broadcasts they read.
bool fusible(const Node& n) {
  if (n.def->kind != OpKind::compute || n.outputs.size() != 1 || n.outputs[0].dtype != DType::f32) return false;
  return n.def->scalar != nullptr || n.op == "broadcast_to" || n.op == "stop_gradient";
}

bool chain_end(const Node& n) { return fusible(n) || n.op == "sum" || n.op == "max"; }

struct Context {
  const Graph& g;
  const PlanConfig& c;
  const ClusterSpec& cluster;
  const CostOptions& opt;
  Mesh mesh;
  GraphPlacement gp;
  std::vector<char> fused_out;               // value folded into its only consumer's kernel
  std::map<std::pair<int32_t, int>, size_t> reshard_at;  // (node, input) -> reshard index
  std::vector<char> optimizer_node;
  // collective_time by (collective, axis, bytes): a model's layers move the same few sizes.
  mutable std::map<std::tuple<int, int, double>, CommEstimate> comm_times;
};

// A reshard that moves data between devices (a gather, a reduction), not a local slice.
bool communicates(const GraphPlacement::Reshard& rs) {
  return std::any_of(rs.steps.begin(), rs.steps.end(), [](const ReshardStep& st) { return st.is_collective(); });
}

// Fusion: an elementwise value read only by elementwise ops or reductions of its own pass,
// with no resharding in between, stays in the kernel and never goes to memory (the runtime's
// fusion pass writes a value out only when something outside the group reads it, or it is a
// graph output or an update's value). `reshards_of(u)`: the node whose reshards u's are.
void mark_fused(Context& x, const std::vector<int32_t>& nodes, const std::vector<std::vector<int32_t>>& users,
                const std::function<int32_t(int32_t)>& reshards_of) {
  const Graph& g = x.g;
  x.fused_out.assign(g.size(), 0);
  std::vector<char> written(g.size(), 0);
  for (const auto& o : g.outputs()) written[o.value.node] = 1;
  for (const auto& u : g.updates()) written[u.value.node] = 1;
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    if (!x.opt.fuse_groups) {  // a chain: one elementwise value into one reader
      if (!n.def->scalar || users[id].size() != 1) continue;
      const Node& user = g.node(users[id][0]);
      bool resharded = false;
      for (size_t i = 0; i < user.inputs.size(); ++i)
        resharded = resharded || (user.inputs[i].node == id && x.reshard_at.count({reshards_of(user.id), static_cast<int>(i)}));
      x.fused_out[id] = chain_end(user) && !resharded;
      continue;
    }
    if (!fusible(n) || users[id].empty() || written[id]) continue;
    bool inside = true;
    for (int32_t u : users[id]) {
      const Node& user = g.node(u);
      for (size_t i = 0; i < user.inputs.size(); ++i)
        if (user.inputs[i].node == id && x.reshard_at.count({reshards_of(u), static_cast<int>(i)})) inside = false;
      inside = inside && chain_end(user) && user.pass == n.pass;
    }
    x.fused_out[id] = inside;
  }
}

double esize(const Context& x, DType dt, bool optimizer) {
  if (x.opt.precision == Precision::mixed && !optimizer && (dt == DType::f32 || dt == DType::f64)) return 2;
  return static_cast<double>(dtype_size(dt));
}

double local_bytes(const Context& x, const TensorType& t, const Sharding& s, bool optimizer) {
  return static_cast<double>(numel(local_shape(t.shape, s, x.mesh))) * esize(x, t.dtype, optimizer);
}

// The placement a node reads input i in (after any resharding).
const Sharding& input_placement(const Context& x, const Node& n, int i) {
  auto it = x.reshard_at.find({n.id, i});
  if (it != x.reshard_at.end()) return x.gp.reshards[it->second].to;
  return x.gp.at(n.inputs[i]);
}

struct NodeCost {
  double seconds = 0, flops = 0, bytes = 0;
};

NodeCost node_cost(const Context& x, const Node& n) {
  NodeCost nc;
  if (n.def->kind != OpKind::compute || n.def->view) return nc;
  const bool opt = x.optimizer_node[n.id];
  std::vector<TensorType> in;
  for (auto& v : n.inputs) in.push_back(x.g.type(v));
  Cost c = n.def->cost ? n.def->cost(n, in) : Cost{};
  // Work is divided over an axis when the node splits a factor there.
  double split = 1;
  const Sharding& out = x.gp.at(n.out(0));
  for (int a = 0; a < x.mesh.rank_of_axes(); ++a) {
    bool all_in_partial = !n.inputs.empty();
    for (size_t i = 0; i < n.inputs.size(); ++i) all_in_partial &= input_placement(x, n, static_cast<int>(i))[a].is_partial();
    if (out[a].is_shard() || (out[a].is_partial() && !all_in_partial)) split *= static_cast<double>(x.mesh.sizes[a]);
  }
  nc.flops = c.flops / split;
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    const double b = local_bytes(x, in[i], input_placement(x, n, static_cast<int>(i)), opt);
    if (!(x.opt.fuse_elementwise && x.fused_out[n.inputs[i].node])) nc.bytes += b;
  }
  for (auto& t : n.outputs) {
    const double b = local_bytes(x, t, out, opt);
    if (!(x.opt.fuse_elementwise && x.fused_out[n.id])) nc.bytes += b;
  }
  const DeviceSpec& d = x.cluster.device;
  double peak;
  if (n.op == "matmul") {
    DType dt = x.opt.precision == Precision::mixed && !opt ? DType::bf16 : in[0].dtype;
    peak = d.peak(dt) * (x.opt.gemm_efficiency > 0 ? x.opt.gemm_efficiency : d.gemm_efficiency);
    if (!d.gemm_rates.empty() && x.opt.gemm_efficiency <= 0) {
      // Measured rates by the work of one product: a weight of rank 2 makes one product of
      // the flattened rows; a batched product (attention's) is one per leading index.
      double products = 1;
      const Shape local = local_shape(n.outputs[0].shape, out, x.mesh);
      if (in.size() == 2 && in[1].rank() > 2)
        for (size_t i = 0; i + 2 < local.size(); ++i) products *= static_cast<double>(local[i]);
      // One product's m x n (a weight of rank 2 multiplies the flattened rows) and its k.
      double rows = 1, cols = local.empty() ? 1 : static_cast<double>(local.back());
      for (size_t i = 0; i + 1 < local.size(); ++i) rows *= static_cast<double>(local[i]);
      rows /= products;
      const double k = nc.flops / (2 * products * rows * cols);
      if (nc.flops > 0) peak = d.gemm_rate(rows, cols, k);
    }
  } else {
    peak = d.peak(DType::f32);
  }
  // The optimizer's state was last touched a whole step before: it streams from memory, not
  // from the caches an op's fresh inputs sit in.
  // Any other kernel moves its bytes at the rate a layer's kernels were measured to reach.
  const double bandwidth = opt ? d.memory_bandwidth : n.op == "matmul" ? d.stream_rate(nc.bytes) : d.kernel_rate(nc.bytes);
  nc.seconds = std::max(nc.flops / peak, nc.bytes / bandwidth);
  if (!(x.opt.fuse_elementwise && x.fused_out[n.id])) nc.seconds += d.launch_overhead_s;
  return nc;
}

std::vector<Segment> comm_segments(const Context& x, const GraphPlacement::Reshard& r, bool optimizer,
                                   bool gradient = false) {
  std::vector<Segment> segs;
  const TensorType& t = x.g.type(r.value);
  const double elem = gradient && x.opt.f32_gradients ? 4.0 : esize(x, t.dtype, optimizer);
  const double scale = elem / static_cast<double>(dtype_size(t.dtype));
  for (const ReshardStep& s : r.steps) {
    if (!s.is_collective() || s.axis == kMicrobatchAxis) continue;  // sums over microbatches: the runtime's
    Segment seg;
    seg.comm = true;
    seg.op = *s.op;
    seg.axis = s.axis;
    seg.bytes = s.bytes * scale;
    auto [it, fresh] = x.comm_times.try_emplace({static_cast<int>(seg.op), s.axis, seg.bytes});
    if (fresh) it->second = collective_time(x.cluster, seg.op, seg.bytes, x.mesh.group(0, s.axis));
    const CommEstimate& est = it->second;
    seg.seconds = est.seconds;
    seg.level = est.level;
    seg.bus_bytes = est.bus_bytes;
    segs.push_back(seg);
  }
  return segs;
}

void push_compute(std::vector<Segment>& v, double s) {
  if (s <= 0) return;
  if (!v.empty() && !v.back().comm) v.back().seconds += s;
  else v.push_back(Segment{false, s, Collective::all_reduce, -1, 0, -1, 0});
}

}  // namespace

std::string_view grad_accumulation_name(CostOptions::GradAccumulation a) {
  switch (a) {
    case CostOptions::GradAccumulation::in_gemm: return "in-gemm";
    case CostOptions::GradAccumulation::cast_add: return "cast-add";
    case CostOptions::GradAccumulation::add: break;
  }
  return "add";
}

std::optional<CostOptions::GradAccumulation> grad_accumulation_from_name(std::string_view s) {
  using A = CostOptions::GradAccumulation;
  for (A a : {A::in_gemm, A::add, A::cast_add})
    if (grad_accumulation_name(a) == s) return a;
  return std::nullopt;
}

double LayerProfile::backward_holding(bool first, double grad_bytes, double activations, double inputs) const {
  double most = 0;
  for (const BackwardStep& s : backward_steps)
    most = std::max(most, (first ? s.first + s.made * grad_bytes : s.later) + s.activations * activations + s.inputs * inputs);
  return std::max(0.0, most - (first ? grad_bytes : 0.0));
}

ModelProfile profile_model(const Graph& g, const LayerStructure& ls, const PlanConfig& c, const ClusterSpec& cluster,
                           const CostOptions& opt) {
  if (c.dp < 1 || c.tp < 1 || c.pp < 1 || c.microbatches < 1) throw Error("plan: dp, tp, pp and microbatches must be >= 1");
  if (c.tp > 1 && c.tp_dims.empty()) {
    PlanConfig chosen = c;
    chosen.tp_dims = choose_tensor_parallel(g, ls, c, cluster, opt);
    return profile_model(g, ls, chosen, cluster, opt);
  }
  if (std::string why = tp_dims_problem(g, c.tp_dims); !why.empty()) throw Error("plan: " + why);
  // A layer repeating an earlier one of its class is placed as that one (LayerStructure).
  const std::vector<int32_t>& nodes = ls.distinct;
  const std::vector<int32_t>& same_as = ls.repeats;
  const std::vector<int>& last_of = ls.last_of_class;
  Context x{g, c, cluster, opt, planning_mesh(c), {}, {}, {}, {}, {}};
  x.gp = place_graph(g, c, x.mesh, nodes, same_as, ls.read_by_repeat);
  if (std::string why = microbatch_problem(g, x.gp, x.mesh); !why.empty()) throw Error(why);
  for (size_t r = 0; r < x.gp.reshards.size(); ++r)
    for (auto& [node, input] : x.gp.reshards[r].consumers)
      if (input >= 0) x.reshard_at[{node, input}] = r;
  x.optimizer_node.assign(g.size(), 0);
  for (auto& l : ls.layers)
    for (int32_t id : l.optimizer) x.optimizer_node[id] = 1;
  for (int32_t id : ls.global)
    if (g.node(id).pass == Pass::update) x.optimizer_node[id] = 1;
  const std::vector<std::vector<int32_t>>& users = ls.users;
  mark_fused(x, nodes, users, [&](int32_t u) { return same_as[u] >= 0 ? same_as[u] : u; });  // its reshards, if it repeats another

  ModelProfile mp;
  // Where each reshard is paid: at its first consumer, or as an update.
  std::vector<int32_t> first_consumer(x.gp.reshards.size(), -1);
  for (size_t r = 0; r < x.gp.reshards.size(); ++r) {
    int32_t first = -1;
    for (auto& [node, input] : x.gp.reshards[r].consumers)
      if (input >= 0 && (first < 0 || node < first)) first = node;
    first_consumer[r] = first;
  }
  std::map<int32_t, std::vector<size_t>> paid_before;  // node -> reshards to pay first
  for (size_t r = 0; r < x.gp.reshards.size(); ++r)
    if (first_consumer[r] >= 0) paid_before[first_consumer[r]].push_back(r);
  // A parameter gathered for its forward users (ZeRO-3) is gathered again for its backward
  // users, as the partitioner does: the whole copy does not stay alive in between.
  std::vector<char> backward_node(g.size(), 0);
  for (auto& l : ls.layers)
    for (int32_t id : l.backward) backward_node[id] = 1;
  for (size_t r = 0; r < x.gp.reshards.size(); ++r) {
    if (g.node(x.gp.reshards[r].value.node).def->kind != OpKind::variable) continue;
    int32_t first_bwd = -1;
    bool forward_use = false;
    for (auto& [node, input] : x.gp.reshards[r].consumers) {
      if (input < 0) continue;
      if (backward_node[node]) first_bwd = first_bwd < 0 ? node : std::min(first_bwd, node);
      else if (!x.optimizer_node[node]) forward_use = true;
    }
    if (forward_use && first_bwd >= 0) paid_before[first_bwd].push_back(r);
  }

  std::vector<int> profile_of(ls.layers.size(), -1);  // a layer's entry in mp.layers
  for (size_t li = 0; li < ls.layers.size(); ++li) {
    const Layer& layer = ls.layers[li];
    if (layer.klass != static_cast<int>(li)) {  // as its class's first layer
      const int first = profile_of[static_cast<size_t>(layer.klass)];
      LayerProfile& prev = mp.layers.back();
      if (ls.layers[li - 1].klass == layer.klass) {
        prev.repeat += 1;
        prev.members.push_back(layer.name);
      } else {
        LayerProfile copy = mp.layers[static_cast<size_t>(first)];
        copy.name = layer.name;
        copy.repeat = 1;
        copy.members = {layer.name};
        mp.layers.push_back(std::move(copy));
      }
      profile_of[li] = static_cast<int>(mp.layers.size()) - 1;
      continue;
    }
    profile_of[li] = static_cast<int>(mp.layers.size());
    LayerProfile lp;
    lp.name = layer.name;
    lp.members = {layer.name};
    double fwd_flops = 0, bwd_flops = 0;
    auto walk = [&](const std::vector<int32_t>& ids, std::vector<Segment>& segs, double& compute, double* flops) {
      for (int32_t id : ids) {
        const Node& n = g.node(id);
        const bool core = flops == &fwd_flops && ls.attention_core[n.id];
        if (auto it = paid_before.find(id); it != paid_before.end())
          for (size_t r : it->second) {
            const Node& src = g.node(x.gp.reshards[r].value.node);
            const bool from_backward = src.pass == Pass::backward;
            // Gradients reduced for the optimizer overlap the rest of the backward pass.
            if (x.optimizer_node[id] && from_backward) continue;
            for (auto& s : comm_segments(x, x.gp.reshards[r], x.optimizer_node[id])) segs.push_back(s);
          }
        NodeCost nc = node_cost(x, n);
        compute += nc.seconds;
        push_compute(segs, nc.seconds);
        if (core) lp.core_forward_s += nc.seconds;
        if (flops) {
          std::vector<TensorType> in;
          for (auto& v : n.inputs) in.push_back(g.type(v));
          if (n.def->cost && n.def->kind == OpKind::compute) {
            const double f = n.def->cost(n, in).flops;
            *flops += f / static_cast<double>(c.microbatches);  // cost() sees the whole batch
            if (core) lp.core_forward_flops += f / static_cast<double>(c.microbatches);
          }
        }
      }
    };
    walk(layer.forward, lp.forward, lp.forward_compute_s, &fwd_flops);
    walk(ls.layers[last_of[li]].backward, lp.backward, lp.backward_compute_s, &bwd_flops);
    lp.forward_flops = fwd_flops;
    lp.model_flops = fwd_flops + bwd_flops;
    std::vector<Segment> opt_segs;
    walk(layer.optimizer, opt_segs, lp.optimizer_s, nullptr);
    for (auto& s : opt_segs)
      if (s.comm) lp.optimizer_s += s.seconds;  // collectives inside the update (rare)

    // Gradient reductions (producer in this layer's backward, consumer its optimizer) and
    // gathers of updated parameters.
    std::set<int32_t> in_layer(layer.forward.begin(), layer.forward.end());
    in_layer.insert(layer.backward.begin(), layer.backward.end());
    in_layer.insert(layer.optimizer.begin(), layer.optimizer.end());
    for (size_t r = 0; r < x.gp.reshards.size(); ++r) {
      const auto& rs = x.gp.reshards[r];
      const Node& src = g.node(rs.value.node);
      const bool from_backward = src.pass == Pass::backward;
      bool update = false, to_optimizer = false;
      for (auto& [node, input] : rs.consumers) {
        if (input < 0 && ls.layer_of[node] == static_cast<int>(li)) update = true;
        if (input >= 0 && x.optimizer_node[node] && ls.layer_of[node] == static_cast<int>(li)) to_optimizer = true;
      }
      if (update)
        for (auto& s : comm_segments(x, rs, false)) lp.param_sync.push_back(s);
      else if (to_optimizer && from_backward)
        for (auto& s : comm_segments(x, rs, false, true)) lp.grad_sync.push_back(s);
    }

    // Memory of one device: each buffer rounded up as the runtime allocates it.
    auto held = [&](double bytes) {
      const double a = std::max(1.0, opt.buffer_alignment);
      return std::max(a, std::ceil(bytes / a) * a);
    };
    const int dp_axis = x.mesh.axis("dp");
    const double wsize = opt.precision == Precision::mixed ? 2 : 4;
    for (int32_t id : layer.forward) {
      const Node& n = g.node(id);
      if (n.op != "parameter") continue;
      ParameterPlacement pp = parameter_placement(g, n, c, x.mesh, false);
      const double elems = static_cast<double>(n.outputs[0].numel());
      const double local = static_cast<double>(numel(local_shape(n.outputs[0].shape, pp.stored, x.mesh)));
      // Gradients are reduced to shards over dp where the update runs on shards: ZeRO-3, or
      // ZeRO-1 and 2 for a parameter with optimizer state (the state is split, and the update
      // with it; a stateless update, plain SGD's, runs whole). The whole gradient lives from
      // the backward that makes it until its reduce-scatter.
      // Over the parameter's update: whether it keeps state, and the gradient as the backward
      // makes it, which may be whole where the parameter is used split (a product of
      // replicated activations makes the whole weight gradient, then cut).
      bool has_state = false;
      double grad_used = static_cast<double>(numel(local_shape(n.outputs[0].shape, pp.used, x.mesh)));
      for (int32_t id2 : layer.optimizer) {
        const Node& un = g.node(id2);
        if (owner_parameter(g, un) != &n) continue;
        has_state |= un.op == "state" && un.outputs[0].rank() > 0;
        for (const Value& in : un.inputs)
          if (g.node(in.node).pass == Pass::backward && g.type(in).shape == n.outputs[0].shape && x.gp.has(in))
            grad_used = std::max(grad_used, static_cast<double>(numel(local_shape(n.outputs[0].shape, x.gp.at(in), x.mesh))));
      }
      Sharding grad_s = pp.used;
      if (c.dp > 1 && (c.zero >= 3 || (c.zero >= 1 && has_state))) grad_s = parameter_placement(g, n, c, x.mesh, true).stored;
      const double grad_local = static_cast<double>(numel(local_shape(n.outputs[0].shape, grad_s, x.mesh)));
      lp.parameters += elems;
      lp.weight_bytes += held(local * wsize);
      const double sum_size = opt.f32_gradients ? 4 : wsize;
      lp.grad_bytes += held(grad_local * sum_size);
      if (grad_local < grad_used) {
        lp.grad_whole_bytes += held(grad_used * sum_size);
        lp.grad_shard_bytes += held(grad_local * sum_size);
      }
      // One microbatch's gradient (whole, as its producer leaves it) into the running sum.
      if (opt.grad_accumulation != CostOptions::GradAccumulation::in_gemm) {
        const bool cast = opt.grad_accumulation == CostOptions::GradAccumulation::cast_add;
        const double used = static_cast<double>(numel(local_shape(n.outputs[0].shape, pp.used, x.mesh)));
        const double bytes = used * (wsize + 2 * sum_size + (cast ? 2 * sum_size : 0));
        lp.grad_accumulate_s += bytes / cluster.device.stream_rate(bytes) + (cast ? 2 : 1) * cluster.device.launch_overhead_s;
      }
      (void)dp_axis;
    }
    for (int32_t id : layer.optimizer) {
      const Node& n = g.node(id);
      if (n.op != "state") continue;
      lp.optimizer_bytes += held(local_bytes(x, n.outputs[0], x.gp.at(n.out(0)), true));
    }
    if (opt.precision == Precision::mixed) {  // f32 master weights, split like the optimizer state
      for (int32_t id : layer.forward) {
        const Node& n = g.node(id);
        if (n.op != "parameter") continue;
        ParameterPlacement ps = parameter_placement(g, n, c, x.mesh, true);
        lp.optimizer_bytes += held(static_cast<double>(numel(local_shape(n.outputs[0].shape, ps.stored, x.mesh))) * 4);
      }
    }
    std::set<int32_t> fwd(layer.forward.begin(), layer.forward.end());
    std::set<int32_t> bwd(layer.backward.begin(), layer.backward.end());
    std::set<std::pair<int32_t, int32_t>> saved, inputs, outputs, core_saved, core_inputs;
    std::set<size_t> gathered;  // reshards whose results the backward reads
    std::set<std::pair<int32_t, int32_t>> backward_inputs;  // earlier layers' values the backward reads
    std::set<int32_t> readers(fwd.begin(), fwd.end());  // what may read the layer's values
    readers.insert(bwd.begin(), bwd.end());
    for (int32_t id : layer.forward) readers.insert(users[id].begin(), users[id].end());
    // A view (a reshape) holds no bytes of its own: what its reader keeps alive is the
    // value it views.
    auto storage = [&](Value v) {
      while (g.node(v.node).def->kind == OpKind::compute && g.node(v.node).def->view && !g.node(v.node).inputs.empty())
        v = g.node(v.node).inputs[0];
      return v;
    };
    // The reshard an op's input is read through, at the op or at a view between.
    auto reshard_of_read = [&](int32_t id, int input) -> std::optional<size_t> {
      Value at{id, input};
      for (Value cur = g.node(id).inputs[static_cast<size_t>(input)];; cur = g.node(cur.node).inputs[0]) {
        if (auto it = x.reshard_at.find({at.node, at.index}); it != x.reshard_at.end()) return it->second;
        const Node& c = g.node(cur.node);
        if (c.def->kind != OpKind::compute || !c.def->view || c.inputs.empty()) return std::nullopt;
        at = Value{cur.node, 0};
      }
    };
    for (int32_t id : readers) {
      const Node& n = g.node(id);
      for (const Value& read : n.inputs) {
        const Value v = storage(read);
        const Node& src = g.node(v.node);
        if (src.def->kind != OpKind::compute || src.def->view) {
          if (src.def->kind == OpKind::input && fwd.count(id)) inputs.insert({v.node, v.index});
          // Another layer's parameter (a tied embedding read by the output layer): received
          // when that layer is on another stage, and kept for the backward that reads it.
          if (src.def->kind == OpKind::variable && bwd.count(id) && ls.layer_of[v.node] >= 0 &&
              ls.layer_of[v.node] != static_cast<int>(li))
            backward_inputs.insert({v.node, v.index});
          continue;
        }
        if (fwd.count(v.node) && bwd.count(id)) {
          // Read resharded (a sequence-parallel activation gathered for a product, at the
          // reader or at a view between): the backward keeps the gathered copy, not the value.
          const std::optional<size_t> reshard = reshard_of_read(id, static_cast<int>(&read - n.inputs.data()));
          // A copy the forward makes (its first reader is there) is what stays; one made for
          // the backward alone is made there, from the value, which stays instead.
          const bool made_in_forward =
              reshard && std::any_of(x.gp.reshards[*reshard].consumers.begin(), x.gp.reshards[*reshard].consumers.end(),
                                     [&](const auto& c) { return c.first >= 0 && g.node(c.first).pass == Pass::forward; });
          if (made_in_forward) gathered.insert(*reshard);
          else saved.insert({v.node, v.index});
          if (ls.attention_core[src.id]) core_saved.insert({v.node, v.index});
        }
        if (bwd.count(id) && !fwd.count(v.node) && !x.optimizer_node[v.node] && src.pass != Pass::backward &&
            ls.layer_of[v.node] >= 0 && ls.layer_of[v.node] != static_cast<int>(li))
          backward_inputs.insert({v.node, v.index});
        if (fwd.count(id) && ls.attention_core[n.id] && fwd.count(v.node) && !ls.attention_core[src.id])
          core_inputs.insert({v.node, v.index});
        if (!fwd.count(v.node) && fwd.count(id) && !x.optimizer_node[v.node] && ls.layer_of[v.node] != static_cast<int>(li))
          inputs.insert({v.node, v.index});
        if (fwd.count(v.node) && !fwd.count(id) && !bwd.count(id) && !x.optimizer_node[id] &&
            ls.layer_of[id] > static_cast<int>(li))
          outputs.insert({v.node, v.index});
      }
    }
    auto bytes_of = [&](const std::set<std::pair<int32_t, int32_t>>& vals) {
      double b = 0;
      for (auto& [node, idx] : vals) b += held(local_bytes(x, g.node(node).outputs[idx], x.gp.at(Value{node, idx}), false));
      return b;
    };
    lp.activation_bytes = bytes_of(saved);
    // Kept by their own layer too when its backward reads them.
    auto kept_by_own_layer = [&](int32_t node) {
      return std::any_of(users[node].begin(), users[node].end(), [&](int32_t u) {
        return g.node(u).pass == Pass::backward && ls.layer_of[u] == ls.layer_of[node];
      });
    };
    for (auto [node, index] : backward_inputs) {
      LayerProfile::BackwardInput in;
      in.bytes = held(local_bytes(x, g.node(node).outputs[index], x.gp.at(Value{node, index}), false));
      in.layers_back = static_cast<int>(li) - ls.layer_of[node];
      in.kept_by_source = g.node(node).def->kind == OpKind::variable || kept_by_own_layer(node);
      lp.backward_input_bytes += in.bytes;
      lp.backward_inputs.push_back(in);
    }
    for (size_t r : gathered) {
      const auto& rs = x.gp.reshards[r];
      lp.activation_bytes += held(local_bytes(x, g.type(rs.value), rs.to, false));
    }
    // Held outside the arena for the whole step besides parameters and optimizer state: the
    // batch the layer reads (every microbatch's: the rank holds its whole part), the graph
    // outputs it makes (one microbatch's: each overwrites the last) and the constants it
    // reads (a causal mask).
    std::set<std::pair<int32_t, int32_t>> data;  // as the sets above: (node, output)
    for (int32_t id : layer.forward)
      for (const Value& v : g.node(id).inputs)
        if (g.node(v.node).def->kind == OpKind::input || g.node(v.node).def->kind == OpKind::constant)
          data.insert({v.node, v.index});
    for (const auto& out : g.outputs())
      if (fwd.count(out.value.node) && g.node(out.value.node).def->kind == OpKind::compute)
        data.insert({out.value.node, out.value.index});
    for (auto [node, index] : data) {
      const Value v{node, index};
      const Sharding& s = x.gp.at(v);
      const bool input = g.node(v.node).def->kind == OpKind::input;
      const double pieces = input && kMicrobatchAxis < static_cast<int>(s.size()) && s[kMicrobatchAxis].is_shard()
                                ? static_cast<double>(x.mesh.sizes[kMicrobatchAxis])
                                : 1;
      lp.io_bytes += held(local_bytes(x, g.node(v.node).outputs[static_cast<size_t>(v.index)], s, false)) * pieces;
    }
    // Working memory: the largest set of transients one op holds at once, its outputs and the
    // computed inputs it reads, other than what is counted elsewhere: the activations the
    // layer keeps, the parameters and their gradients' sums (the update writes in place). A
    // microbatch's own gradient is transient when there are several to add into the sum.
    auto transient = [&](Value read) {
      const Value v = storage(read);  // a view holds what it views
      const Node& src = g.node(v.node);
      if (src.def->kind != OpKind::compute || src.def->view || saved.count({v.node, v.index})) return 0.0;
      if (backward_inputs.count({v.node, v.index})) return 0.0;  // kept from the forward
      if (x.opt.fuse_elementwise && x.fused_out[v.node]) return 0.0;
      // A gradient the update reads is the step's sum itself (grad_bytes, grad_whole_bytes)
      // when there is one microbatch.
      if (c.microbatches == 1)
        for (int32_t u : users[v.node])
          if (x.optimizer_node[u]) return 0.0;
      return held(local_bytes(x, src.outputs[static_cast<size_t>(v.index)], x.gp.at(v), false));
    };
    auto is_gradient = [&](Value v) {
      return std::any_of(users[v.node].begin(), users[v.node].end(), [&](int32_t u) { return x.optimizer_node[u] != 0; });
    };
    const std::vector<int32_t>& backward = ls.layers[last_of[li]].backward;
    double gradients = 0;  // bytes of the gradients the backward makes
    for (int32_t id : backward)
      for (int k = 0; k < static_cast<int>(g.node(id).outputs.size()); ++k)
        if (is_gradient(g.node(id).out(k))) gradients += held(local_bytes(x, g.node(id).outputs[k], x.gp.at(g.node(id).out(k)), false));
    double made = 0;
    // Where the kept values die: their last reader in the backward (the layer's own, whose ops
    // match `backward` one for one when that is another member's of the class).
    const std::vector<int32_t>& own = layer.backward;
    const bool aligned = own.size() == backward.size();
    std::map<std::pair<int32_t, int32_t>, size_t> last_value;
    std::map<size_t, size_t> last_copy;
    for (size_t k = 0; k < own.size(); ++k) {
      const Node& n = g.node(own[k]);
      for (int i = 0; i < static_cast<int>(n.inputs.size()); ++i) {
        const Value v = storage(n.inputs[static_cast<size_t>(i)]);
        if (auto r = reshard_of_read(own[k], i); r && gathered.count(*r)) last_copy[*r] = k;
        else last_value[{v.node, v.index}] = k;
      }
    }
    // Each kept value as (its last reader, its bytes); never read there (or not aligned): to the end.
    constexpr size_t kToTheEnd = std::numeric_limits<size_t>::max();
    auto deaths = [&](const std::set<std::pair<int32_t, int32_t>>& vals, bool copies) {
      std::vector<std::pair<size_t, double>> d;
      for (auto [node, index] : vals) {
        auto it = last_value.find({node, index});
        d.push_back({aligned && it != last_value.end() ? it->second : kToTheEnd,
                     held(local_bytes(x, g.node(node).outputs[index], x.gp.at(Value{node, index}), false))});
      }
      if (copies)
        for (size_t r : gathered) {
          auto it = last_copy.find(r);
          d.push_back({aligned && it != last_copy.end() ? it->second : kToTheEnd,
                       held(local_bytes(x, g.type(x.gp.reshards[r].value), x.gp.reshards[r].to, false))});
        }
      return d;
    };
    const auto activation_deaths = deaths(saved, true), input_deaths = deaths(backward_inputs, false);
    auto live_at = [](const std::vector<std::pair<size_t, double>>& d, size_t k) {
      double b = 0;
      for (auto [last, bytes] : d) b += last >= k ? bytes : 0.0;
      return b;
    };
    for (const std::vector<int32_t>* ids : {&layer.forward, &backward})
      for (const int32_t& id : *ids) {
        const Node& n = g.node(id);
        if (n.def->kind != OpKind::compute || n.def->view) continue;
        const auto step = static_cast<size_t>(&id - ids->data());
        double b = 0, first = 0;
        for (int k = 0; k < static_cast<int>(n.outputs.size()); ++k) {
          const double t = transient(n.out(k));
          b += t;
          if (ids != &backward) continue;
          if (!is_gradient(n.out(k))) first += t;
          else made += held(local_bytes(x, n.outputs[k], x.gp.at(n.out(k)), false));
        }
        double of_inputs = 0;  // the layer's inputs among them
        for (int i = 0; i < static_cast<int>(n.inputs.size()); ++i) {
          const Value& v = n.inputs[static_cast<size_t>(i)];
          double t = transient(v);
          const Value st = storage(v);
          if (inputs.count({st.node, st.index})) of_inputs += t;
          // Read through a reshard: its result too (a gathered gradient), unless the layer keeps it.
          if (auto r = reshard_of_read(id, i); r && !gathered.count(*r)) {
            const auto& rs = x.gp.reshards[*r];
            if (communicates(rs)) t += held(local_bytes(x, g.type(rs.value), rs.to, false));
          }
          b += t;
          if (!is_gradient(v)) first += t;
        }
        lp.working_bytes = std::max(lp.working_bytes, b);
        if (ids != &backward) {
          lp.forward_working_bytes = std::max(lp.forward_working_bytes, b);
          lp.kept_input_forward_working_bytes = std::max(lp.kept_input_forward_working_bytes, b - of_inputs);
        }
        if (ids == &backward) {
          LayerProfile::BackwardStep st;
          st.first = first;
          st.later = b;
          st.made = gradients > 0 ? made / gradients : 1.0;
          st.activations = lp.activation_bytes > 0 ? live_at(activation_deaths, step) / lp.activation_bytes : 0;
          st.inputs = lp.backward_input_bytes > 0 ? live_at(input_deaths, step) / lp.backward_input_bytes : 0;
          lp.backward_steps.push_back(st);
        }
      }
    // The update's transients: values its ops make that are not the updated state, and the
    // local slices of whole values (a replicated parameter cut to its ZeRO shard).
    std::set<std::pair<int32_t, int32_t>> updated;
    for (const auto& u : g.updates()) updated.insert({u.value.node, u.value.index});
    auto update_transient = [&](Value v) {
      const Node& src = g.node(v.node);
      if (!x.optimizer_node[v.node] || src.def->kind != OpKind::compute || src.def->view || updated.count({v.node, v.index}))
        return 0.0;
      if (x.opt.fuse_elementwise && x.fused_out[v.node]) return 0.0;
      return held(local_bytes(x, src.outputs[static_cast<size_t>(v.index)], x.gp.at(v), false));
    };
    for (int32_t id : layer.optimizer) {
      const Node& n = g.node(id);
      if (n.def->kind != OpKind::compute || n.def->view) continue;
      double b = 0;
      for (int k = 0; k < static_cast<int>(n.outputs.size()); ++k) b += update_transient(n.out(k));
      for (int i = 0; i < static_cast<int>(n.inputs.size()); ++i) {
        auto it = x.reshard_at.find({id, i});
        if (it == x.reshard_at.end()) {
          b += update_transient(n.inputs[static_cast<size_t>(i)]);
          continue;
        }
        const auto& rs = x.gp.reshards[it->second];
        if (!communicates(rs)) b += held(local_bytes(x, g.type(rs.value), rs.to, false));
      }
      lp.optimizer_working_bytes = std::max(lp.optimizer_working_bytes, b);
    }
    std::set<std::pair<int32_t, int32_t>> kept;
    for (auto& v : saved)
      if (!core_saved.count(v)) kept.insert(v);
    kept.insert(core_inputs.begin(), core_inputs.end());
    lp.selective_kept_bytes = bytes_of(kept);
    lp.core_rebuilt_bytes = bytes_of(core_saved);
    lp.input_bytes = bytes_of(inputs);
    lp.output_bytes = bytes_of(outputs);
    mp.layers.push_back(std::move(lp));
  }
  for (int32_t id : ls.global) mp.global_compute_s += node_cost(x, g.node(id)).seconds;
  for (int32_t id : ls.global)
    if (g.node(id).def->kind == OpKind::input) {
      const int b = input_batch_dim(g.node(id));
      if (b >= 0 && b < g.node(id).outputs[0].rank()) {
        mp.samples_per_microbatch = static_cast<double>(g.node(id).outputs[0].shape[b]) / static_cast<double>(c.microbatches);
        break;
      }
    }
  return mp;
}

namespace {

// The seconds one device spends on `nodes` under `gp`: their compute and the collectives
// their inputs need (CostOptions as profile_model applies them, no overlap).
struct Spent {
  double compute = 0, comm = 0;
};
Spent seconds_of(const Graph& g, const LayerStructure& ls, const PlanConfig& c, const ClusterSpec& cluster,
                  const CostOptions& opt, const Mesh& mesh, GraphPlacement& gp, const std::vector<int32_t>& nodes) {
  Context x{g, c, cluster, opt, mesh, std::move(gp), {}, {}, {}, {}};
  for (size_t r = 0; r < x.gp.reshards.size(); ++r)
    for (auto& [node, input] : x.gp.reshards[r].consumers)
      if (input >= 0) x.reshard_at[{node, input}] = r;
  x.optimizer_node.assign(g.size(), 0);
  for (int32_t id : nodes) x.optimizer_node[id] = g.node(id).pass == Pass::update;
  mark_fused(x, nodes, ls.users, [](int32_t u) { return u; });
  Spent s;
  for (int32_t id : nodes) s.compute += node_cost(x, g.node(id)).seconds;
  for (const auto& r : x.gp.reshards)
    for (const Segment& seg : comm_segments(x, r, g.node(r.consumers.front().first).pass == Pass::update,
                                            g.node(r.value.node).pass == Pass::backward))
      s.comm += seg.seconds;
  gp = std::move(x.gp);  // back to the caller, whose storage it is
  return s;
}

}  // namespace

std::vector<int8_t> choose_tensor_parallel(const Graph& g, const LayerStructure& ls, const PlanConfig& c,
                                           const ClusterSpec& cluster, const CostOptions& opt,
                                           const std::vector<int8_t>& start, const std::map<int32_t, int8_t>& pinned) {
  PlanConfig k = c;
  k.tp_dims.assign(g.size(), -1);
  std::vector<char> is_param(g.size(), 0);
  for (int32_t id : g.parameters()) is_param[id] = 1;
  // Parameters of a layer and their counterparts in the other layers of its forward class.
  auto counterparts = [&](int32_t p) {
    std::vector<int32_t> all;
    const int l = ls.layer_of[p];
    if (l < 0) return std::vector<int32_t>{p};
    for (size_t m = 0; m < ls.layers.size(); ++m)
      if (ls.layers[m].forward_class == ls.layers[l].forward_class)
        all.push_back(ls.layers[m].forward.at(static_cast<size_t>(ls.position[p])));
    return all;
  };
  // The user's pins hold for the parameter's whole class; nothing below changes them.
  std::vector<char> fixed(g.size(), 0);
  for (auto& [p, d] : pinned) {
    if (p < 0 || p >= g.size() || !is_param[p])
      throw Error("plan: a split is pinned for node " + std::to_string(p) + ", which is not a parameter");
    const Node& n = g.node(p);
    if (d < -1 || d >= n.outputs[0].rank())
      throw Error("plan: the split pinned for " + n.name + " " + n.outputs[0].str() + " (" + n.where() + ") is dim " +
                  std::to_string(d) + ", which it does not have");
    if (d >= 0 && c.tp > 1 && n.outputs[0].shape[d] % c.tp != 0)
      throw Error("plan: the split pinned for " + n.name + " " + n.outputs[0].str() + " (" + n.where() + "), dim " +
                  std::to_string(d) + ", does not divide by tp=" + std::to_string(c.tp));
    for (int32_t q : counterparts(p)) {
      if (fixed[q] && k.tp_dims[q] != d) {
        const Node& o = g.node(q);
        throw Error("plan: the splits pinned for " + n.name + " (dim " + std::to_string(d) + ") and " + o.name +
                    " (dim " + std::to_string(k.tp_dims[q]) + ") differ, but the two are the same parameter of " +
                    "repeated layers (" + n.where() + ", " + o.where() + "), which split alike");
      }
      k.tp_dims[q] = d;
      fixed[q] = 1;
    }
  }
  if (c.tp <= 1) {
    std::fill(k.tp_dims.begin(), k.tp_dims.end(), -1);
    return k.tp_dims;
  }
  for (size_t id = 0; id < start.size() && id < k.tp_dims.size(); ++id) {
    const int d = start[id];
    if (!fixed[id] && d >= 0 && d < g.node(static_cast<int32_t>(id)).outputs[0].rank() &&
        g.node(static_cast<int32_t>(id)).outputs[0].shape[d] % c.tp == 0)
      k.tp_dims[id] = static_cast<int8_t>(d);
  }
  const Mesh mesh = planning_mesh(k);
  GraphPlacement base = place_graph(g, k, mesh, ls.distinct, ls.repeats, ls.read_by_repeat);
  // Each parameter's update, replicated (what it costs on one device when nothing splits it).
  std::vector<double> update_s(g.size(), 0);
  {
    std::vector<int32_t> updates;
    for (const Layer& l : ls.layers)
      if (l.klass == &l - ls.layers.data()) updates.insert(updates.end(), l.optimizer.begin(), l.optimizer.end());
    std::sort(updates.begin(), updates.end());
    GraphPlacement gp = place_graph(g, k, mesh, updates, {}, {}, &base);
    Context x{g, k, cluster, opt, mesh, std::move(gp), {}, {}, {}, {}};
    x.optimizer_node.assign(g.size(), 1);
    x.fused_out.assign(g.size(), 0);
    for (int32_t id : updates) {
      const Node& n = g.node(id);
      if (n.serves < 0) continue;
      for (int32_t q : counterparts(n.serves)) update_s[q] += node_cost(x, n).seconds;
    }
  }
  // Every parameter that is not a weight, stored as its first reader slices it, throughout
  // the model: what the plan under the splits chosen so far places everything as.
  std::vector<int32_t> not_weights;
  for (int32_t id : g.parameters())
    if (!fixed[id] &&
        (g.node(id).outputs[0].rank() < 2 || ls.users[id].empty() || g.node(ls.users[id][0]).def->elementwise()))
      not_weights.push_back(id);
  auto settle_everywhere = [&] {
    auto each = [&](int32_t p, int d) {
      for (int32_t q : counterparts(p)) k.tp_dims[q] = static_cast<int8_t>(d);
    };
    for (int32_t p : not_weights) each(p, -1);
    GraphPlacement gp = place_graph(g, k, mesh, ls.distinct, ls.repeats, ls.read_by_repeat);
    const int tp_axis = mesh.axis("tp");
    bool changed = false;
    for (int32_t p : not_weights) {
      if (ls.repeats[p] >= 0) continue;  // placed as its class's first layer's
      int dim = -1, targets = 0;
      bool slices = true;
      for (const auto& r : gp.reshards) {
        if (r.value.node != p) continue;
        ++targets;
        for (const ReshardStep& st : r.steps) slices &= !st.op && st.axis == tp_axis;
        if (r.to[tp_axis].is_shard()) dim = r.to[tp_axis].dim;
      }
      if (targets == 1 && slices && dim >= 0) each(p, dim), changed = true;
    }
    if (changed) gp = place_graph(g, k, mesh, ls.distinct, ls.repeats, ls.read_by_repeat);
    return gp;
  };
  GraphPlacement scratch;  // storage the many small placements below take turns with
  // Two sweeps over the layers: each is decided again knowing what the others chose (the
  // blocks meet the embedding's placement; the embedding's table is also the output layer's).
  // The classes that cost most (a transformer's blocks) decide first, meeting replicated
  // inputs; the rest fit around them.
  std::vector<size_t> order;
  {
    std::vector<double> weight(ls.layers.size(), 0);
    for (size_t l = 0; l < ls.layers.size(); ++l)
      for (int32_t id : ls.layers[l].forward) {
        const Node& n = g.node(id);
        if (n.def->kind != OpKind::compute || !n.def->cost) continue;
        std::vector<TensorType> in;
        for (auto& v : n.inputs) in.push_back(g.type(v));
        weight[static_cast<size_t>(ls.layers[l].forward_class)] += n.def->cost(n, in).flops;
      }
    for (size_t l = 0; l < ls.layers.size(); ++l)
      if (ls.layers[l].forward_class == static_cast<int>(l)) order.push_back(l);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return weight[a] > weight[b]; });
  }
  // Decides layer li's splits (given everyone else's); returns the whole model's simulated
  // step with them, or -1 when the layer has nothing to split. `joint`: for each of the
  // layer's options, the heaviest class is decided again before pricing (an embedding whose
  // best split depends on how the blocks meet it, and theirs on it).
  std::vector<char> reaches_later(ls.layers.size(), 0);  // weights read by a layer further on (a tied table)
  std::function<double(size_t, int, bool)> decide = [&](size_t li, int sweep, bool joint) -> double {
    const Layer& layer = ls.layers[li];
    // The layer's weights, grouped by the activation their first reader multiplies.
    std::map<std::pair<int32_t, int32_t>, std::vector<int32_t>> by_partner;
    std::vector<int32_t> free;  // its other parameters
    for (int32_t id : layer.forward) {
      if (!is_param[id] || fixed[id]) continue;
      const Node& p = g.node(id);
      // A weight is multiplied or looked up (a matrix product, an embedding), not added.
      if (p.outputs[0].rank() < 2 || ls.users[id].empty() || g.node(ls.users[id][0]).def->elementwise()) {
        free.push_back(id);
        continue;
      }
      const Node& reader = g.node(ls.users[id][0]);
      std::pair<int32_t, int32_t> partner{id, -1};
      for (auto& in : reader.inputs)
        if (in.node != id) {
          const Value root = storage_root(g, in);  // the same activation seen through views
          partner = {root.node, root.index};
        }
      by_partner[partner].push_back(id);
    }
    if (by_partner.empty() && free.empty()) return -1.0;
    std::vector<std::vector<int32_t>> groups;
    for (auto& [partner, ws] : by_partner) groups.push_back(ws);
    // What the layer's weights reach: its own nodes and those of every layer reading them,
    // and of the layer after each (which meets the placement they leave).
    std::set<int> touched{static_cast<int>(li)};
    for (auto& grp : groups)
      for (int32_t w : grp)
        for (int32_t u : ls.users[w])
          if (ls.layer_of[u] >= 0) touched.insert(ls.layer_of[u]);
    for (int l : std::set<int>(touched)) {
      if (l + 1 < static_cast<int>(ls.layers.size())) touched.insert(l + 1);
      reaches_later[li] |= l > static_cast<int>(li) + 1;
    }
    // Priced on their forward passes: the backward mirrors each collective (an all-reduce
    // for an all-reduce, a reduce-scatter for an all-gather) at about twice the compute, and
    // each parameter's update costs its replicated cost over the devices that split it.
    std::vector<int32_t> nodes;
    for (int l : touched) nodes.insert(nodes.end(), ls.layers[l].forward.begin(), ls.layers[l].forward.end());
    std::sort(nodes.begin(), nodes.end());
    std::vector<std::vector<int>> options;
    for (auto& grp : groups) {
      std::set<int> dims{-1};
      for (int32_t w : grp)
        for (int d = 0; d < g.node(w).outputs[0].rank(); ++d)
          if (g.node(w).outputs[0].shape[d] % c.tp == 0) dims.insert(d);
      options.emplace_back(dims.begin(), dims.end());
    }
    // A split applies to the weight and its counterparts in the class's other layers.
    auto set_dim = [&](int32_t p, int d) {
      for (int32_t q : counterparts(p)) k.tp_dims[q] = static_cast<int8_t>(d);
    };
    auto apply = [&](const std::vector<int>& pick) {
      for (size_t gi = 0; gi < groups.size(); ++gi)
        for (int32_t w : groups[gi]) {
          const int d = pick[gi];
          const bool fits = d >= 0 && d < g.node(w).outputs[0].rank() && g.node(w).outputs[0].shape[d] % c.tp == 0;
          set_dim(w, fits ? d : -1);
        }
    };
    // Parameters that are not weights are stored as their first reader slices them.
    auto settle = [&](GraphPlacement& gp) {
      bool changed = false;
      const int tp_axis = mesh.axis("tp");
      for (int32_t p : free) {
        int dim = -1, targets = 0;
        bool slices = true;
        for (const auto& r : gp.reshards) {
          if (r.value.node != p) continue;
          ++targets;
          for (const ReshardStep& st : r.steps) slices &= !st.op && st.axis == tp_axis;
          if (r.to[tp_axis].is_shard()) dim = r.to[tp_axis].dim;
        }
        if (targets == 1 && slices && dim >= 0 && k.tp_dims[p] != dim) {
          set_dim(p, dim);
          changed = true;
        }
      }
      if (changed) gp = place_graph(g, k, mesh, nodes, {}, {}, &base, &gp);
    };
    // A combination whose placements cannot be (a slice that no longer divides where another
    // split already cut the dim) is priced as never: the search goes on without it.
    auto price = [&] {
      for (int32_t p : free) set_dim(p, -1);
      std::optional<GraphPlacement> placed;
      try {
        placed = place_graph(g, k, mesh, nodes, {}, {}, &base, &scratch);
        settle(*placed);
      } catch (const Error&) {
        scratch = base;
        return std::numeric_limits<double>::infinity();
      }
      GraphPlacement& gp = *placed;
      const Spent s = seconds_of(g, ls, k, cluster, opt, mesh, gp, nodes);
      scratch = std::move(gp);
      double updates = 0;
      for (int l : touched)
        for (int32_t p : ls.layers[l].forward)
          if (is_param[p]) updates += update_s[p] / (k.tp_dims[p] >= 0 ? static_cast<double>(c.tp) : 1.0);
      return 3 * s.compute + 2 * s.comm + updates;
    };
    // The few best by that measure are priced again as the whole model's simulated step
    // (every pass, overlap of communication with compute).
    auto price_all = [&] {
      if (joint) {  // the heaviest class meets this option first
        const double t = decide(order.front(), sweep, false);
        if (t >= 0) return t;
      }
      try {
        settle_everywhere();
        return estimate_plan(profile_model(g, ls, k, cluster, opt), k, cluster, opt).step_time_s;
      } catch (const Error&) {
        return std::numeric_limits<double>::infinity();
      }
    };
    // Every combination (replicated first, so ties stay replicated); coordinate descent
    // where there are too many.
    std::vector<int> pick(groups.size(), 0), best_pick = pick;
    size_t combos = 1;
    for (auto& o : options) combos = std::min<size_t>(combos * o.size(), 1 << 20);
    auto as_dims = [&](const std::vector<int>& idx) {
      std::vector<int> d(idx.size());
      for (size_t i = 0; i < idx.size(); ++i) d[i] = options[i][static_cast<size_t>(idx[i])];
      return d;
    };
    double best = std::numeric_limits<double>::infinity();
    if (combos <= 729) {
      std::vector<std::pair<double, std::vector<int>>> scored;
      for (size_t n = 0; n < combos; ++n) {
        size_t rest = n;
        for (size_t i = 0; i < groups.size(); ++i) {
          pick[i] = static_cast<int>(rest % options[i].size());
          rest /= options[i].size();
        }
        apply(as_dims(pick));
        scored.push_back({price(), pick});
      }
      std::stable_sort(scored.begin(), scored.end(), [](auto& a, auto& b) { return a.first < b.first; });
      constexpr size_t kFinalists = 8;
      for (size_t i = 0; i < scored.size() && i < kFinalists; ++i) {
        apply(as_dims(scored[i].second));
        const double s = price_all();
        if (s < best * (1 - 1e-9)) best = s, best_pick = scored[i].second;
      }
    } else {
      apply(as_dims(pick));
      best = price();
      for (int sweep = 0; sweep < 3; ++sweep)
        for (size_t i = 0; i < groups.size(); ++i)
          for (int o = 0; o < static_cast<int>(options[i].size()); ++o) {
            std::vector<int> trial = best_pick;
            trial[i] = o;
            apply(as_dims(trial));
            const double s = price();
            if (s < best * (1 - 1e-9)) best = s, best_pick = trial;
          }
    }
    apply(as_dims(best_pick));
    base = settle_everywhere();
    if (joint) decide(order.front(), sweep, false);  // the heaviest class, meeting the option chosen
    return best;
  };
  for (int sweep = start.empty() ? 0 : 1; sweep < 2; ++sweep)
    for (size_t li : order) decide(li, sweep, sweep == 1 && li != order.front() && reaches_later[li]);
  // Parameters come before what trains them: the splits end at the last one.
  int32_t last = -1;
  for (int32_t id : g.parameters()) last = std::max(last, id);
  k.tp_dims.resize(static_cast<size_t>(last + 1));
  return k.tp_dims;
}

}  // namespace tessel::planner
