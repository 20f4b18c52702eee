#include "runtime/executor.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>

#include "graph/error.h"
#include "runtime/cpu_kernels.h"
#include "runtime/thread_pool.h"

namespace tessel::runtime {

namespace {
void free_aligned(std::byte* p) { std::free(p); }
constexpr size_t kAlign = 64;
}  // namespace

Executor::Executor(const Graph& graph, ExecutorOptions options)
    : graph_(graph), options_(options),
      parallel_(options.parallel ? options.parallel : &ThreadPool::shared()) {
  configure_blas_threads();
  buffers_.resize(graph.size());
}

Executor::~Executor() = default;

KernelFn Executor::kernel_for(const Node& n) const {
  if (options_.use_blas)
    if (KernelFn f = fast_cpu_kernel(n.op)) return f;
  return n.def->kernel;
}

void Executor::allocate(int32_t id) {
  if (static_cast<size_t>(id) >= buffers_.size()) buffers_.resize(graph_.size());
  if (!buffers_[id].empty()) return;
  const Node& n = graph_.node(id);
  std::vector<void*> outs(n.outputs.size(), nullptr);
  for (size_t i = 0; i < n.outputs.size(); ++i) {
    if (n.def->view && i == 0) {
      outs[i] = buffers_[n.inputs[0].node][n.inputs[0].index];
      continue;
    }
    const size_t bytes = static_cast<size_t>(n.outputs[i].bytes());
    const size_t rounded = std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    auto* p = static_cast<std::byte*>(std::aligned_alloc(kAlign, rounded));
    if (!p)
      throw Error(n.where() + ": cannot allocate " + std::to_string(bytes) + " bytes for " +
                  n.outputs[i].str());
    owned_.emplace_back(p, free_aligned);
    bytes_allocated_ += static_cast<int64_t>(rounded);
    outs[i] = p;
  }
  buffers_[id] = std::move(outs);
}

int Executor::prepare(const ProgramSpec& spec) {
  std::vector<Value> targets;
  for (auto& name : spec.outputs) {
    auto v = graph_.output(name);
    if (!v) {
      std::string known;
      for (auto& o : graph_.outputs()) known += (known.empty() ? "" : ", ") + o.name;
      throw Error("the graph has no output '" + name + "' (it has: " + known + ")");
    }
    targets.push_back(*v);
  }
  bool any_update = false;
  for (auto& u : graph_.updates())
    if (u.phase == spec.phase) {
      targets.push_back(u.value);
      targets.push_back(Value{u.variable, 0});
      any_update = true;
    }
  if (!spec.phase.empty() && !any_update)
    throw Error("the graph has no updates in phase '" + spec.phase + "'");

  Program prog;
  const KernelCtx ctx{parallel_, options_.seed};
  for (int32_t id : needed_nodes(graph_, targets)) {
    const bool fresh = static_cast<size_t>(id) >= buffers_.size() || buffers_[id].empty();
    allocate(id);
    const Node& n = graph_.node(id);
    auto refs = [&](Value v) {
      const TensorType& t = graph_.type(v);
      return TensorRef{buffers_[v.node][v.index], t.dtype, t.shape, t.numel()};
    };
    switch (n.def->kind) {
      case OpKind::input: break;
      case OpKind::variable:
      case OpKind::constant:
        if (fresh && (n.def->kind == OpKind::constant || initialized_)) fill_source(id, ctx);
        break;
      case OpKind::compute: {
        if (n.def->view) break;  // aliased, nothing to run
        Step s{kernel_for(n), &n, {}, {}};
        for (auto& in : n.inputs) s.in.push_back(refs(in));
        for (int i = 0; i < static_cast<int>(n.outputs.size()); ++i) s.out.push_back(refs(n.out(i)));
        prog.steps.push_back(std::move(s));
        break;
      }
    }
  }
  for (auto& u : graph_.updates())
    if (u.phase == spec.phase) {
      const TensorType& t = graph_.type(u.value);
      prog.updates.push_back({TensorRef{buffers_[u.variable][0], t.dtype, t.shape, t.numel()},
                              TensorRef{buffers_[u.value.node][u.value.index], t.dtype, t.shape, t.numel()}});
    }
  programs_.push_back(std::move(prog));
  return static_cast<int>(programs_.size()) - 1;
}

void Executor::fill_source(int32_t id, const KernelCtx& ctx) {
  const Node& n = graph_.node(id);
  const TensorType& t = n.outputs[0];
  TensorRef out{buffers_[id][0], t.dtype, t.shape, t.numel()};
  if (const auto* data = graph_.data(id)) {
    if (!data->empty()) std::memcpy(out.data, data->data(), data->size());
    return;
  }
  n.def->kernel(n, {}, std::span<const TensorRef>(&out, 1), ctx);
}

void Executor::initialize() {
  const KernelCtx ctx{parallel_, options_.seed};
  for (int32_t id = 0; id < static_cast<int32_t>(buffers_.size()); ++id) {
    if (buffers_[id].empty()) continue;
    OpKind k = graph_.node(id).def->kind;
    if (k == OpKind::variable || k == OpKind::constant) fill_source(id, ctx);
  }
  initialized_ = true;
}

void Executor::run(int program) {
  if (!initialized_) throw Error("Executor::run before initialize()");
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

TensorRef Executor::value(Value v) {
  if (!has_buffer(v))
    throw Error(graph_.node(v.node).where() + ": no buffer (not part of any prepared program)");
  const TensorType& t = graph_.type(v);
  return TensorRef{buffers_[v.node][v.index], t.dtype, t.shape, t.numel()};
}

bool Executor::has_buffer(Value v) const {
  return v.node >= 0 && static_cast<size_t>(v.node) < buffers_.size() && !buffers_[v.node].empty();
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
