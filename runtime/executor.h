// Executes a graph on one CPU device. This is the executor the multi-device runtime runs
// one instance of per rank.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "graph/graph.h"
#include "graph/tensor_ref.h"
#include "runtime/cpu_jit.h"
#include "runtime/fusion.h"

namespace tessel::runtime {

struct ExecutorOptions {
  uint64_t seed = 0;          // mixed into initializers and dropout masks
  bool use_blas = true;       // false: reference kernels for matrix products
  // Fuse elementwise chains and the reductions that end them (runtime/fusion.h) and run
  // them as JIT-compiled kernels (runtime/cpu_jit.h). false: every op runs its reference
  // kernel (for debugging and tests).
  bool jit = true;
  bool profile = false;       // time every kernel call (see Executor::profile())
  Parallel* parallel = nullptr;  // not owned; null: the process-wide ThreadPool
};

// A program computes named outputs and then applies one phase's variable updates.
struct ProgramSpec {
  std::string phase;                 // "" applies no updates
  std::vector<std::string> outputs;  // names from Graph::outputs()
};

// Prepare every program first, then initialize(): that plans memory for all of them at
// once. Inputs, variables and constants get buffers of their own; every other value gets
// an offset in one arena, shared with values whose lifetimes do not overlap. Nothing is
// allocated after initialize(). Not thread-safe: one thread drives an executor; kernels
// fan out over the thread pool.
class Executor {
 public:
  Executor(const Graph& graph, ExecutorOptions options = {});  // graph not owned; outlives this
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  int prepare(const ProgramSpec& spec);
  // Compiles the programs' fused kernels, plans and allocates memory, then fills every
  // variable from the graph's stored data or its initializer, and every constant. Call
  // once, after the last prepare().
  void initialize();
  void run(int program);

  // Views of buffers (after initialize()), by the values of the graph given to the
  // constructor. Inputs may be written between runs; outputs
  // hold the last run's results until the next run. Other values share arena space, so
  // their contents are only meaningful while a program computes them; a value that lives only
  // inside a fused kernel has no buffer.
  TensorRef input(std::string_view name);
  TensorRef output(std::string_view name);
  TensorRef value(Value v);
  bool has_buffer(Value v) const;

  // Copies every variable's current value into g's stored data, so that save_graph()
  // embeds the trained parameters. g is this graph or a prefix of it (the model before
  // training nodes were added); variables g does not have are skipped.
  void export_variables(Graph& g) const;

  int64_t bytes_allocated() const { return bytes_allocated_; }
  int64_t arena_bytes() const { return arena_bytes_; }  // the shared part of bytes_allocated

  // With ExecutorOptions::profile: wall time per op type over all runs so far, largest
  // first.
  struct OpTime {
    std::string op;
    int64_t calls = 0;
    double ms = 0;
  };
  std::vector<OpTime> profile() const;
  // The same per node that runs (fused kernels under their last node's name), with its
  // input and output shapes ("[256,784] [784,1024] -> [256,1024]"), largest first.
  struct NodeTime {
    std::string node, op, shapes;
    int64_t calls = 0;
    double ms = 0;
  };
  std::vector<NodeTime> node_profile() const;
  const Graph& graph() const { return source_; }
  // The graph that runs: the fused graph with jit, else the one given.
  const Graph& executed_graph() const { return graph_; }

  struct JitReport {
    int64_t fused_nodes = 0, nodes_fused = 0;  // fused kernels; the nodes they replace
    int64_t kernels = 0;                        // distinct kernels among them
    int64_t compiled = 0, disk_hits = 0;        // compiled by LLVM; loaded from the disk cache
    double compile_s = 0;                       // fusion (constructor) and compilation (initialize())
    int64_t updates_in_place = 0;  // updates written over their variables (no copy after the step)
  };
  const JitReport& jit_report() const { return jit_report_; }

 private:
  struct Step {
    KernelFn fn = nullptr;
    const Node* node = nullptr;
    std::vector<TensorRef> in, out;  // data pointers set by initialize()
    FusedFn jit = nullptr;           // a fused node's compiled kernel
    const ops::FusedKernelDesc* desc = nullptr;
    std::vector<const float*> in_ptrs;  // for jit, set by initialize()
    std::vector<float*> out_ptrs;
    double ms = 0;  // accumulated when profiling
    int64_t calls = 0;
  };
  struct Program {
    std::string phase;
    std::vector<int32_t> nodes;  // every node the program needs, in order
    std::vector<Step> steps;
    std::vector<Value> keep;     // outputs and update values: live to the end
    std::vector<std::pair<TensorRef, TensorRef>> updates;  // (variable, new value)
  };
  // With jit: an update whose new value a fused kernel computes element by element from its
  // variable, where nothing reads the variable after that kernel, is written over the
  // variable (no buffer of its own, no copy after the step). Before compile_kernels().
  void write_updates_in_place();
  void compile_kernels();
  void plan_and_allocate();
  void* allocate(int64_t bytes, const Node& n);
  void fill_source(int32_t node, const KernelCtx& ctx);
  TensorRef ref(Value v) const;
  Value run_value(Value source) const;  // a source value in the graph that runs (invalid: fused away)

  const Graph& source_;
  std::unique_ptr<FusedGraph> fused_;  // with jit
  const Graph& graph_;                 // the graph that runs
  ExecutorOptions options_;
  std::vector<std::unique_ptr<ops::FusedKernelDesc>> descs_;  // per fused node, in node order
  std::vector<FusedFn> fused_fns_;
  std::vector<std::pair<Value, int32_t>> in_place_;  // (update value, its variable's node)
  JitReport jit_report_;
  Parallel* parallel_;
  std::vector<std::vector<void*>> buffers_;  // per node, per output; aliased for views
  std::vector<std::unique_ptr<std::byte[], void (*)(std::byte*)>> owned_;
  std::vector<Program> programs_;
  int64_t bytes_allocated_ = 0;
  int64_t arena_bytes_ = 0;
  bool initialized_ = false;
};

}  // namespace tessel::runtime
