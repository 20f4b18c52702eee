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

Executor::Executor(const Graph& graph, ExecutorOptions options)
    : graph_(graph), options_(options),
      parallel_(options.parallel ? options.parallel : &ThreadPool::shared()) {
  configure_blas_threads();
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
    if (n.def->kind == OpKind::compute && !n.def->view) prog.steps.push_back(Step{cpu_kernel_for(n, options_.use_blas), &n, {}, {}});
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

void Executor::plan_and_allocate() {
  buffers_.assign(graph_.size(), {});
  // Storage root of every value: a view shares its input's storage.
  auto root = [&](Value v) {
    while (graph_.node(v.node).def->view) v = graph_.node(v.node).inputs[0];
    return v;
  };
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
  plan_and_allocate();
  const KernelCtx ctx{parallel_, options_.seed};
  for (int32_t id = 0; id < static_cast<int32_t>(buffers_.size()); ++id)
    if (!buffers_[id].empty() && persistent(graph_.node(id))) fill_source(id, ctx);
  initialized_ = true;
}

void Executor::run(int program) {
  if (!initialized_) throw Error("Executor::run() before initialize()");
  Program& p = programs_.at(static_cast<size_t>(program));
  const KernelCtx ctx{parallel_, options_.seed};
  if (!options_.profile) {
    for (const Step& s : p.steps) s.fn(*s.node, s.in, s.out, ctx);
  } else {
    for (Step& s : p.steps) {
      auto t0 = std::chrono::steady_clock::now();
      s.fn(*s.node, s.in, s.out, ctx);
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

TensorRef Executor::value(Value v) {
  if (!initialized_) throw Error("Executor: buffers exist only after initialize()");
  if (!has_buffer(v))
    throw Error(graph_.node(v.node).where() + ": no buffer (not part of any prepared program)");
  return ref(v);
}

bool Executor::has_buffer(Value v) const {
  return v.node >= 0 && static_cast<size_t>(v.node) < buffers_.size() &&
         static_cast<size_t>(v.index) < buffers_[v.node].size() && buffers_[v.node][v.index];
}

TensorRef Executor::input(std::string_view name) {
  auto id = graph_.find(name);
  if (!id || graph_.node(*id).def->kind != OpKind::input)
    throw Error("the graph has no input '" + std::string(name) + "'");
  return value(Value{*id, 0});
}

TensorRef Executor::output(std::string_view name) {
  auto v = graph_.output(name);
  if (!v) throw Error("the graph has no output '" + std::string(name) + "'");
  return value(*v);
}

std::vector<Executor::OpTime> Executor::profile() const {
  std::map<std::string, OpTime> by_op;
  for (auto& p : programs_)
    for (auto& s : p.steps) {
      OpTime& t = by_op[s.node->op];
      t.op = s.node->op;
      t.calls += s.calls;
      t.ms += s.ms;
    }
  std::vector<OpTime> v;
  for (auto& [k, t] : by_op) v.push_back(t);
  std::sort(v.begin(), v.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
  return v;
}

void Executor::export_variables(Graph& g) const {
  for (int32_t id = 0; id < static_cast<int32_t>(buffers_.size()) && id < g.size(); ++id) {
    if (buffers_[id].empty() || graph_.node(id).def->kind != OpKind::variable) continue;
    if (g.node(id).name != graph_.node(id).name || g.node(id).outputs != graph_.node(id).outputs) continue;
    const auto* p = static_cast<const std::byte*>(buffers_[id][0]);
    g.set_data(id, std::vector<std::byte>(p, p + graph_.node(id).outputs[0].bytes()));
  }
}

}  // namespace tessel::runtime
