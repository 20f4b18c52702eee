// What runs optimizer steps for the training drivers (the Trainer API, `tessel train`): one
// executor, or a plan's ranks on simulated devices. Internal to frontend/.
#pragma once

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "frontend/optim.h"
#include "graph/error.h"
#include "planner/partition.h"
#include "runtime/executor.h"
#include "runtime/local_run.h"
#include "runtime/process_env.h"

namespace tessel::detail {

inline float read_scalar(const TensorRef& t) {
  if (t.dtype == DType::f32) return t.as<float>()[0];
  if (t.dtype == DType::f64) return static_cast<float>(t.as<double>()[0]);
  throw Error("the loss is " + std::string(dtype_name(t.dtype)) + ", expected f32 or f64");
}

// Copies parameters from one executor to another by node name.
inline void copy_parameters(runtime::Executor& from, runtime::Executor& to) {
  const Graph& src = from.graph();
  const Graph& dst = to.graph();
  for (int32_t id : dst.parameters()) {
    if (!to.has_buffer(Value{id, 0})) continue;
    auto sid = src.find(dst.node(id).name);
    if (!sid) throw Error(dst.node(id).where() + ": no parameter of this name in the trained graph");
    TensorRef a = from.value(Value{*sid, 0}), b = to.value(Value{id, 0});
    if (a.bytes() != b.bytes()) throw Error(dst.node(id).where() + ": shape differs from the trained parameter");
    std::memcpy(b.data, a.data, static_cast<size_t>(a.bytes()));
  }
}

using InputFn = std::function<TensorRef(const std::string&)>;


struct Feeder {
  virtual ~Feeder() = default;
  // Fills the model inputs for microbatch `micro` of optimizer step `step`.
  virtual void feed(const InputFn& input, int64_t step, int64_t micro) = 0;
};

// What runs the optimizer steps: one executor, or a plan's ranks on simulated devices.
struct Engine {
  virtual ~Engine() = default;
  virtual double step(Feeder& feeder, int64_t step) = 0;  // returns the step's loss
  virtual void copy_parameters_to(runtime::Executor& eval) = 0;
  virtual void export_variables(Graph& g) = 0;
  // A variable's whole value (gathered from its shards).
  virtual std::vector<std::byte> variable(const std::string& name, const TensorType& type) = 0;
  virtual int64_t memory_bytes() const = 0;
  struct Jit {
    int64_t kernels = 0, compiled = 0;
    double seconds = 0;
    int64_t in_place = 0;  // updates written over their variables
  };
  virtual Jit jit() const = 0;
};

struct OneDevice final : Engine {
  runtime::Executor exec;
  int64_t k;
  int prog_step = -1, prog_micro = -1, prog_apply = -1;
  TensorRef loss;
  OneDevice(const Graph& g, const runtime::ExecutorOptions& eo, const TrainingPhases& phases, int64_t micro)
      : exec(g, eo), k(micro) {
    if (k == 1) {
      prog_step = exec.prepare({phases.step, {"loss"}});
    } else {
      prog_micro = exec.prepare({phases.micro, {"loss"}});
      prog_apply = exec.prepare({phases.apply, {}});
    }
    exec.initialize();
    loss = exec.output("loss");
  }
  double step(Feeder& feeder, int64_t s) override {
    const InputFn in = [&](const std::string& name) { return exec.input(name); };
    if (k == 1) {
      feeder.feed(in, s, 0);
      exec.run(prog_step);
      return read_scalar(loss);
    }
    double l = 0;
    for (int64_t m = 0; m < k; ++m) {
      feeder.feed(in, s, m);
      exec.run(prog_micro);
      l += read_scalar(loss) / static_cast<double>(k);
    }
    exec.run(prog_apply);
    return l;
  }
  void copy_parameters_to(runtime::Executor& eval) override { copy_parameters(exec, eval); }
  void export_variables(Graph& g) override { exec.export_variables(g); }
  std::vector<std::byte> variable(const std::string& name, const TensorType& type) override {
    auto id = exec.graph().find(name);
    if (!id || !exec.has_buffer(Value{*id, 0})) throw Error("no variable '" + name + "'");
    const TensorRef v = exec.value(Value{*id, 0});
    if (v.dtype != type.dtype || v.numel != type.numel()) throw Error("variable '" + name + "' is not " + type.str());
    const auto* p = static_cast<const std::byte*>(v.data);
    return std::vector<std::byte>(p, p + v.bytes());
  }
  int64_t memory_bytes() const override { return exec.bytes_allocated(); }
  Jit jit() const override {
    const auto& r = exec.jit_report();
    return Jit{r.kernels, r.compiled, r.compile_s, r.updates_in_place};
  }
};

// A plan's ranks, on simulated devices of this process or one rank per process: the whole
// step's batch is gathered on the host, then each rank of this process gets its
// microbatches' shards.
struct Devices final : Engine {
  runtime::LocalRun run;
  const Graph& graph;  // the training graph, at the global batch
  struct Host {
    std::string name;
    TensorType whole;
    std::vector<std::byte> bytes;
  };
  std::vector<Host> inputs;
  Devices(std::vector<planner::RankProgram> programs, const planner::PlanConfig& c, const Graph& g,
          const runtime::RankOptions& ro, const runtime::CommOptions& co, int threads, int64_t capacity)
      : run(std::move(programs), c, ro, co, threads), graph(g) {
    start(capacity);
  }
  // This process runs rank role.rank; the others run in the processes its launcher started.
  Devices(std::vector<planner::RankProgram> programs, const planner::PlanConfig& c, const Graph& g,
          const runtime::RankOptions& ro, const runtime::ProcessRole& role, const runtime::CommOptions& co, int threads,
          int64_t capacity)
      : run(std::move(programs), c, role.rank, runtime::connect_ranks(role, co), ro,
            threads > 0 ? threads : runtime::threads_per_rank(role)),
        graph(g) {
    start(capacity);
  }
  void start(int64_t capacity) {
    run.initialize(capacity);
    for (int32_t id : graph.nodes_of_kind(OpKind::input)) {
      const TensorType& t = graph.node(id).outputs[0];
      inputs.push_back(Host{graph.node(id).name, t, std::vector<std::byte>(static_cast<size_t>(t.bytes()))});
    }
  }
  double step(Feeder& feeder, int64_t s) override {
    feeder.feed([&](const std::string& name) {
      for (Host& h : inputs)
        if (h.name == name) return TensorRef{h.bytes.data(), h.whole.dtype, h.whole.shape, h.whole.numel()};
      throw Error("the plan's graph has no input '" + name + "'");
    }, s, 0);
    for (Host& h : inputs) run.feed(h.name, h.whole, h.bytes);
    run.step();
    return run.scalar_output("loss");
  }
  void copy_parameters_to(runtime::Executor& eval) override {
    const Graph& dst = eval.graph();
    for (int32_t id : dst.parameters()) {
      if (!eval.has_buffer(Value{id, 0})) continue;
      const Node& n = dst.node(id);
      const std::vector<std::byte> whole = run.gather_variable(n.name, n.outputs[0]);
      std::memcpy(eval.value(Value{id, 0}).data, whole.data(), whole.size());
    }
  }
  std::vector<std::byte> variable(const std::string& name, const TensorType& type) override {
    return run.gather_variable(name, type);
  }
  void export_variables(Graph& g) override {
    for (int32_t id : g.nodes_of_kind(OpKind::variable)) {
      const Node& n = g.node(id);
      if (!graph.find(n.name)) continue;
      g.set_data(id, run.gather_variable(n.name, n.outputs[0]));
    }
  }
  Jit jit() const override {
    Jit j;
    for (const auto& r : run.jit_reports()) {
      j.kernels += r.kernels;
      j.compiled += r.compiled;
      j.seconds += r.compile_s;
      j.in_place += r.updates_in_place;
    }
    return j;
  }
  int64_t memory_bytes() const override {
    int64_t total = 0;
    for (auto& m : run.memory()) total += m.total();
    return total;
  }
};

}  // namespace tessel::detail
