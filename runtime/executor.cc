#include "runtime/executor.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include "graph/error.h"
#include "graph/text.h"
#include "runtime/cpu_kernels.h"
#include "runtime/fusion.h"
#include "runtime/memory_plan.h"
#include "planner/layers.h"

namespace tessel::runtime {

using planner::Section;

namespace {
constexpr int64_t kAlign = 64;
void free_aligned(std::byte* p) { std::free(p); }

// A group call the communicator makes (a collective over more than one rank).
bool is_collective(const Node& n) {
  return n.def->collective && *n.def->collective != Collective::send_recv && n.attrs.get_i64s("ranks").size() > 1;
}
bool is_transfer(const Node& n) { return n.def->collective == Collective::send_recv; }


struct Ref {
  int32_t buf = -1;
  const TensorType* type = nullptr;
};
}  // namespace

struct Executor::Buffer {
  int64_t bytes = 0;
  bool persistent = false;
  int64_t first = INT64_MAX, last = -1;  // ticks of the step's op list
  std::string name;
  std::byte* data = nullptr;
  int32_t within = -1;  // a part of that buffer (a gradient in its bucket's block), at `offset`
  int64_t offset = 0;
};

struct Executor::Op {
  enum class Type : uint8_t { kernel, launch, wait, recv, send, accumulate, output } type = Type::kernel;
  const Node* node = nullptr;
  KernelFn fn = nullptr;
  FusedFn jit = nullptr;  // a fused node's compiled kernel
  const ops::FusedKernelDesc* desc = nullptr;
  std::vector<Ref> in, out;
  std::vector<TensorRef> in_t, out_t;
  std::vector<const float*> in_p;  // with jit
  std::vector<float*> out_p;
  int64_t task = -1;
  int64_t peer = -1, tag = -1;  // send / recv
  bool first = false, last = false, mean = false;  // accumulate / output
  double scale = 1;
  std::vector<int64_t> shift;  // kernel: KernelCtx::shift (a generated tensor's microbatch)
  double ms = 0;               // kernel, with ExecutorOptions::profile: time over all steps
  int64_t calls = 0;
  // For the timeline: the part of the step, microbatch, and whether it reruns a forward node.
  Section section = Section::forward;
  int32_t mb = 0;
  bool rerun = false;
  // launch: the next op waits for this task (nothing runs between them). When the comm stream
  // is idle then, the compute thread runs it itself (no hand-off, no wake-ups); ran_inline says
  // whether it did in the last step.
  bool blocking = false, ran_inline = false;
};

struct Executor::CommTask {
  Collective op = Collective::all_reduce;
  const Node* node = nullptr;  // the first node it serves, for errors
  std::vector<Ref> in, out;
  std::vector<TensorRef> in_t, out_t;
  ReduceOp reduce = ReduceOp::sum;
  int dim = 0, dim2 = 0;
  int64_t root = 0;
  std::vector<int64_t> ranks;
  Ref block;  // a bucket whose tensors lie side by side in one buffer: reduced as that one tensor
  TensorRef block_t;
  std::vector<std::string> results;  // reduced in place: the names of the values it computes
};

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The program after the fusion pass. Kernels never mix sections (a forward value the
// backward reads must be kept per microbatch; a gradient is accumulated between backward
// and apply) nor, under recomputation, layers or a layer's recomputed region and the rest.
std::unique_ptr<planner::RankProgram> fuse_program(const planner::RankProgram& p, planner::Recompute recompute,
                                                   Executor::JitReport& report, std::vector<std::vector<Value>>& values) {
  const auto t0 = std::chrono::steady_clock::now();
  const Graph& g = p.graph;
  FusionOptions fo;
  fo.key.assign(static_cast<size_t>(g.size()), 0);
  const bool recomputing = recompute != planner::Recompute::none;
  for (int32_t id = 0; id < g.size(); ++id) {
    const size_t u = static_cast<size_t>(id);
    const int64_t layer = recomputing ? p.layer.at(u) : -1;
    fo.key[u] = (static_cast<int64_t>(p.section.at(u)) * (int64_t{1} << 24) + (layer + 1)) * 2 +
                (recomputing && p.recompute.at(u) ? 1 : 0);
  }
  FusedGraph f = fuse(g, fo);
  auto out = std::make_unique<planner::RankProgram>(planner::RankProgram{
      p.rank, p.stage, p.coords, std::move(f.graph), p.output_placements, p.input_placements, p.variable_placements, {},
      p.schedule, {}, {}, {}, {}});
  for (size_t id = 0; id < f.source_node.size(); ++id) {
    const size_t src = static_cast<size_t>(f.source_node[id] >= 0 ? f.source_node[id] : f.members[id].back());
    out->section.push_back(p.section.at(src));
    out->layer.push_back(p.layer.at(src));
    out->recompute.push_back(p.recompute.at(src));
    out->microbatch_dim.push_back(p.microbatch_dim.empty() ? int8_t{-1} : p.microbatch_dim.at(src));
  }
  out->summed.assign(f.source_node.size(), 0);
  for (int32_t src = 0; src < g.size(); ++src)
    if (p.summed.at(static_cast<size_t>(src)))
      for (int o = 0; o < static_cast<int>(g.node(src).outputs.size()); ++o)
        if (const Value v = f.map(Value{src, o}); v.valid()) out->summed[static_cast<size_t>(v.node)] = 1;
  values = std::move(f.values);
  report.fused_nodes = f.fused_nodes;
  report.nodes_fused = f.nodes_fused;
  report.compile_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace

Executor::Executor(const planner::RankProgram& program, Communicator& comm, ExecutorOptions options)
    : Executor(nullptr, &program, &comm, options) {}
Executor::Executor(planner::RankProgram&& program, Communicator& comm, ExecutorOptions options)
    : Executor(std::make_unique<planner::RankProgram>(std::move(program)), nullptr, &comm, options) {}
Executor::Executor(const planner::RankProgram& program, ExecutorOptions options)
    : Executor(nullptr, &program, nullptr, options) {}
Executor::Executor(planner::RankProgram&& program, ExecutorOptions options)
    : Executor(std::make_unique<planner::RankProgram>(std::move(program)), nullptr, nullptr, options) {}

Executor::Executor(std::unique_ptr<planner::RankProgram> owned, const planner::RankProgram* program, Communicator* comm,
                   ExecutorOptions options)
    : own_program_(std::move(owned)), source_(own_program_ ? *own_program_ : *program),
      solo_(comm ? nullptr : std::make_unique<InProcessWorld>(1)),
      fused_(options.jit ? fuse_program(source_, options.recompute, jit_report_, fused_values_) : nullptr),
      program_(fused_ ? *fused_ : source_), graph_(program_.graph), comm_(comm ? *comm : solo_->rank(0)),
      options_(options) {
  if (!comm && program_.rank != 0)
    throw Error("rank " + std::to_string(program_.rank) + ": a program of a world of several ranks needs a communicator");
  if (options_.parallel) {
    parallel_ = options_.parallel;
  } else {
    serial_ = std::make_unique<SerialParallel>();
    parallel_ = serial_.get();
  }
  configure_blas_threads();
  build();
  if (solo_) {  // a world of one: nothing to talk to
    const Node* talks = !tasks_.empty() ? tasks_.front().node : nullptr;
    for (const Op& op : ops_)
      if (!talks && (op.type == Op::Type::send || op.type == Op::Type::recv)) talks = op.node;
    if (talks)
      throw Error(talks->where() + ": '" + talks->op + "' needs a world of several ranks (run the plan's programs with "
                  "LocalRun or under a launcher)");
  }
}

Executor::~Executor() {
  if (comm_thread_.joinable()) {
    stop_.store(true);
    launched_.fetch_add(1);
    launched_.notify_all();
    comm_thread_.join();
  }
}

// build() in named passes over shared state: the program is checked, sources get their
// buffers, the gradients to accumulate and the regions to recompute are found, outputs get
// buffers, the gradient collectives that can start early are found, and the schedule is
// walked into the op list (kernels, transfers, launches and waits, with buffer lifetimes).
struct Executor::Builder {
  Executor& x;
  const Graph& g;
  const planner::RankProgram& p;
  const std::vector<Section>& sec;
  int64_t m = 1;                // microbatches
  std::vector<int32_t> nodes;   // what the outputs and updates need, in order
  std::set<std::pair<int32_t, int32_t>> acc;  // backward values accumulated over microbatches
  // Recomputation: per node its layer, its recompute region (-1: none), whether it runs
  // again before its layer's backward; per layer the nodes that do, in order.
  std::vector<int> region, layer_of;
  std::vector<char> rerun_node;
  std::map<int, std::vector<int32_t>> rerun;
  static constexpr int64_t kRerun = int64_t{1} << 40;  // instance offset of recomputed values
  // Value instances: (root value, microbatch); the apply section's and accumulators are 0.
  std::map<std::tuple<int32_t, int32_t, int64_t>, int32_t> inst;
  std::map<std::pair<int32_t, int32_t>, std::vector<Value>> outputs_of;  // by the root of their value
  // Apply-section collectives that start during the last backward: inputs not final yet,
  // and per accumulated root the collectives waiting for it.
  std::map<int32_t, int> waiting;
  std::map<std::pair<int32_t, int32_t>, std::vector<int32_t>> readers;
  // The op list's events: the task writing each buffer, the last task waited for, the
  // last whose buffers' lifetimes reach the current op.
  std::map<int32_t, int64_t> pending;
  int64_t waited = -1, extended = -1;
  std::vector<std::vector<int32_t>> task_bufs;
  // Buckets of hoisted all-reduces, per (group, dtype), in the order they open.
  struct Bucket {
    std::vector<int64_t> ranks;
    DType dtype;
    CommTask task;
    int64_t bytes = 0;
  };
  std::vector<Bucket> open;
  // Forward nodes run after the last backward instead (see find_deferred), and their
  // (node, microbatch) in the order they were met.
  std::vector<char> deferred;
  std::vector<std::pair<int32_t, int64_t>> later;
  std::vector<int32_t> backward_order;  // the backward section's nodes, as order_backward() runs them

  explicit Builder(Executor& e) : x(e), g(e.graph_), p(e.program_), sec(e.program_.section) {}

  std::string rank() const { return "rank " + std::to_string(p.rank); }
  Value root(Value v) const { return storage_root(g, v); }
  bool is_acc(Value r) const { return acc.count({r.node, r.index}) > 0; }
  // A value that is one microbatch's part of a sum over the batch adds up over microbatches;
  // any other the apply section or an output reads is averaged (each microbatch's is alike).
  bool summed(const Node& n) const {
    return static_cast<int32_t>(p.summed.size()) == g.size() && p.summed[static_cast<size_t>(n.id)];
  }
  int32_t new_buffer(int64_t bytes, bool persistent, std::string name) {
    x.buffers_.push_back(Buffer{bytes, persistent, INT64_MAX, -1, std::move(name), nullptr});
    return static_cast<int32_t>(x.buffers_.size()) - 1;
  }

  void check_program() {
    if (static_cast<int32_t>(sec.size()) != g.size())
      throw Error(rank() + ": the program has " + std::to_string(sec.size()) + " section marks for " +
                  std::to_string(g.size()) + " nodes");
    if (p.schedule.empty()) throw Error(rank() + ": the program has no schedule");
    m = 0;
    for (auto& st : p.schedule)
      if (st.section == Section::forward) ++m;
    if (m < 1) throw Error(rank() + ": the schedule runs no forward pass");
    x.microbatches_ = m;
    nodes = needed_nodes(g);
  }

  // Variables and constants get a buffer, inputs one per microbatch.
  void source_buffers() {
    x.persistent_.assign(g.size(), -1);
    x.input_slots_.assign(g.size(), {});
    x.output_buffer_.assign(g.size(), -1);
    for (int32_t id : nodes) {
      const Node& n = g.node(id);
      if (n.def->kind == OpKind::variable || n.def->kind == OpKind::constant)
        x.persistent_[id] = new_buffer(n.outputs[0].bytes(), true, n.name);
      else if (n.def->kind == OpKind::input)
        for (int64_t i = 0; i < m; ++i)
          x.input_slots_[id].push_back(
              new_buffer(n.outputs[0].bytes(), true, n.name + (m > 1 ? " (microbatch " + std::to_string(i) + ")" : "")));
    }
  }

  // Backward values the apply section reads: accumulated over microbatches.
  void find_accumulated() {
    auto add = [&](Value v) {
      const Value r = root(v);
      if (sec[r.node] == Section::backward && g.node(r.node).def->kind == OpKind::compute) acc.insert({r.node, r.index});
    };
    for (int32_t id : nodes)
      if (sec[id] == Section::apply)
        for (auto& in : g.node(id).inputs) add(in);
    for (auto& u : g.updates()) add(u.value);
  }

  // A forward value that a layer's backward reads inside the layer's recompute region (the
  // whole layer, or only its attention core) is not kept from the forward pass: the region
  // runs again for each microbatch just before that layer's backward first needs it. What
  // enters the region (the layer's input, other layers' values, received activations) is kept.
  void mark_recomputation() {
    region.assign(g.size(), -1);
    layer_of.assign(g.size(), -1);
    rerun_node.assign(g.size(), 0);
    if (x.options_.recompute == planner::Recompute::none) return;
    if (static_cast<int32_t>(p.layer.size()) != g.size() || static_cast<int32_t>(p.recompute.size()) != g.size())
      throw Error(rank() + ": the program has no layer marks for recomputation");
    for (int32_t id : nodes) {
      const Node& n = g.node(id);
      layer_of[id] = p.layer[static_cast<size_t>(id)];
      if (layer_of[id] < 0 || sec[id] != Section::forward || n.def->kind != OpKind::compute || is_transfer(n) ||
          !p.recompute[static_cast<size_t>(id)])
        continue;
      region[id] = layer_of[id];
    }
    for (int32_t id : nodes) {
      if (sec[id] != Section::backward || layer_of[id] < 0) continue;
      for (auto& in : g.node(id).inputs) {
        const Value r = root(in);
        if (region[r.node] == layer_of[id]) rerun_node[r.node] = 1;
      }
    }
    for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {  // and what they are computed from, in the region
      if (!rerun_node[*it]) continue;
      for (auto& in : g.node(*it).inputs)
        if (region[in.node] == region[*it]) rerun_node[in.node] = 1;
    }
    for (int32_t id : nodes)
      if (rerun_node[id] && !g.node(id).def->view) rerun[region[id]].push_back(id);
  }

  // The buffer a reader in section `reader`, microbatch `mb`, reads v from. `layer` >= 0:
  // the reader belongs to that layer's backward (or its rerun), which reads the layer's
  // recomputed values.
  Ref resolve(Value v, Section reader, int64_t mb, int layer = -1) {
    const Value r = root(v);
    const TensorType* t = &g.type(v);
    const Node& rn = g.node(r.node);
    if (x.persistent_[r.node] >= 0) return Ref{x.persistent_[r.node], t};
    if (rn.def->kind == OpKind::input)
      return Ref{x.input_slots_[r.node][static_cast<size_t>(reader == Section::apply ? m - 1 : mb)], t};
    const Section s = sec[r.node];
    int64_t i = 0;
    if (s == Section::forward) i = reader == Section::apply ? m - 1 : mb;
    else if (s == Section::backward) i = reader == Section::apply ? 0 : mb;
    const bool again = reader == Section::backward && layer >= 0 && rerun_node[r.node] && region[r.node] == layer;
    auto [it, fresh] = inst.try_emplace({r.node, r.index, i + (again ? kRerun : 0)}, -1);
    if (fresh) {
      std::string name = rn.name;
      if (rn.outputs.size() > 1) name += ":" + std::to_string(r.index);
      if (m > 1 && s != Section::apply) name += " (microbatch " + std::to_string(i) + ")";
      if (again) name += " (recomputed)";
      it->second = new_buffer(rn.outputs[static_cast<size_t>(r.index)].bytes(), false, name);
      if (!again && i == (s == Section::forward ? m - 1 : 0)) x.read_by_apply_[{r.node, r.index}] = it->second;
    }
    return Ref{it->second, t};
  }

  void output_buffers() {
    for (auto& o : g.outputs()) {
      if (g.node(o.value.node).op == "send") continue;
      const Value r = root(o.value);
      if (g.node(r.node).def->kind != OpKind::compute) continue;  // variables and inputs are read directly
      if (x.output_buffer_[o.value.node] < 0)
        x.output_buffer_[o.value.node] = new_buffer(g.type(o.value).bytes(), true, o.name);
      outputs_of[{r.node, r.index}].push_back(o.value);
    }
  }

  // Apply-section collectives whose inputs are all accumulated gradients (or stored
  // variables): started during the last backward, as soon as their inputs are final.
  void find_early_collectives() {
    for (int32_t id : nodes) {
      const Node& n = g.node(id);
      if (sec[id] != Section::apply || !is_collective(n)) continue;
      std::set<std::pair<int32_t, int32_t>> need;
      bool ok = true;
      for (auto& in : n.inputs) {
        const Value r = root(in);
        if (is_acc(r)) need.insert({r.node, r.index});
        else if (x.persistent_[r.node] < 0) ok = false;
      }
      if (!ok || need.empty()) continue;
      waiting[id] = static_cast<int>(need.size());
      for (auto& k : need) readers[k].push_back(id);
    }
  }

  // The backward's nodes in a dependency order that serves what others wait for first:
  // what leads to a send (the previous pipeline stage waits for it), then each node that
  // finishes a gradient an early collective reduces (a weight's gradient before the
  // gradient of that layer's input, which the backward goes on with: the bucket starts a
  // product earlier), then the rest, in program order within each class.
  void order_backward() {
    std::vector<int32_t> ids;
    std::vector<int> at(g.size(), -1);
    for (int32_t id : nodes)
      if (sec[id] == Section::backward) at[id] = static_cast<int>(ids.size()), ids.push_back(id);
    std::vector<char> to_send(g.size(), 0);
    std::vector<std::vector<int32_t>> readers_of(g.size());
    std::vector<int> deps(g.size(), 0);
    for (int32_t id : ids)
      for (auto& in : g.node(id).inputs)
        if (at[in.node] >= 0) readers_of[in.node].push_back(id), ++deps[id];
    for (auto it = ids.rbegin(); it != ids.rend(); ++it) {
      to_send[*it] = g.node(*it).op == "send";
      for (int32_t r : readers_of[*it]) to_send[*it] = to_send[*it] || to_send[r];
    }
    // With recomputation a layer's rerun runs before its first backward node: one that needs
    // nothing from the layers after it (a statistic of the layer's own values) would run it,
    // and keep its values, while those layers' backward still runs. Such nodes wait for the
    // rest (the stage's last layer, where the backward starts, excepted).
    std::vector<char> waits_for_others(g.size(), 0), early(g.size(), 0);
    if (x.options_.recompute != planner::Recompute::none) {
      int last_layer = -1;
      for (int32_t id : ids) last_layer = std::max(last_layer, layer_of[id]);
      for (int32_t id : ids) {
        for (auto& in : g.node(id).inputs)
          if (at[in.node] >= 0)
            waits_for_others[id] = waits_for_others[id] || waits_for_others[in.node] || layer_of[in.node] != layer_of[id];
        if (is_transfer(g.node(id))) waits_for_others[id] = 1;
        early[id] = !waits_for_others[id] && layer_of[id] >= 0 && layer_of[id] < last_layer;
      }
    }
    auto rank_of = [&](int32_t id) {
      if (early[id]) return 3;
      if (to_send[id]) return 0;
      for (int o = 0; o < static_cast<int>(g.node(id).outputs.size()); ++o)
        if (readers.count({id, o})) return 1;
      return 2;
    };
    std::set<std::pair<int, int>> ready;  // (class, program position)
    for (int32_t id : ids)
      if (deps[id] == 0) ready.insert({rank_of(id), at[id]});
    while (!ready.empty()) {
      const int32_t id = ids[static_cast<size_t>(ready.begin()->second)];
      ready.erase(ready.begin());
      backward_order.push_back(id);
      for (int32_t r : readers_of[id])
        if (--deps[r] == 0) ready.insert({rank_of(r), at[r]});
    }
  }

  // Forward nodes that wait for a collective and whose results only outputs read (the
  // loss after its all-reduce over the data-parallel group): they run after the last
  // backward, so the compute stream does not stop mid-step for a collective that the
  // gradients never need (a wait that, between processes, also waits out the other ranks'
  // lag and the round trips of the call).
  void find_deferred() {
    deferred.assign(g.size(), 0);
    std::vector<char> free(g.size(), 0);  // nothing but outputs and other such nodes reads it
    std::vector<std::vector<int32_t>> readers_of(g.size());
    for (int32_t id : nodes)
      for (auto& in : g.node(id).inputs) readers_of[in.node].push_back(id);
    std::set<int32_t> updated;
    for (auto& u : g.updates()) updated.insert(u.value.node);
    for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
      const Node& n = g.node(*it);
      bool ok = sec[*it] == Section::forward && !is_collective(n) && !is_transfer(n) && !rerun_node[*it] &&
                region[*it] < 0 && !updated.count(*it);
      for (int32_t r : readers_of[*it]) ok = ok && free[r];
      free[*it] = ok;
    }
    for (int32_t id : nodes) {
      if (!free[id] || g.node(id).def->kind != OpKind::compute || g.node(id).def->view) continue;
      for (auto& in : g.node(id).inputs) {
        const Value r = root(in);
        deferred[id] = deferred[id] || is_collective(g.node(r.node)) || deferred[r.node];
      }
    }
  }
  void run_deferred() {
    for (auto [id, mb] : later) {
      run_node(g.node(id), Section::forward, mb, -1);
      after_node(g.node(id), Section::forward, mb, -1);
    }
    later.clear();
  }

  // ---- the op list of one step, with lifetimes (tick = op index) and events ----

  void touch(int32_t b) {
    Buffer& buf = x.buffers_[static_cast<size_t>(b)];
    const int64_t t = static_cast<int64_t>(x.ops_.size());
    buf.first = std::min(buf.first, t);
    buf.last = std::max(buf.last, t);
  }
  void emit_wait(int64_t task) {
    if (task <= waited) return;
    Op w;
    w.type = Op::Type::wait;
    w.task = task;
    for (int64_t k = extended + 1; k <= task; ++k)
      for (int32_t b : task_bufs[static_cast<size_t>(k)]) touch(b);
    extended = std::max(extended, task);
    x.ops_.push_back(std::move(w));
    waited = task;
  }
  void emit(Op op) {
    for (auto& r : op.in)
      if (auto it = pending.find(r.buf); it != pending.end() && it->second > waited) emit_wait(it->second);
    for (auto& r : op.in) touch(r.buf);
    for (auto& r : op.out) touch(r.buf);
    x.ops_.push_back(std::move(op));
  }
  void launch(CommTask t) {
    const int64_t k = static_cast<int64_t>(x.tasks_.size());
    std::vector<int32_t> bufs;
    for (auto& r : t.in) bufs.push_back(r.buf);
    for (auto& r : t.out) bufs.push_back(r.buf), pending[r.buf] = k;
    task_bufs.push_back(bufs);
    for (int32_t b : bufs) touch(b);
    Op op;
    op.type = Op::Type::launch;
    op.task = k;
    op.node = t.node;
    x.tasks_.push_back(std::move(t));
    x.ops_.push_back(std::move(op));
  }
  CommTask task_for(const Node& n, Section s, int64_t mb, int layer = -1) {
    CommTask t;
    t.op = *n.def->collective;
    t.node = &n;
    t.in.push_back(resolve(n.inputs[0], s, mb, layer));
    t.out.push_back(resolve(n.out(), s, mb, layer));
    t.ranks = n.attrs.get_i64s("ranks");
    const std::string red = n.attrs.get_str_or("reduce", "sum");
    t.reduce = red == "max" ? ReduceOp::max : ReduceOp::sum;
    const int r = g.type(n.inputs[0]).rank();
    auto norm = [&](int64_t d) { return static_cast<int>(d < 0 ? d + r : d); };
    if (n.attrs.has("dim")) t.dim = norm(n.attrs.get_i64("dim"));
    if (n.attrs.has("split_dim")) t.dim = norm(n.attrs.get_i64("split_dim")), t.dim2 = norm(n.attrs.get_i64("concat_dim"));
    if (n.attrs.has("root")) t.root = n.attrs.get_i64("root");
    return t;
  }

  void flush(Bucket& b) {
    if (!b.task.in.empty()) launch(std::move(b.task));
    b.task = CommTask{};
    b.bytes = 0;
  }
  // An early collective whose inputs are final: launched, or (a sum all-reduce) put in its bucket.
  void hoist(int32_t id) {
    const Node& n = g.node(id);
    CommTask t = task_for(n, Section::apply, 0);
    const int64_t bytes = g.type(n.inputs[0]).bytes();
    if (t.op != Collective::all_reduce || t.reduce != ReduceOp::sum) {
      launch(std::move(t));
      return;
    }
    const DType dt = g.type(n.inputs[0]).dtype;
    auto it = std::find_if(open.begin(), open.end(), [&](const Bucket& b) { return b.ranks == t.ranks && b.dtype == dt; });
    if (it == open.end()) {
      open.push_back(Bucket{t.ranks, dt, {}, 0});
      it = open.end() - 1;
    }
    if (it->bytes > 0 && it->bytes + bytes > x.options_.bucket_bytes) flush(*it);
    if (it->task.in.empty()) {
      it->task.op = Collective::all_reduce;
      it->task.node = &n;
      it->task.ranks = t.ranks;
    }
    it->task.in.push_back(t.in[0]);
    it->task.out.push_back(t.out[0]);
    it->bytes += bytes;
  }
  void finished(Value r) {  // an accumulated gradient is final
    auto it = readers.find({r.node, r.index});
    if (it == readers.end()) return;
    for (int32_t c : it->second)
      if (--waiting[c] == 0) hoist(c);
  }

  // One node's work: a kernel, a transfer, or a collective on the communication stream.
  void run_node(const Node& n, Section S, int64_t mb, int layer) {
    if (is_collective(n)) {
      launch(task_for(n, S, mb, layer));
      return;
    }
    Op op;
    op.node = &n;
    op.section = S;
    op.mb = static_cast<int32_t>(mb);
    op.rerun = S == Section::backward && sec[static_cast<size_t>(n.id)] == Section::forward;
    if (is_transfer(n)) {
      op.type = n.op == "recv" ? Op::Type::recv : Op::Type::send;
      op.peer = n.attrs.get_i64("peer");
      op.tag = n.attrs.get_i64("tag");
    } else {
      op.fn = cpu_kernel_for(n, x.options_.use_blas);
    }
    if (mb > 0 && n.attrs.has("global_shape") && static_cast<int32_t>(p.microbatch_dim.size()) == g.size())
      if (const int d = p.microbatch_dim[static_cast<size_t>(n.id)]; d >= 0) {
        op.shift.assign(n.outputs[0].shape.size(), 0);
        op.shift[static_cast<size_t>(d)] = mb * n.outputs[0].shape[static_cast<size_t>(d)];
      }
    if (n.op == "fused") {  // compiled by compile_kernels()
      auto& [desc, fn] = x.kernels_[n.id];
      if (!desc) desc = std::make_unique<ops::FusedKernelDesc>(ops::FusedKernelDesc::from_attrs(n.attrs));
      op.desc = desc.get();
    }
    for (auto& in : n.inputs) op.in.push_back(resolve(in, S, mb, layer));
    if (n.op != "send")
      for (int o = 0; o < static_cast<int>(n.outputs.size()); ++o) op.out.push_back(resolve(n.out(o), S, mb, layer));
    emit(std::move(op));
  }

  // After node n ran for microbatch mb: its gradients are accumulated (the last
  // microbatch's makes them final), its outputs copied or averaged into their buffers.
  void after_node(const Node& n, Section S, int64_t mb, int layer) {
    for (int o = 0; o < static_cast<int>(n.outputs.size()); ++o) {
      const Value v = n.out(o);
      if (S == Section::backward && is_acc(v)) {
        if (m > 1 && mb > 0) {
          Op a;
          a.type = Op::Type::accumulate;
          a.node = &n;
          a.section = Section::backward;
          a.mb = static_cast<int32_t>(mb);
          a.in.push_back(resolve(v, S, mb, layer));
          a.out.push_back(resolve(v, Section::apply, 0));
          a.in.push_back(a.out[0]);
          a.last = mb == m - 1;
          a.scale = summed(n) ? 1.0 : 1.0 / static_cast<double>(m);
          emit(std::move(a));
        }
        if (mb == m - 1) finished(v);
      }
      auto oit = outputs_of.find({v.node, v.index});
      if (oit == outputs_of.end()) continue;
      for (const Value& ov : oit->second) {
        Op out;
        out.type = Op::Type::output;
        out.node = &n;
        out.section = S;
        out.mb = static_cast<int32_t>(mb);
        out.in.push_back(resolve(ov, S, mb, layer));
        out.out.push_back(Ref{x.output_buffer_[ov.node], &g.type(ov)});
        out.mean = S == Section::forward && m > 1 && g.type(ov).numel() == 1 &&
                   (g.type(ov).dtype == DType::f32 || g.type(ov).dtype == DType::f64);
        out.first = mb == 0;
        out.last = mb == m - 1;
        out.scale = summed(g.node(ov.node)) ? 1.0 : 1.0 / static_cast<double>(m);
        emit(std::move(out));
      }
    }
  }

  void walk_schedule() {
    for (const planner::ScheduleStep& st : p.schedule) {
      const Section S = st.section;
      const int64_t mb = S == Section::apply ? 0 : st.microbatch;
      std::set<int> rerun_done;
      for (int32_t id : S == Section::backward ? backward_order : nodes) {
        if (sec[id] != S) continue;
        const Node& n = g.node(id);
        if (n.def->kind != OpKind::compute || n.def->view) continue;
        if (S == Section::apply && waiting.count(id)) continue;  // started during the last backward
        if (S == Section::forward && deferred[id]) {
          later.emplace_back(id, mb);
          continue;
        }
        const int layer = S == Section::backward ? layer_of[id] : -1;
        if (layer >= 0 && rerun.count(layer) && rerun_done.insert(layer).second)
          for (int32_t f : rerun[layer]) run_node(g.node(f), Section::backward, mb, layer);
        run_node(n, S, mb, layer);
        after_node(n, S, mb, layer);
      }
      if (S == Section::backward && mb == m - 1) {
        for (Bucket& b : open) flush(b);
        run_deferred();
      }
    }
    run_deferred();  // a program without a backward
    for (auto& [id, left] : waiting)
      if (left > 0)
        throw Error(g.node(id).where() + ": " + rank() + ": a gradient collective whose inputs the backward never finished");
    if (!x.tasks_.empty()) emit_wait(static_cast<int64_t>(x.tasks_.size()) - 1);
  }

  void updates() {
    for (auto& u : g.updates()) {
      const Ref v = resolve(u.value, Section::apply, 0);
      touch(v.buf);
      x.updates_.push_back({x.persistent_[u.variable], v.buf});
    }
  }
};

void Executor::build() {
  Builder b(*this);
  b.check_program();
  b.source_buffers();
  b.find_accumulated();
  b.mark_recomputation();
  b.output_buffers();
  b.find_early_collectives();
  b.find_deferred();
  b.order_backward();
  b.walk_schedule();
  b.updates();
  write_updates_in_place();
  reduce_buckets_in_place();
  compile_kernels();
}

void Executor::compile_kernels() {
  for (auto& [id, k] : kernels_)
    k.second = compile_and_count(*k.first, jit_report_.compiled, jit_report_.disk_hits, jit_report_.compile_s);
  jit_report_.kernels = static_cast<int64_t>(kernels_.size());
  for (Op& op : ops_)
    if (op.desc) op.jit = kernels_.at(op.node->id).second;
}

// An update's new value is written straight into its variable, when the one thing that
// writes it is a fused kernel computing it element by element from the variable (the
// kernel writes over the variable, FusedOutput::over) or a collective (ZeRO's all-gather of
// the updated shards), and from that write on nothing reads the variable (no op after it,
// no collective not yet finished). The value's buffer and its copy after the step go away.
void Executor::write_updates_in_place() {
  const Graph& g = graph_;
  auto has = [](const std::vector<Ref>& refs, int32_t b) {
    return std::any_of(refs.begin(), refs.end(), [&](const Ref& r) { return r.buf == b; });
  };
  for (size_t k = 0; k < updates_.size(); ++k) {
    const Update& u = g.updates()[k];
    const auto [var, val] = updates_[k];
    if (var < 0 || var == val || buffers_[static_cast<size_t>(val)].persistent) continue;
    int64_t at = -1, writers = 0, task = -1, runs = 0;  // at: the op that writes (a kernel, or a launch)
    for (size_t i = 0; i < ops_.size(); ++i) {
      const Op& op = ops_[i];
      const bool launch = op.type == Op::Type::launch && has(tasks_[static_cast<size_t>(op.task)].out, val);
      if (has(op.out, val) || launch) ++writers, at = static_cast<int64_t>(i), task = launch ? op.task : -1;
      if (op.type == Op::Type::kernel && op.node && op.node->id == u.value.node) ++runs;
      if (has(op.out, var)) writers = -1;  // something else writes the variable
    }
    if (writers != 1) continue;
    ops::FusedKernelDesc* d = nullptr;
    int over = -1;
    if (task < 0) {  // a kernel: a fused one that runs once a step
      const Op& w = ops_[static_cast<size_t>(at)];
      if (w.type != Op::Type::kernel || !w.desc || w.node->id != u.value.node || runs != 1) continue;
      d = kernels_.at(w.node->id).first.get();
      over = update_over_input(g, *w.node, *d, u.value.index, u.variable);
      if (over < 0) continue;
    } else if (has(tasks_[static_cast<size_t>(task)].in, var)) {
      continue;
    }
    int64_t waited = -1;  // collectives finished before the write (they run in launch order)
    for (int64_t i = 0; i < at; ++i)
      if (ops_[static_cast<size_t>(i)].type == Op::Type::wait) waited = std::max(waited, ops_[static_cast<size_t>(i)].task);
    if (task >= 0) waited = std::max(waited, task - 1);
    bool ok = true;
    for (size_t i = static_cast<size_t>(at) + 1; ok && i < ops_.size(); ++i) ok = !has(ops_[i].in, var);
    for (size_t t = 0; ok && t < tasks_.size(); ++t)
      ok = !has(tasks_[t].out, var) && (!has(tasks_[t].in, var) || static_cast<int64_t>(t) <= waited);
    if (!ok) continue;
    if (d) d->outputs[static_cast<size_t>(u.value.index)].over = over;
    ++jit_report_.updates_in_place;
    for (Op& op : ops_)
      for (auto* refs : {&op.in, &op.out})
        for (Ref& r : *refs)
          if (r.buf == val) r.buf = var;
    for (CommTask& t : tasks_)
      for (auto* refs : {&t.in, &t.out})
        for (Ref& r : *refs)
          if (r.buf == val) r.buf = var;
    Buffer& x = buffers_[static_cast<size_t>(val)];
    x.bytes = 0, x.first = INT64_MAX, x.last = -1;
    for (auto& [v2, x2] : updates_)
      if (x2 == val) x2 = var;
    for (auto& [v2, x2] : read_by_apply_)
      if (x2 == val) x2 = var;
  }
}

// A gradient all-reduce runs in place when nothing reads its input once it is launched:
// the reduced gradient is written where the backward left it (no copy into the output),
// and a bucket's gradients are laid out side by side in one block of the arena, 64-byte
// aligned, that the engine reduces as one tensor (no packing into a staging buffer and
// back: two copies of every gradient a step on the Gloo and MPI engines). Floating-point
// buckets only: the alignment gaps between gradients are reduced too, and a sum of stale
// floats there is harmless where one of stale integers could overflow.
void Executor::reduce_buckets_in_place() {
  auto uses = [](const std::vector<Ref>& refs, int32_t b) {
    return std::any_of(refs.begin(), refs.end(), [&](const Ref& r) { return r.buf == b; });
  };
  for (size_t k = 0; k < tasks_.size(); ++k) {
    CommTask& t = tasks_[k];
    if (t.op != Collective::all_reduce || t.reduce != ReduceOp::sum || t.in.empty()) continue;
    const DType dt = t.in[0].type->dtype;
    if (dt != DType::f32 && dt != DType::f64) continue;
    int64_t launch = -1;
    for (size_t i = 0; i < ops_.size() && launch < 0; ++i)
      if (ops_[i].type == Op::Type::launch && ops_[i].task == static_cast<int64_t>(k)) launch = static_cast<int64_t>(i);
    bool ok = launch >= 0;
    std::set<int32_t> seen;
    for (size_t j = 0; ok && j < t.in.size(); ++j) {
      const int32_t in = t.in[j].buf, out = t.out[j].buf;
      const Buffer &bi = buffers_[static_cast<size_t>(in)], &bo = buffers_[static_cast<size_t>(out)];
      ok = !bi.persistent && !bo.persistent && bi.within < 0 && bo.within < 0 && bi.bytes == bo.bytes &&
           seen.insert(in).second && (in == out || seen.insert(out).second);
      for (size_t i = static_cast<size_t>(launch) + 1; ok && i < ops_.size(); ++i)
        ok = !uses(ops_[i].in, in) && !uses(ops_[i].out, in) && !uses(ops_[i].out, out);
      for (size_t u = 0; ok && u < tasks_.size(); ++u)
        if (u != k)
          for (const int32_t b : {in, out})
            ok = ok && !uses(tasks_[u].in, b) && !uses(tasks_[u].out, b);
      for (auto& [var, val] : updates_) ok = ok && var != in && var != out;
    }
    if (!ok) continue;
    for (const Ref& r : t.out) t.results.push_back(buffers_[static_cast<size_t>(r.buf)].name);
    for (size_t j = 0; j < t.in.size(); ++j) {
      const int32_t in = t.in[j].buf, out = t.out[j].buf;
      if (in == out) continue;
      auto rename = [&](std::vector<Ref>& refs) {
        for (Ref& r : refs)
          if (r.buf == out) r.buf = in;
      };
      for (Op& op : ops_) rename(op.in), rename(op.out);
      for (CommTask& c : tasks_) rename(c.in), rename(c.out);
      for (auto& [var, val] : updates_)
        if (val == out) val = in;
      for (auto& [v, b] : read_by_apply_)
        if (b == out) b = in;
      Buffer &bi = buffers_[static_cast<size_t>(in)], &bo = buffers_[static_cast<size_t>(out)];
      bi.first = std::min(bi.first, bo.first);
      bi.last = std::max(bi.last, bo.last);
      bo.bytes = 0, bo.first = INT64_MAX, bo.last = -1;
    }
    if (t.in.size() == 1) continue;
    Buffer block;
    block.name = "bucket of " + std::to_string(t.in.size()) + " gradients (" + buffers_[static_cast<size_t>(t.in[0].buf)].name +
                 ", ...)";
    for (const Ref& r : t.in) {
      Buffer& b = buffers_[static_cast<size_t>(r.buf)];
      b.within = static_cast<int32_t>(buffers_.size());
      b.offset = block.bytes;
      block.bytes += (b.bytes + kAlign - 1) / kAlign * kAlign;
      block.first = std::min(block.first, b.first);
      block.last = std::max(block.last, b.last);
    }
    t.block = Ref{static_cast<int32_t>(buffers_.size()),
                  &block_types_.emplace_back(TensorType{dt, {block.bytes / static_cast<int64_t>(dtype_size(dt))}})};
    buffers_.push_back(std::move(block));
  }
}

void Executor::initialize(int64_t capacity_bytes) {
  if (initialized_) throw Error("Executor::initialize() called twice");
  {
    // Every group this rank's collectives use, made now in one order all ranks share.
    std::set<std::vector<int64_t>> groups;
    for (const Node& n : graph_.nodes())
      if (n.attrs.has("ranks") && n.attrs.get_i64s("ranks").size() > 1) groups.insert(n.attrs.get_i64s("ranks"));
    const std::vector<std::vector<int64_t>> ordered(groups.begin(), groups.end());
    comm_.connect_groups(ordered);
  }
  {
    std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> sends;  // (peer, tag) -> (bytes, count)
    for (const Op& op : ops_)
      if (op.type == Op::Type::send) {
        auto& [bytes, count] = sends[{op.peer, op.tag}];
        bytes = std::max(bytes, op.node->inputs.empty() ? 0 : graph_.type(op.node->inputs[0]).bytes());
        ++count;
      }
    for (auto& [key, v] : sends) comm_.reserve_sends(key.first, key.second, v.first, v.second);
  }
  std::vector<BufferLifetime> life;
  std::vector<size_t> in_arena;
  memory_ = RankMemory{};
  for (size_t b = 0; b < buffers_.size(); ++b) {
    Buffer& x = buffers_[b];
    if (x.within >= 0) continue;  // placed with its block
    if (x.persistent) {
      memory_.persistent_bytes += (std::max<int64_t>(x.bytes, 1) + kAlign - 1) / kAlign * kAlign;
      continue;
    }
    if (x.first == INT64_MAX) x.first = x.last = 0;
    life.push_back(BufferLifetime{x.bytes, x.first, x.last});
    in_arena.push_back(b);
  }
  const MemoryPlan plan = plan_memory(life, kAlign);
  memory_.arena_bytes = plan.arena_bytes;
  std::vector<size_t> order(buffers_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::erase_if(order, [&](size_t b) { return buffers_[b].within >= 0; });  // counted in their block
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return buffers_[a].bytes > buffers_[b].bytes; });
  for (size_t i = 0; i < std::min<size_t>(8, order.size()); ++i)
    memory_.largest.push_back({buffers_[order[i]].name, buffers_[order[i]].bytes});
  if (capacity_bytes > 0 && memory_.total() > capacity_bytes) {
    std::string top;
    for (size_t i = 0; i < std::min<size_t>(5, memory_.largest.size()); ++i)
      top += "\n  " + memory_.largest[i].name + ": " + bytes_str(memory_.largest[i].bytes);
    throw Error("rank " + std::to_string(program_.rank) + " (stage " + std::to_string(program_.stage) + ") needs " +
                bytes_str(memory_.total()) + " (arena " + bytes_str(memory_.arena_bytes) + " + variables, inputs and outputs " +
                bytes_str(memory_.persistent_bytes) + "), more than the device's " + bytes_str(capacity_bytes) +
                " by " + bytes_str(memory_.total() - capacity_bytes) + "; largest buffers:" + top);
  }
  auto allocate = [&](int64_t bytes) {
    const int64_t rounded = std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    auto* p = static_cast<std::byte*>(std::aligned_alloc(kAlign, static_cast<size_t>(rounded)));
    if (!p) throw Error("rank " + std::to_string(program_.rank) + ": cannot allocate " + bytes_str(bytes));
    std::memset(p, 0, static_cast<size_t>(rounded));
    owned_.emplace_back(p, free_aligned);
    return p;
  };
  std::byte* arena = plan.arena_bytes > 0 ? allocate(plan.arena_bytes) : nullptr;
  for (size_t i = 0; i < in_arena.size(); ++i) buffers_[in_arena[i]].data = arena + plan.offsets[i];
  for (Buffer& x : buffers_)
    if (x.persistent) x.data = allocate(x.bytes);
  for (Buffer& x : buffers_)
    if (x.within >= 0) x.data = buffers_[static_cast<size_t>(x.within)].data + x.offset;
  auto tensor = [&](const Ref& r) {
    return TensorRef{buffers_[static_cast<size_t>(r.buf)].data, r.type->dtype, r.type->shape, r.type->numel()};
  };
  for (Op& op : ops_) {
    for (auto& r : op.in) op.in_t.push_back(tensor(r));
    for (auto& r : op.out) op.out_t.push_back(tensor(r));
    if (op.desc) {
      for (auto& t : op.in_t) op.in_p.push_back(t.as<const float>());
      for (auto& t : op.out_t) op.out_p.push_back(t.as<float>());
    }
  }
  for (CommTask& t : tasks_) {
    for (auto& r : t.in) t.in_t.push_back(tensor(r));
    for (auto& r : t.out) t.out_t.push_back(tensor(r));
    if (t.block.buf >= 0) t.block_t = tensor(t.block);
  }
  // Variables and constants: stored data, else the initializer (which draws by global
  // element index, so a shard holds what the whole tensor holds there).
  const KernelCtx ctx{parallel_, options_.seed, {}};
  for (int32_t id = 0; id < graph_.size(); ++id) {
    if (persistent_[id] < 0) continue;
    const Node& n = graph_.node(id);
    TensorRef out{buffers_[static_cast<size_t>(persistent_[id])].data, n.outputs[0].dtype, n.outputs[0].shape,
                  n.outputs[0].numel()};
    if (const auto* d = graph_.data(id)) {
      if (!d->empty()) std::memcpy(out.data, d->data(), d->size());
    } else {
      n.def->kernel(n, {}, std::span<const TensorRef>(&out, 1), ctx);
    }
  }
  if (options_.timeline) {
    op_start_.assign(ops_.size(), 0);
    op_end_.assign(ops_.size(), 0);
    task_start_.assign(tasks_.size(), 0);
    task_end_.assign(tasks_.size(), 0);
  }
  for (size_t i = 0; i + 1 < ops_.size(); ++i)
    ops_[i].blocking = ops_[i].type == Op::Type::launch && ops_[i + 1].type == Op::Type::wait && ops_[i + 1].task == ops_[i].task;
  if (options_.overlap && !tasks_.empty()) comm_thread_ = std::thread([this] { comm_loop(); });
  initialized_ = true;
}

void Executor::run_task(const CommTask& t) {
  switch (t.op) {
    case Collective::all_reduce:
      if (t.block.buf >= 0) comm_.all_reduce(t.block_t, t.block_t, t.reduce, t.ranks);
      else comm_.all_reduce(t.in_t, t.out_t, t.reduce, t.ranks);
      return;
    case Collective::reduce_scatter: comm_.reduce_scatter(t.in_t[0], t.out_t[0], t.dim, t.reduce, t.ranks); return;
    case Collective::all_gather: comm_.all_gather(t.in_t[0], t.out_t[0], t.dim, t.ranks); return;
    case Collective::all_to_all: comm_.all_to_all(t.in_t[0], t.out_t[0], t.dim, t.dim2, t.ranks); return;
    case Collective::broadcast: comm_.broadcast(t.in_t[0], t.out_t[0], t.root, t.ranks); return;
    case Collective::barrier: comm_.barrier(t.ranks); return;
    case Collective::send_recv: break;
  }
  throw Error(t.node->where() + ": no group call for '" + std::string(collective_name(t.op)) + "'");
}

void Executor::comm_loop() {
  int64_t done = 0;
  for (;;) {
    int64_t l = launched_.load();
    while (l == done && !stop_.load()) {
      launched_.wait(l);
      l = launched_.load();
    }
    if (stop_.load()) return;
    if (completed_.load() > done) {  // the compute thread ran it (Op::blocking)
      ++done;
      continue;
    }
    const size_t k = static_cast<size_t>(done % static_cast<int64_t>(tasks_.size()));
    const CommTask& t = tasks_[k];
    try {
      if (options_.timeline) task_start_[k] = now_ns();
      run_task(t);
      if (options_.timeline) task_end_[k] = now_ns();
    } catch (const std::exception& e) {
      comm_error_ = std::make_exception_ptr(Error(t.node->where() + ": " + e.what()));
      failed_.store(true);
      completed_.store(INT64_MAX);
      completed_.notify_all();
      return;
    }
    completed_.store(++done);
    completed_.notify_all();
  }
}

void Executor::wait_event(int64_t event) {
  for (int64_t c = completed_.load(); c <= event; c = completed_.load()) {
    if (failed_.load()) break;
    completed_.wait(c);
  }
  if (failed_.load()) std::rethrow_exception(comm_error_);
}

namespace {
template <class T>
void accumulate(const TensorRef& in, const TensorRef& acc, bool copy, bool scale_it, double scale) {
  const T* x = in.as<const T>();
  T* a = acc.as<T>();
  const T s = static_cast<T>(scale);
  if (copy) std::memcpy(a, x, static_cast<size_t>(in.bytes()));
  else
    for (int64_t i = 0; i < in.numel; ++i) a[i] += x[i];
  if (scale_it)
    for (int64_t i = 0; i < in.numel; ++i) a[i] *= s;
}
}  // namespace

void Executor::step() {
  if (!initialized_) throw Error("Executor::step() before initialize()");
  const int64_t base = steps_ * static_cast<int64_t>(tasks_.size());
  const KernelCtx ctx{parallel_, options_.seed, {}};
  const Op* at = nullptr;
  const bool timing = options_.profile;
  const bool timeline = options_.timeline;
  if (timeline) step_start_ = now_ns();
  try {
    for (size_t i = 0; i < ops_.size(); ++i) {
      Op& op = ops_[i];
      at = &op;
      if (timeline) op_start_[i] = now_ns();
      switch (op.type) {
        case Op::Type::kernel: {
          const auto t0 = timing ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
          if (op.jit) run_fused(op.jit, *op.desc, op.in_p.data(), op.out_p.data(), *parallel_);
          else if (op.shift.empty()) op.fn(*op.node, op.in_t, op.out_t, ctx);
          else op.fn(*op.node, op.in_t, op.out_t, KernelCtx{ctx.parallel, ctx.seed, op.shift});
          if (timing) {
            op.ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            ++op.calls;
          }
          break;
        }
        case Op::Type::launch:
          op.ran_inline = options_.overlap && op.blocking && completed_.load() == base + op.task;
          if (op.ran_inline) {
            // The comm thread has nothing left to do, and this thread would only wait for it:
            // run the task here, then count it done and launched (the comm thread skips it).
            const size_t k = static_cast<size_t>(op.task);
            if (timeline) task_start_[k] = now_ns();
            run_task(tasks_[k]);
            if (timeline) task_end_[k] = now_ns();
            completed_.store(base + op.task + 1);
            launched_.fetch_add(1);
          } else if (options_.overlap) {
            launched_.fetch_add(1);
            launched_.notify_one();
          } else {
            run_task(tasks_[static_cast<size_t>(op.task)]);
          }
          break;
        case Op::Type::wait:
          if (options_.overlap) wait_event(base + op.task);
          break;
        case Op::Type::recv:
          comm_.recv(op.out_t[0], op.peer, op.tag);
          break;
        case Op::Type::send: comm_.send(op.in_t[0], op.peer, op.tag); break;
        case Op::Type::accumulate:
        case Op::Type::output: {
          const TensorRef& in = op.in_t[0];
          const TensorRef& out = op.out_t[0];
          const bool summing = op.type == Op::Type::accumulate || op.mean;
          const bool copy = !summing || (op.type == Op::Type::output && op.first);
          const bool scale = summing && op.last;
          if (in.dtype == DType::f32) accumulate<float>(in, out, copy, scale, op.scale);
          else if (in.dtype == DType::f64) accumulate<double>(in, out, copy, scale, op.scale);
          else std::memcpy(out.data, in.data, static_cast<size_t>(in.bytes()));  // not summable: the last one
          break;
        }
      }
      if (timeline) op_end_[i] = now_ns();
    }
    at = nullptr;
    // Every task of the step has ended (each is waited for); without overlap they ran inline.
    if (timeline && options_.overlap && !tasks_.empty()) wait_event(base + static_cast<int64_t>(tasks_.size()) - 1);
    for (auto& [var, val] : updates_) {
      const Buffer& v = buffers_[static_cast<size_t>(var)];
      const Buffer& x = buffers_[static_cast<size_t>(val)];
      if (v.data != x.data && v.bytes) std::memcpy(v.data, x.data, static_cast<size_t>(v.bytes));
    }
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (msg.rfind("rank ", 0) != 0) msg = "rank " + std::to_string(program_.rank) + ": " + msg;
    if (at && at->node && msg.find(at->node->name) == std::string::npos) msg += " (at " + at->node->where() + ")";
    if (msg.find(" in step ") == std::string::npos) msg += " in step " + std::to_string(steps_ + 1);
    comm_.abort(msg);
    throw Error(msg);
  }
  if (timeline) step_end_ = now_ns();
  ++steps_;
}

const char* step_event_kind_name(StepEvent::Kind k) {
  switch (k) {
    case StepEvent::Kind::forward: return "forward";
    case StepEvent::Kind::backward: return "backward";
    case StepEvent::Kind::recompute: return "recompute";
    case StepEvent::Kind::optimizer: return "optimizer";
    case StepEvent::Kind::wait: return "wait";
    case StepEvent::Kind::recv: return "recv";
    case StepEvent::Kind::send: return "send";
    case StepEvent::Kind::collective: return "collective";
    case StepEvent::Kind::other: return "other";
  }
  return "other";
}

StepBreakdown Executor::breakdown() const {
  StepBreakdown b;
  if (!options_.timeline || steps_ == 0) return b;
  b.step_s = 1e-9 * static_cast<double>(step_end_ - step_start_);
  for (size_t i = 0; i < ops_.size(); ++i) {
    const Op& op = ops_[i];
    const double d = 1e-9 * static_cast<double>(op_end_[i] - op_start_[i]);
    switch (op.type) {
      case Op::Type::wait: b.exposed_comm_s += d; break;
      case Op::Type::launch: (options_.overlap && !op.ran_inline ? b.other_s : b.exposed_comm_s) += d; break;
      case Op::Type::recv: b.bubble_s += d; break;
      default: (op.section == Section::apply && op.type == Op::Type::kernel ? b.optimizer_s : b.compute_s) += d;
    }
  }
  b.other_s += std::max(0.0, b.step_s - b.compute_s - b.optimizer_s - b.exposed_comm_s - b.bubble_s - b.other_s);
  return b;
}

StepTimeline Executor::timeline() const {
  StepTimeline t;
  if (!options_.timeline || steps_ == 0) return t;
  t.start_ns = step_start_;
  t.end_ns = step_end_;
  const std::vector<std::string> lines = [&] {
    std::vector<std::string> v;
    std::string all = describe();
    for (size_t at = 0; at < all.size();) {
      const size_t nl = all.find('\n', at);
      v.push_back(all.substr(at, nl - at));
      at = nl + 1;
    }
    return v;
  }();
  using K = StepEvent::Kind;
  for (size_t i = 0; i < ops_.size(); ++i) {
    const Op& op = ops_[i];
    if (op.type == Op::Type::launch && options_.overlap && !op.ran_inline) continue;  // a hand-off to the comm stream
    StepEvent e;
    e.node = op.node;
    e.start_ns = op_start_[i];
    e.end_ns = op_end_[i];
    e.what = lines[i];
    if (e.what.rfind("kernel ", 0) == 0) e.what.erase(0, 7);
    if (op.type != Op::Type::wait && op.type != Op::Type::launch && op.section != Section::apply)
      e.what += " (mb " + std::to_string(op.mb) + ")";
    switch (op.type) {
      case Op::Type::wait: e.kind = K::wait; break;
      case Op::Type::launch: e.kind = op.ran_inline ? K::wait : K::collective; break;  // run in place
      case Op::Type::recv: e.kind = K::recv; break;
      case Op::Type::send: e.kind = K::send; break;
      default:
        e.kind = op.rerun ? K::recompute
                 : op.section == Section::forward ? K::forward
                 : op.section == Section::backward ? K::backward
                                                   : K::optimizer;
    }
    if (op.type == Op::Type::wait || op.type == Op::Type::launch) e.node = tasks_[static_cast<size_t>(op.task)].node;
    t.events.push_back(std::move(e));
  }
  if (options_.overlap) {
    std::vector<std::string> what(tasks_.size());  // each task as its launch op describes it
    for (size_t i = 0; i < ops_.size(); ++i)
      if (ops_[i].type == Op::Type::launch) what[static_cast<size_t>(ops_[i].task)] = lines[i].substr(7);  // "launch " ...
    for (size_t k = 0; k < tasks_.size(); ++k) {
      StepEvent e;
      e.comm = true;
      e.kind = K::collective;
      e.node = tasks_[k].node;
      e.start_ns = task_start_[k];
      e.end_ns = task_end_[k];
      e.what = std::move(what[k]);
      t.events.push_back(std::move(e));
    }
  }
  return t;
}

std::string Executor::describe() const {
  auto task_str = [&](int64_t k) {
    const CommTask& t = tasks_[static_cast<size_t>(k)];
    std::string s = std::string(collective_name(t.op)) + " of " + std::to_string(t.in.size()) + (t.in.size() == 1 ? " tensor [" : " tensors [");
    for (size_t i = 0; i < t.out.size(); ++i)
      s += (i ? ", " : "") + (t.results.empty() ? buffers_[static_cast<size_t>(t.out[i].buf)].name : t.results[i]);
    s += "]";
    if (t.block.buf >= 0) s += " in place, one block,";
    else if (!t.results.empty()) s += " in place,";
    s += " over";
    for (int64_t r : t.ranks) s += " " + std::to_string(r);
    return s;
  };
  std::string out;
  for (const Op& op : ops_) {
    std::string line;
    auto first_out = [&] { return op.out.empty() ? op.node->name : buffers_[static_cast<size_t>(op.out[0].buf)].name; };
    switch (op.type) {
      case Op::Type::kernel: line = "kernel " + first_out(); break;
      case Op::Type::launch: line = "launch " + task_str(op.task); break;
      case Op::Type::wait: line = "wait " + task_str(op.task); break;
      case Op::Type::recv: line = "recv " + first_out() + " from " + std::to_string(op.peer); break;
      case Op::Type::send: line = "send " + op.node->name + " to " + std::to_string(op.peer); break;
      case Op::Type::accumulate: line = "accumulate " + first_out(); break;
      case Op::Type::output: line = "output " + first_out(); break;
    }
    out += line + "\n";
  }
  return out;
}

TensorRef Executor::input(std::string_view name, int64_t microbatch) {
  auto id = graph_.find(name);
  if (!id || input_slots_[*id].empty()) return TensorRef{};
  if (microbatch < 0 || microbatch >= microbatches_)
    throw Error("microbatch " + std::to_string(microbatch) + " of " + std::to_string(microbatches_));
  const Node& n = graph_.node(*id);
  return TensorRef{buffers_[static_cast<size_t>(input_slots_[*id][static_cast<size_t>(microbatch)])].data,
                   n.outputs[0].dtype, n.outputs[0].shape, n.outputs[0].numel()};
}

TensorRef Executor::output(std::string_view name) {
  auto v = graph_.output(name);
  if (!v) return TensorRef{};
  const TensorType& t = graph_.type(*v);
  int32_t b = output_buffer_[v->node];
  if (b < 0) {  // a variable or input
    Value r = *v;
    while (graph_.node(r.node).def->view) r = graph_.node(r.node).inputs[0];
    b = persistent_[r.node] >= 0 ? persistent_[r.node] : input_slots_[r.node].empty() ? -1 : input_slots_[r.node].back();
    if (b < 0) return TensorRef{};
  }
  return TensorRef{buffers_[static_cast<size_t>(b)].data, t.dtype, t.shape, t.numel()};
}

TensorRef Executor::variable(std::string_view name) {
  auto id = graph_.find(name);
  if (!id || persistent_[*id] < 0) return TensorRef{};
  const Node& n = graph_.node(*id);
  return TensorRef{buffers_[static_cast<size_t>(persistent_[*id])].data, n.outputs[0].dtype, n.outputs[0].shape,
                   n.outputs[0].numel()};
}

int32_t Executor::buffer_of(Value v) const {
  if (!v.valid() || v.node >= graph_.size()) return -1;
  const Value r = storage_root(graph_, v);
  if (persistent_[r.node] >= 0) return persistent_[r.node];
  if (!input_slots_[r.node].empty()) return input_slots_[r.node].back();
  if (auto it = read_by_apply_.find({r.node, r.index}); it != read_by_apply_.end()) return it->second;
  for (auto& o : graph_.outputs())
    if (o.value == v && output_buffer_[v.node] >= 0) return output_buffer_[v.node];
  return -1;
}

Value Executor::running(Value v) const {
  if (!fused_) return v;
  const auto& outs = fused_values_.at(static_cast<size_t>(v.node));
  return static_cast<size_t>(v.index) < outs.size() ? outs[static_cast<size_t>(v.index)] : Value{};
}

TensorRef Executor::value(Value v) {
  if (!initialized_) throw Error("Executor: buffers exist only after initialize()");
  const Graph& src = source_.graph;
  if (v.node < 0 || v.node >= src.size()) throw Error("Executor::value: no node " + std::to_string(v.node));
  const Value r = running(v);
  if (!r.valid())
    throw Error(src.node(v.node).where() + ": no buffer: the value lives inside a fused kernel (run without the JIT to read it)");
  const int32_t b = buffer_of(r);
  if (b < 0) throw Error(src.node(v.node).where() + ": no buffer (nothing the program computes needs it)");
  const TensorType& t = graph_.type(r);
  return TensorRef{buffers_[static_cast<size_t>(b)].data, t.dtype, t.shape, t.numel()};
}

bool Executor::has_buffer(Value v) const {
  return v.node >= 0 && v.node < source_.graph.size() && buffer_of(running(v)) >= 0;
}

void Executor::export_variables(Graph& g) const {
  for (int32_t id = 0; id < graph_.size(); ++id) {
    const Node& n = graph_.node(id);
    if (persistent_[id] < 0 || n.def->kind != OpKind::variable) continue;
    const auto gid = g.find(n.name);
    if (!gid || g.node(*gid).outputs != n.outputs) continue;
    const std::byte* p = buffers_[static_cast<size_t>(persistent_[id])].data;
    g.set_data(*gid, std::vector<std::byte>(p, p + n.outputs[0].bytes()));
  }
}

namespace {
// A profile's entries, the most time first.
template <class K, class T>
std::vector<T> slowest_first(const std::map<K, T>& by) {
  std::vector<T> v;
  for (auto& [k, t] : by) v.push_back(t);
  std::sort(v.begin(), v.end(), [](const T& a, const T& b) { return a.ms > b.ms; });
  return v;
}
}  // namespace

std::vector<Executor::NodeTime> Executor::node_profile() const {
  std::map<int32_t, NodeTime> by_node;
  for (const Op& op : ops_) {
    if (op.type != Op::Type::kernel) continue;
    NodeTime& t = by_node[op.node->id];
    if (t.node.empty()) {
      t.node = op.node->name;
      t.op = op.node->op;
      for (auto& in : op.node->inputs) {
        t.shapes += (t.shapes.empty() ? "" : " ") + shape_str(graph_.type(in).shape);
        t.bytes += static_cast<double>(graph_.type(in).bytes());
      }
      t.shapes += " ->";
      for (auto& o : op.node->outputs) {
        t.shapes += " " + shape_str(o.shape);
        t.bytes += static_cast<double>(o.bytes());
      }
    }
    t.calls += op.calls;
    t.ms += op.ms;
  }
  return slowest_first(by_node);
}

std::vector<Executor::OpTime> Executor::profile() const {
  std::map<std::string, OpTime> by_op;
  for (const NodeTime& n : node_profile()) {
    OpTime& t = by_op[n.op];
    t.op = n.op;
    t.calls += n.calls;
    t.ms += n.ms;
  }
  return slowest_first(by_op);
}

}  // namespace tessel::runtime
