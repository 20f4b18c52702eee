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

namespace tessel::runtime {

struct ExecutorOptions {
  uint64_t seed = 0;          // mixed into initializers and dropout masks
  bool use_blas = true;       // false: reference kernels only (for debugging and tests)
  bool profile = false;       // time every kernel call (see Executor::profile())
  Parallel* parallel = nullptr;  // not owned; null: the process-wide ThreadPool
};

// A program computes named outputs and then applies one phase's variable updates.
struct ProgramSpec {
  std::string phase;                 // "" applies no updates
  std::vector<std::string> outputs;  // names from Graph::outputs()
};

// Buffers are allocated in prepare(), before the first step, and reused by every run.
// Not thread-safe: one thread drives an executor; kernels fan out over the thread pool.
class Executor {
 public:
  Executor(const Graph& graph, ExecutorOptions options = {});  // graph not owned; outlives this
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  int prepare(const ProgramSpec& spec);
  // Fills every variable from the graph's stored data or its initializer, and every
  // constant. Call once before the first run (prepare() first).
  void initialize();
  void run(int program);

  // Views of live buffers. The input buffer may be written between runs.
  TensorRef input(std::string_view name);
  TensorRef output(std::string_view name);
  TensorRef value(Value v);
  bool has_buffer(Value v) const;

  // Copies every variable's current value into g's stored data, so that save_graph()
  // embeds the trained parameters. g is this graph or a prefix of it (the model before
  // training nodes were added); variables g does not have are skipped.
  void export_variables(Graph& g) const;

  int64_t bytes_allocated() const { return bytes_allocated_; }

  // With ExecutorOptions::profile: wall time per op type over all runs so far, largest
  // first.
  struct OpTime {
    std::string op;
    int64_t calls = 0;
    double ms = 0;
  };
  std::vector<OpTime> profile() const;
  const Graph& graph() const { return graph_; }

 private:
  struct Step {
    KernelFn fn;
    const Node* node;
    std::vector<TensorRef> in, out;
    double ms = 0;  // accumulated when profiling
    int64_t calls = 0;
  };
  struct Program {
    std::vector<Step> steps;
    std::vector<std::pair<TensorRef, TensorRef>> updates;  // (variable, new value)
  };
  void allocate(int32_t node);
  void fill_source(int32_t node, const KernelCtx& ctx);
  KernelFn kernel_for(const Node& n) const;

  const Graph& graph_;
  ExecutorOptions options_;
  Parallel* parallel_;
  std::vector<std::vector<void*>> buffers_;  // per node, per output; aliased for views
  std::vector<std::unique_ptr<std::byte[], void (*)(std::byte*)>> owned_;
  std::vector<Program> programs_;
  int64_t bytes_allocated_ = 0;
  bool initialized_ = false;
};

}  // namespace tessel::runtime
