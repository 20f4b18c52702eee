// From per-layer profiles to a predicted training step: contiguous layer ranges per
// pipeline stage, each stage's program in schedule order (GPipe or 1F1B) with its
// collectives, pipeline sends and gradient reductions, run through the simulator.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "planner/analysis.h"
#include "planner/simulator.h"

namespace tessel::planner {

struct StageEstimate {
  int64_t first_layer = 0, end_layer = 0;  // [first, end) in the expanded layer list
  std::string layers;                      // "block0..block5" or "wte, block0..block4"
  double weight_bytes = 0, grad_bytes = 0, optimizer_bytes = 0, activation_bytes = 0, working_bytes = 0;
  double io_bytes = 0;                     // batch inputs, graph outputs and constants its ranks hold
  double peak_memory_bytes = 0;            // from the simulation (static parts + live activations)
  double compute_s = 0, exposed_comm_s = 0, bubble_s = 0, optimizer_s = 0;
  double flops = 0;                        // hardware FLOPs this stage's devices execute, per step, per device
};

struct PlanEstimate {
  PlanConfig config;
  double step_time_s = 0;
  // Breakdown on the busiest device: compute (forward, backward, recompute), optimizer,
  // exposed communication, pipeline bubble; they sum to the step time.
  double compute_s = 0, optimizer_s = 0, exposed_comm_s = 0, bubble_s = 0;
  double model_flops_per_step = 0;     // forward + backward of the model, no recomputation
  double hardware_flops_per_step = 0;  // including recomputation
  double tflops_per_device = 0;        // hardware FLOP/s per device, in TFLOP/s
  double mfu = 0;                      // model FLOPs / (step time x devices x peak)
  double peak_memory_bytes = 0;        // max over devices
  double memory_capacity_bytes = 0;
  bool fits = true;
  std::string fit_problem;             // which device, by how much, what dominates
  std::vector<StageEstimate> stages;
  std::vector<double> traffic_bytes_per_level;  // bytes each device sends per step, per link level
  std::vector<std::string> notes;
  std::shared_ptr<Simulation> simulation;  // set when asked for (traces)
};

// Contiguous ranges of layers per stage minimising the slowest stage: bounds[s] is stage
// s's first layer, bounds[stages] the layer count.
std::vector<int64_t> partition_layers(const std::vector<double>& cost, int64_t stages);
// The stage bounds of a config: its pinned layers per stage (checked against the layer
// count), or partition_layers of the layers' busy times.
std::vector<int64_t> stage_bounds(const std::vector<double>& busy, const PlanConfig& c);
// Per expanded layer: the time one microbatch keeps a device busy (compute, the
// collectives it waits for, and the forward again when recomputing).
std::vector<double> layer_busy_times(const ModelProfile& mp, const PlanConfig& c);

PlanEstimate estimate_plan(const ModelProfile& mp, const PlanConfig& c, const ClusterSpec& cluster,
                           const CostOptions& opt, bool keep_simulation = false);

}  // namespace tessel::planner
