// What runs optimizer steps for the training drivers (the Trainer API, `tessel train`): the
// plan of one device, or a plan's ranks on simulated devices or in processes. Internal to frontend/.
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

// One device: the executor running the plan of one rank (planner::one_device), each step
// `microbatches` runs of the graph with their gradients averaged.
struct OneDevice final : Engine {
  runtime::Executor exec;
  TensorRef loss;
  OneDevice(const Graph& g, const runtime::ExecutorOptions& eo, int64_t microbatches)
      : exec(planner::one_device(g, microbatches), eo) {
    exec.initialize();
    loss = exec.output("loss");
    if (!loss.data) throw Error("the training graph has no 'loss' output");
  }
  double step(Feeder& feeder, int64_t s) override {
    for (int64_t m = 0; m < exec.microbatches(); ++m)
      feeder.feed([&](const std::string& name) {
        const TensorRef t = exec.input(name, m);
        if (!t.data) throw Error("the training graph reads no input '" + name + "'");
        return t;
      }, s, m);
    exec.step();
    return read_scalar(loss);
  }
  void copy_parameters_to(runtime::Executor& eval) override {
    for (int32_t id : eval.program().graph.parameters()) {
      const std::string& name = eval.program().graph.node(id).name;
      const TensorRef to = eval.variable(name), from = exec.variable(name);
      if (!to.data) continue;
      if (!from.data) throw Error(eval.program().graph.node(id).where() + ": no parameter of this name in the trained graph");
      if (from.bytes() != to.bytes()) throw Error(eval.program().graph.node(id).where() + ": shape differs from the trained parameter");
      std::memcpy(to.data, from.data, static_cast<size_t>(to.bytes()));
    }
  }
  void export_variables(Graph& g) override { exec.export_variables(g); }
  std::vector<std::byte> variable(const std::string& name, const TensorType& type) override {
    const TensorRef v = exec.variable(name);
    if (!v.data) throw Error("no variable '" + name + "'");
    if (v.dtype != type.dtype || v.numel != type.numel()) throw Error("variable '" + name + "' is not " + type.str());
    const auto* p = static_cast<const std::byte*>(v.data);
    return std::vector<std::byte>(p, p + v.bytes());
  }
  int64_t memory_bytes() const override { return exec.memory().total(); }
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
          const runtime::ExecutorOptions& ro, const runtime::CommOptions& co, int threads, int64_t capacity)
      : run(std::move(programs), c, ro, co, threads), graph(g) {
    start(capacity);
  }
  // This process runs rank role.rank; the others run in the processes its launcher started.
  Devices(std::vector<planner::RankProgram> programs, const planner::PlanConfig& c, const Graph& g,
          const runtime::ExecutorOptions& ro, const runtime::ProcessRole& role, const runtime::CommOptions& co, int threads,
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
    const Graph& dst = eval.program().graph;
    for (int32_t id : dst.parameters()) {
      const Node& n = dst.node(id);
      const TensorRef to = eval.variable(n.name);
      if (!to.data) continue;
      const std::vector<std::byte> whole = run.gather_variable(n.name, n.outputs[0]);
      std::memcpy(to.data, whole.data(), whole.size());
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
