#include "runtime/executor.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>

#include "graph/error.h"
#include "runtime/cpu_kernels.h"
#include "runtime/memory_plan.h"
#include "runtime/thread_pool.h"

namespace tessel::runtime {

namespace {
void free_aligned(std::byte* p) { std::free(p); }
constexpr int64_t kAlign = 64;

bool persistent(const Node& n) { return n.def->kind != OpKind::compute; }
}  // namespace

namespace {
std::unique_ptr<FusedGraph> fuse_if(const Graph& g, bool jit, double& seconds) {
  if (!jit) return nullptr;
  const auto t0 = std::chrono::steady_clock::now();
  auto f = std::make_unique<FusedGraph>(fuse(g));
  seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return f;
}
}  // namespace

Executor::Executor(const Graph& graph, ExecutorOptions options)
    : source_(graph), fused_(fuse_if(graph, options.jit, jit_report_.compile_s)),
      graph_(fused_ ? fused_->graph : graph), options_(options),
      parallel_(options.parallel ? options.parallel : &ThreadPool::shared()) {
  configure_blas_threads();
  if (fused_) {
    jit_report_.fused_nodes = fused_->fused_nodes;
    jit_report_.nodes_fused = fused_->nodes_fused;
  }
  descs_.resize(static_cast<size_t>(graph_.size()));
  fused_fns_.resize(static_cast<size_t>(graph_.size()), nullptr);
}

Executor::~Executor() = default;

void* Executor::allocate(int64_t bytes, const Node& n) {
  const int64_t rounded = std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  auto* p = static_cast<std::byte*>(std::aligned_alloc(kAlign, static_cast<size_t>(rounded)));
  if (!p) throw Error(n.where() + ": cannot allocate " + std::to_string(bytes) + " bytes");
  owned_.emplace_back(p, free_aligned);
  bytes_allocated_ += rounded;
  return p;
}

int Executor::prepare(const ProgramSpec& spec) {
  if (initialized_)
    throw Error("Executor::prepare() after initialize(): prepare every program first, so that "
                "memory is planned for all of them");
  Program prog;
  prog.phase = spec.phase;
  for (auto& name : spec.outputs) {
    auto v = graph_.output(name);
    if (!v) {
      std::string known;
      for (auto& o : graph_.outputs()) known += (known.empty() ? "" : ", ") + o.name;
      throw Error("the graph has no output '" + name + "' (it has: " + known + ")");
    }
    prog.keep.push_back(*v);
  }
  bool any_update = false;
  for (auto& u : graph_.updates())
    if (u.phase == spec.phase) {
      prog.keep.push_back(u.value);
      prog.keep.push_back(Value{u.variable, 0});
      any_update = true;
    }
  if (!spec.phase.empty() && !any_update)
    throw Error("the graph has no updates in phase '" + spec.phase + "'");
  prog.nodes = needed_nodes(graph_, prog.keep);
  for (int32_t id : prog.nodes) {
    const Node& n = graph_.node(id);
    if (n.def->kind != OpKind::compute || n.def->view) continue;
    Step step;
    step.fn = cpu_kernel_for(n, options_.use_blas);
    step.node = &n;
    if (n.op == "fused") {  // compiled by initialize(): only what a program needs
      const size_t u = static_cast<size_t>(id);
      if (!descs_[u]) descs_[u] = std::make_unique<ops::FusedKernelDesc>(ops::FusedKernelDesc::from_attrs(n.attrs));
      step.desc = descs_[u].get();
    }
    prog.steps.push_back(std::move(step));
  }
  for (auto& u : graph_.updates())
    if (u.phase == spec.phase) {
      const TensorType& t = graph_.type(u.value);
      prog.updates.push_back({TensorRef{nullptr, t.dtype, t.shape, t.numel()},
                              TensorRef{nullptr, t.dtype, t.shape, t.numel()}});
    }
  programs_.push_back(std::move(prog));
  return static_cast<int>(programs_.size()) - 1;
}

void Executor::write_updates_in_place() {
  for (auto& up : graph_.updates()) {
    const Node& f = graph_.node(up.value.node);
    ops::FusedKernelDesc* d = descs_[static_cast<size_t>(f.id)].get();
    if (!d) continue;
    const int over = update_over_input(graph_, f, *d, up.value.index, up.variable);
    if (over < 0) continue;
    // Every program that runs f applies this update, and nothing there reads the variable
    // after f.
    bool ok = true;
    for (const Program& p : programs_) {
      auto at = std::find(p.nodes.begin(), p.nodes.end(), f.id);
      if (at == p.nodes.end()) continue;
      ok = p.phase == up.phase;
      for (auto it = at + 1; ok && it != p.nodes.end(); ++it) {
        const Node& n = graph_.node(*it);
        if (n.def->view) continue;
        for (const Value& in : n.inputs) ok = ok && storage_root(graph_, in).node != up.variable;
      }
      if (!ok) break;
    }
    if (!ok) continue;
    d->outputs[static_cast<size_t>(up.value.index)].over = over;
    in_place_.push_back({up.value, up.variable});
    ++jit_report_.updates_in_place;
  }
}

void Executor::compile_kernels() {
  for (int32_t id = 0; id < graph_.size(); ++id) {
    const size_t u = static_cast<size_t>(id);
    if (!descs_[u]) continue;
    fused_fns_[u] = compile_and_count(*descs_[u], jit_report_.compiled, jit_report_.disk_hits, jit_report_.compile_s);
    ++jit_report_.kernels;
  }
  for (Program& p : programs_)
    for (Step& s : p.steps)
      if (s.desc) s.jit = fused_fns_[static_cast<size_t>(s.node->id)];
}

void Executor::plan_and_allocate() {
  buffers_.assign(graph_.size(), {});
  auto written_over = [&](Value v) {
    return std::any_of(in_place_.begin(), in_place_.end(), [&](const auto& w) { return w.first == v; });
  };
  // A view shares its input's storage.
  auto root = [&](Value v) { return storage_root(graph_, v); };
  // Lifetimes on one timeline: program after program, one tick per node.
  std::map<std::pair<int32_t, int32_t>, BufferLifetime> life;
  auto key = [](Value v) { return std::make_pair(v.node, v.index); };
  int64_t t = 0;
  for (Program& p : programs_) {
    for (int32_t id : p.nodes) {
      const Node& n = graph_.node(id);
      if (persistent(n)) {
        if (buffers_[id].empty()) buffers_[id].push_back(allocate(n.outputs[0].bytes(), n));
      } else if (!n.def->view) {
        for (int i = 0; i < static_cast<int>(n.outputs.size()); ++i) {
          if (written_over(n.out(i))) continue;  // lives in its variable's buffer
          auto [it, fresh] = life.try_emplace(key(n.out(i)), BufferLifetime{n.outputs[i].bytes(), t, t});
          if (!fresh) it->second.last = std::max(it->second.last, t);  // computed again later
        }
      }
      for (auto& in : n.inputs) {
        auto it = life.find(key(root(in)));
        if (it != life.end()) it->second.last = std::max(it->second.last, t);
      }
      ++t;
    }
    for (auto& v : p.keep) {
      auto it = life.find(key(root(v)));
      if (it != life.end()) it->second.last = std::max(it->second.last, t);
    }
    ++t;
  }
  std::vector<BufferLifetime> list;
  for (auto& [k, l] : life) list.push_back(l);
  MemoryPlan plan = plan_memory(list, kAlign);
  arena_bytes_ = plan.arena_bytes;
  std::byte* arena = nullptr;
  if (arena_bytes_ > 0) {
    arena = static_cast<std::byte*>(allocate(arena_bytes_, graph_.node(0)));
  }
  size_t i = 0;
  for (auto& [k, l] : life) {
    auto& outs = buffers_[k.first];
    outs.resize(graph_.node(k.first).outputs.size(), nullptr);
    outs[k.second] = arena + plan.offsets[i++];
  }
  for (auto& [value, variable] : in_place_) {
    auto& outs = buffers_[value.node];
    outs.resize(graph_.node(value.node).outputs.size(), nullptr);
    outs[value.index] = buffers_[variable][0];
  }
  // Views alias their roots, in node order so chains resolve.
  for (int32_t id = 0; id < graph_.size(); ++id) {
    const Node& n = graph_.node(id);
    if (!n.def->view) continue;
    Value in = n.inputs[0];
    if (static_cast<size_t>(in.node) < buffers_.size() && !buffers_[in.node].empty())
      buffers_[id] = {buffers_[in.node][in.index]};
  }
  for (Program& p : programs_) {
    for (Step& s : p.steps) {
      for (auto& in : s.node->inputs) s.in.push_back(ref(in));
      for (int o = 0; o < static_cast<int>(s.node->outputs.size()); ++o) s.out.push_back(ref(s.node->out(o)));
      if (s.desc) {
        for (auto& t : s.in) s.in_ptrs.push_back(t.as<const float>());
        for (auto& t : s.out) s.out_ptrs.push_back(t.as<float>());
      }
    }
    size_t u = 0;
    for (auto& up : graph_.updates()) {
      if (up.phase != p.phase) continue;
      p.updates.at(u).first.data = buffers_[up.variable][0];
      p.updates.at(u).second.data = buffers_[up.value.node][up.value.index];
      ++u;
    }
  }
}

void Executor::fill_source(int32_t id, const KernelCtx& ctx) {
  const Node& n = graph_.node(id);
  TensorRef out = ref(n.out());
  if (const auto* data = graph_.data(id)) {
    if (!data->empty()) std::memcpy(out.data, data->data(), data->size());
    return;
  }
  if (n.def->kind == OpKind::input) {
    std::memset(out.data, 0, static_cast<size_t>(out.bytes()));  // defined contents until fed
    return;
  }
  n.def->kernel(n, {}, std::span<const TensorRef>(&out, 1), ctx);
}

void Executor::initialize() {
  if (initialized_) throw Error("Executor::initialize() called twice");
  write_updates_in_place();
  compile_kernels();
  plan_and_allocate();
  const KernelCtx ctx{parallel_, options_.seed, {}};
  for (int32_t id = 0; id < static_cast<int32_t>(buffers_.size()); ++id)
    if (!buffers_[id].empty() && persistent(graph_.node(id))) fill_source(id, ctx);
  initialized_ = true;
}

void Executor::run(int program) {
  if (!initialized_) throw Error("Executor::run() before initialize()");
  Program& p = programs_.at(static_cast<size_t>(program));
  const KernelCtx ctx{parallel_, options_.seed, {}};
  auto call = [&](const Step& s) {
    if (s.jit) run_fused(s.jit, *s.desc, s.in_ptrs.data(), s.out_ptrs.data(), *parallel_);
    else s.fn(*s.node, s.in, s.out, ctx);
  };
  if (!options_.profile) {
    for (const Step& s : p.steps) call(s);
  } else {
    for (Step& s : p.steps) {
      auto t0 = std::chrono::steady_clock::now();
      call(s);
      s.ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      s.calls++;
    }
  }
  for (auto& [var, val] : p.updates)
    if (var.data != val.data && var.bytes() > 0)
      std::memcpy(var.data, val.data, static_cast<size_t>(var.bytes()));
}

TensorRef Executor::ref(Value v) const {
  const TensorType& t = graph_.type(v);
  return TensorRef{buffers_[v.node][v.index], t.dtype, t.shape, t.numel()};
}

Value Executor::run_value(Value source) const { return fused_ ? fused_->map(source) : source; }

namespace {
bool has(const std::vector<std::vector<void*>>& buffers, Value v) {
  return v.node >= 0 && static_cast<size_t>(v.node) < buffers.size() &&
         static_cast<size_t>(v.index) < buffers[static_cast<size_t>(v.node)].size() &&
         buffers[static_cast<size_t>(v.node)][static_cast<size_t>(v.index)];
}
}  // namespace

TensorRef Executor::value(Value v) {
  if (!initialized_) throw Error("Executor: buffers exist only after initialize()");
  const Value r = run_value(v);
  if (!r.valid())
    throw Error(source_.node(v.node).where() + ": no buffer: the value lives inside a fused kernel (run without the JIT to read it)");
  if (!has(buffers_, r))
    throw Error(source_.node(v.node).where() + ": no buffer (not part of any prepared program)");
  return ref(r);
}

bool Executor::has_buffer(Value v) const { return has(buffers_, run_value(v)); }

TensorRef Executor::input(std::string_view name) {
  auto id = graph_.find(name);
  if (!id || graph_.node(*id).def->kind != OpKind::input)
    throw Error("the graph has no input '" + std::string(name) + "'");
  if (!initialized_) throw Error("Executor: buffers exist only after initialize()");
  if (!has(buffers_, Value{*id, 0})) throw Error(graph_.node(*id).where() + ": no buffer (not part of any prepared program)");
  return ref(Value{*id, 0});
}

TensorRef Executor::output(std::string_view name) {
  auto v = graph_.output(name);
  if (!v) throw Error("the graph has no output '" + std::string(name) + "'");
  if (!initialized_) throw Error("Executor: buffers exist only after initialize()");
  if (!has(buffers_, *v)) throw Error("output '" + std::string(name) + "': no buffer (not part of any prepared program)");
  return ref(*v);
}

std::vector<Executor::OpTime> Executor::profile() const {
  std::map<std::string, OpTime> by_op;
  for (const NodeTime& n : node_profile()) {
    OpTime& t = by_op[n.op];
    t.op = n.op;
    t.calls += n.calls;
    t.ms += n.ms;
  }
  std::vector<OpTime> v;
  for (auto& [k, t] : by_op) v.push_back(t);
  std::sort(v.begin(), v.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
  return v;
}

std::vector<Executor::NodeTime> Executor::node_profile() const {
  std::map<int32_t, NodeTime> by_node;
  for (auto& p : programs_)
    for (auto& s : p.steps) {
      NodeTime& t = by_node[s.node->id];
      if (t.node.empty()) {
        t.node = s.node->name;
        t.op = s.node->op;
        for (auto& in : s.node->inputs) t.shapes += (t.shapes.empty() ? "" : " ") + shape_str(graph_.type(in).shape);
        t.shapes += " ->";
        for (auto& o : s.node->outputs) t.shapes += " " + shape_str(o.shape);
      }
      t.calls += s.calls;
      t.ms += s.ms;
    }
  std::vector<NodeTime> v;
  for (auto& [k, t] : by_node) v.push_back(t);
  std::sort(v.begin(), v.end(), [](const NodeTime& a, const NodeTime& b) { return a.ms > b.ms; });
  return v;
}

void Executor::export_variables(Graph& g) const {
  for (int32_t id = 0; id < static_cast<int32_t>(buffers_.size()); ++id) {
    if (buffers_[id].empty() || graph_.node(id).def->kind != OpKind::variable) continue;
    const auto gid = g.find(graph_.node(id).name);
    if (!gid || g.node(*gid).outputs != graph_.node(id).outputs) continue;
    const auto* p = static_cast<const std::byte*>(buffers_[id][0]);
    g.set_data(*gid, std::vector<std::byte>(p, p + graph_.node(id).outputs[0].bytes()));
  }
}

}  // namespace tessel::runtime
