// The C++ training API. Build a model with the DSL, then train it with code that reads like
// training on one device; on several (simulated) devices the plan is searched, pinned or
// loaded, and each step's batch is split over data-parallel replicas and microbatches behind
// the scenes:
//
//   tessel::Model m;
//   Tensor x = m.input("x", {64, 784}, DType::f32, "data");
//   ...
//   tessel::Trainer trainer(m, loss, tessel::AdamW{.lr = 3e-4}, tessel::Devices{.count = 4});
//   std::cout << trainer.report();
//   for (...) double l = trainer.step(tessel::Batch().set("x", xs).set("labels", ys));
//
// A Trainer is not thread-safe; one step runs on every device at once.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "frontend/distributed.h"
#include "frontend/optim.h"
#include "frontend/tensor.h"
#include "runtime/process_env.h"

namespace tessel {

namespace detail {
struct Engine;
}
namespace runtime {
class ThreadPool;
}

struct SGD {
  double lr = 0.01, momentum = 0, weight_decay = 0, clip_norm = 0;
  operator OptimizerConfig() const;  // NOLINT: an optimizer is its configuration
};
struct AdamW {
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0, clip_norm = 0;
  operator OptimizerConfig() const;  // NOLINT
};

// Where to train: `count` simulated devices of this host (threads of this process; 0 or 1:
// one device, no plan), with the plan's pins (the search fills in the rest) or a plan file.
// Under a launcher (`tessel launch`, mpirun, srun, torchrun-style variables: see
// runtime/process_env.h) each process is one rank of the launcher's world, which sets the
// device count (`count` may be left at 1, or must equal it); the pins apply to that world.
struct Devices {
  int64_t count = 1;
  planner::Pins pins;
  std::string plan_file;  // from `tessel plan --output`
  // With count 1: run the planner's plan for one device (its microbatches, its prediction)
  // on the plan engine, as for several devices; false: the one-device engine with
  // TrainerOptions::accumulate.
  bool plan_one = false;
};

struct TrainerOptions {
  uint64_t seed = 0;  // initial parameters and dropout
  bool jit = true;    // fused kernels compiled for this CPU
  int threads = 0;    // cores to use (0: all)
  int64_t bucket_bytes = 25 << 20;
  double comm_timeout_s = 300;
  // The ranks' engine: "inprocess" (simulated devices sharing memory), "gloo" (each rank its
  // own endpoint over TCP) or "mpi" (processes under mpirun). Empty: inprocess for simulated
  // devices, gloo across processes.
  std::string comm;
  bool use_blas = true;  // matrix products on OpenBLAS (else the reference kernels)
  bool overlap = true;   // collectives on a communication thread beside the compute
  // One device only: the graph takes one microbatch of batch()/accumulate samples and the
  // step runs `accumulate` of them, averaging their gradients before the update.
  int64_t accumulate = 1;
  // Record each step's ops as they ran on every rank (the timeline a trace and the measured
  // breakdown come from): two clock reads per op.
  bool timeline = false;
};

// One optimizer step's inputs, by input name: the whole batch each, or only the rows
// Trainer::rows names (with one process per rank, a process need load only those).
class Batch {
 public:
  Batch& set(const std::string& input, std::span<const float> values);
  Batch& set(const std::string& input, std::span<const int32_t> values);
  const std::vector<std::byte>* find(const std::string& input, DType dt) const;

 private:
  std::map<std::string, std::pair<DType, std::vector<std::byte>>> data_;
};

// Rows [begin, end) along an input's first dim (the batch).
struct BatchRows {
  int64_t begin = 0, end = 0;
  int64_t count() const { return end - begin; }
};

class Trainer {
 public:
  // Trains `model` (a copy of its graph; the model is not changed) to minimise the scalar
  // `loss`, one optimizer step per batch. Throws tessel::Error naming the node for a bad loss
  // and naming why for pins that cannot be met.
  Trainer(const Model& model, const Tensor& loss, const OptimizerConfig& optimizer, const Devices& devices = {},
          const TrainerOptions& options = {});
  // The same from a training graph (gradients and updates already added, or added here).
  Trainer(Graph graph, const OptimizerConfig& optimizer, const Devices& devices = {}, const TrainerOptions& options = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // The plan (null on one device), and a few lines saying what it is and predicts.
  const DevicePlan* plan() const { return plan_ ? &*plan_ : nullptr; }
  std::string report() const;
  const Graph& graph() const { return graph_; }  // the training graph
  int64_t batch() const { return batch_; }       // samples per step, as the model's inputs say

  // One optimizer step on the whole batch: every input the model reads (f32 or i32, the
  // input's whole shape). Returns the loss.
  double step(const Batch& batch);
  // The rows of input `name` this process's ranks read each step: all of them in one process;
  // under a launcher, this rank's part of the batch (empty for a pipeline stage that does
  // not read it). A Batch may give just these rows.
  BatchRows rows(const std::string& input) const;
  int64_t steps() const { return steps_; }
  // A parameter's current values, gathered whole from the devices that hold it (f32).
  std::vector<float> parameter(const std::string& name) const;
  // Writes the trained variables into `g` (a graph with nodes of the same names).
  void export_variables(Graph& g) const;

  detail::Engine& engine() { return *engine_; }  // for the training drivers (frontend/)
  // Under a launcher: this process's rank and its world (null otherwise).
  const runtime::ProcessRole* process() const { return role_ ? &*role_ : nullptr; }

 private:
  Graph graph_;
  std::optional<DevicePlan> plan_;
  std::optional<runtime::ProcessRole> role_;
  std::unique_ptr<runtime::ThreadPool> pool_;  // with TrainerOptions::threads, one device
  std::unique_ptr<detail::Engine> engine_;
  int64_t batch_ = 0, steps_ = 0, accumulate_ = 1;
};

}  // namespace tessel
