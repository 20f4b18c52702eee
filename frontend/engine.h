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

// Where a feeder writes one input of a step: `data` holds the rows [first_row, first_row +
// rows()) of the step's whole batch of that input: a microbatch's rows on one device, the
// rows this process's ranks read on devices (all of them in one process; a data-parallel
// rank's part, or none, with one process per rank).
struct Window {
  TensorRef data;
  int64_t first_row = 0;
  int64_t rows() const { return data.rank() ? data.shape[0] : 1; }
};
using InputFn = std::function<Window(const std::string&)>;

struct Feeder {
  virtual ~Feeder() = default;
  // Fills, for optimizer step `step`, the rows of each model input that `input` asks for.
  virtual void feed(const InputFn& input, int64_t step) = 0;
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
  // Every variable block this process holds (per rank), live: valid until the next step.
  virtual std::vector<std::vector<runtime::Shard>> variable_blocks() = 0;
  // Overwrites every variable with its block from a checkpoint (written under any plan).
  virtual void load_variables(const runtime::Checkpoint& checkpoint) = 0;
  struct Jit {
    int64_t kernels = 0, compiled = 0;
    double seconds = 0;
    int64_t in_place = 0;  // updates written over their variables
  };
  virtual Jit jit() const = 0;
  // With TrainerOptions::timeline: the last step of each rank this process runs, by global rank.
  virtual std::vector<std::pair<int64_t, runtime::StepTimeline>> timelines() const = 0;
  virtual std::vector<std::pair<int64_t, runtime::StepBreakdown>> breakdowns() const = 0;  // the same, in parts
  // Every process's `text`, in rank order (collective: every process calls it); {text} in one process.
  virtual std::vector<std::string> gather_text(const std::string& text) = 0;
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
    // Microbatch m is rows [m * b, (m + 1) * b) of the step's batch, b the graph's batch.
    for (int64_t m = 0; m < exec.microbatches(); ++m)
      feeder.feed([&](const std::string& name) {
        const TensorRef t = exec.input(name, m);
        if (!t.data) throw Error("the training graph reads no input '" + name + "'");
        return Window{t, t.rank() ? m * t.shape[0] : 0};
      }, s);
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
  std::vector<std::vector<runtime::Shard>> variable_blocks() override {
    std::vector<runtime::Shard> blocks;
    const Graph& g = exec.program().graph;
    for (int32_t id : g.nodes_of_kind(OpKind::variable)) {
      const Node& n = g.node(id);
      const TensorRef v = exec.variable(n.name);
      if (!v.data) continue;  // nothing the step runs needs it
      blocks.push_back(runtime::Shard{n.name, n.outputs[0], std::vector<int64_t>(n.outputs[0].shape.size(), 0),
                                      n.outputs[0].shape, v.data});
    }
    return {std::move(blocks)};
  }
  void load_variables(const runtime::Checkpoint& checkpoint) override {
    const auto blocks = variable_blocks();
    for (const runtime::Shard& s : blocks.front())
      checkpoint.read(s.name, s.global, s.offsets, s.shape, const_cast<void*>(s.data));
  }
  Jit jit() const override {
    const auto& r = exec.jit_report();
    return Jit{r.kernels, r.compiled, r.compile_s, r.updates_in_place};
  }
  std::vector<std::pair<int64_t, runtime::StepTimeline>> timelines() const override { return {{0, exec.timeline()}}; }
  std::vector<std::pair<int64_t, runtime::StepBreakdown>> breakdowns() const override { return {{0, exec.breakdown()}}; }
  std::vector<std::string> gather_text(const std::string& text) override { return {text}; }
};

// A plan's ranks, on simulated devices of this process or one rank per process: each
// step's rows that this process's ranks read are loaded on the host (the whole batch for
// simulated devices; a data-parallel rank's part, or nothing, for one rank per process),
// then each rank of this process gets its microbatches' shards.
struct Devices final : Engine {
  runtime::LocalRun run;
  const Graph& graph;  // the training graph, at the global batch
  struct Host {
    std::string name;
    TensorType whole;
    runtime::LocalRun::Rows rows;  // what this process reads of the whole
    Shape shape;                   // of those rows
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
      // A scalar input is loaded whole, whoever reads it.
      Host h{graph.node(id).name, t, t.rank() ? run.rows(graph.node(id).name, t) : runtime::LocalRun::Rows{0, 1},
             t.shape, {}};
      if (t.rank()) h.shape[0] = h.rows.count();
      h.bytes.resize(static_cast<size_t>(TensorType{t.dtype, h.shape}.bytes()));
      inputs.push_back(std::move(h));
    }
  }
  // The rows of input `name` this process reads (empty: none).
  runtime::LocalRun::Rows rows(const std::string& name) const {
    for (const Host& h : inputs)
      if (h.name == name) return h.rows;
    throw Error("the plan's graph has no input '" + name + "'");
  }
  double step(Feeder& feeder, int64_t s) override {
    feeder.feed([&](const std::string& name) {
      for (Host& h : inputs)
        if (h.name == name)
          return Window{TensorRef{h.bytes.data(), h.whole.dtype, h.shape, TensorType{h.whole.dtype, h.shape}.numel()},
                        h.rows.begin};
      throw Error("the plan's graph has no input '" + name + "'");
    }, s);
    for (Host& h : inputs) run.feed(h.name, h.whole, h.bytes, h.rows.begin);
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
  std::vector<std::pair<int64_t, runtime::StepTimeline>> timelines() const override {
    std::vector<std::pair<int64_t, runtime::StepTimeline>> v;
    for (int64_t i = 0; i < run.local_ranks(); ++i) v.push_back({run.first_rank() + i, run.rank(i).timeline()});
    return v;
  }
  std::vector<std::pair<int64_t, runtime::StepBreakdown>> breakdowns() const override {
    std::vector<std::pair<int64_t, runtime::StepBreakdown>> v;
    for (int64_t i = 0; i < run.local_ranks(); ++i) v.push_back({run.first_rank() + i, run.rank(i).breakdown()});
    return v;
  }
  std::vector<std::string> gather_text(const std::string& text) override { return run.gather_text(text); }
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
  std::vector<std::vector<runtime::Shard>> variable_blocks() override { return run.variable_blocks(); }
  void load_variables(const runtime::Checkpoint& checkpoint) override { run.load_variables(checkpoint); }
  int64_t memory_bytes() const override {
    int64_t total = 0;
    for (auto& m : run.memory()) total += m.total();
    return total;
  }
};

}  // namespace tessel::detail
