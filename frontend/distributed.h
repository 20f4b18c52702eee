// Plans for N simulated devices of this host, and the check that a plan trains what one
// device trains: used by `tessel train --devices N` and `tessel verify`.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "frontend/optim.h"
#include "planner/partition.h"
#include "planner/plan_file.h"
#include "planner/search.h"
#include "runtime/executor.h"

namespace tessel {

// The training graph of a DSL model spec (mlp:..., gpt:..., llama:...) at the global batch:
// the model, its gradients and the optimizer's updates (one optimizer step per batch; a plan
// splits the batch into microbatches itself).
// A graph file (.tsg, or any name without ':') is loaded instead; it fixes its own batch
// (global_batch must match it, or be 0), and is trained as it is if it already has updates.
Graph training_graph(const std::string& spec, int64_t global_batch, const OptimizerConfig& oc);
bool is_graph_file(const std::string& model);

struct DevicePlan {
  planner::PlanConfig config;
  std::vector<int64_t> stage_bounds;  // layer index where each stage starts, then the layer count
  planner::SearchResult search;       // predicted costs, alternatives
  std::string cluster;                // "local:4"
  std::string calibrated;             // when local:N comes from `tessel calibrate`: its date; else empty
  std::string summary() const;        // a few lines: mesh, stages, predicted step and memory
  // The rank programs for the training graph the plan was made for.
  std::vector<planner::RankProgram> programs(const Graph& training) const;
};

// The best plan for the training graph `training` (at the global batch) on `devices`
// simulated devices of this host under `pins`, using every device. Throws tessel::Error when
// the pins cannot be met (naming why: the batch does not split, heads do not divide, more
// stages than layers, devices left idle).
DevicePlan plan_for_devices(const Graph& training, int64_t devices, const planner::Pins& pins, int alternatives = 4);
// Pins that make the search choose `c` again (its degrees, ZeRO stage, microbatches, schedule,
// recomputation, sequence parallelism and the layers of each of `stages`).
planner::Pins pins_for(const planner::PlanConfig& c, const std::vector<planner::StageEstimate>& stages);

// Tensor-parallel split pins as a user writes them, "PATTERN=DIM,PATTERN=DIM,...", resolved
// against the parameters of `g`: PATTERN is a parameter's whole name, with `*` matching any
// run of characters ("*/attn/proj/weight"); DIM is the dim tensor parallelism splits, or
// `none` to keep it whole. The first pattern a parameter matches applies; parameters no
// pattern matches are left to the search (planner::Pins::splits). Throws naming the
// pattern when it is malformed or matches no parameter, and the parameter (shape, where it
// was made) when the dim is out of its range.
std::map<int32_t, int8_t> split_pins(const Graph& g, const std::string& list);

// The plan a plan file (`path`, from `tessel plan --output`) holds. devices > 0: the plan
// must be for that many devices, else an error says what it is for.
DevicePlan device_plan(const planner::PlanFile& f, const std::string& path, int64_t devices);

struct VerifyOptions {
  std::string spec;
  int64_t batch = 8;  // global, per optimizer step
  int64_t steps = 5;
  uint64_t seed = 0;
  OptimizerConfig optimizer;
  runtime::ExecutorOptions rank;
  double tolerance = 1e-5;
  double timeout_s = 300;
  std::string comm;  // the ranks' engine: inprocess or gloo ("": inprocess, gloo under a launcher)
  // Tests only: applied to the rank programs right after partitioning, before they run, to
  // plant a mistake that the comparison must catch. Empty: the programs run as planned.
  std::function<void(std::vector<planner::RankProgram>&)> rewrite_programs;
};

struct VerifyReport {
  double max_rel_diff_loss = 0;    // over steps: |plan - one| / |one|
  double max_rel_diff_params = 0;  // after the last step, relative to max(tensor's largest magnitude, lr)
  std::string worst_parameter;     // "fc1/weight[17]"
  std::vector<double> loss_one, loss_plan;
  std::vector<int64_t> arena_bytes;      // per rank of this process
  std::vector<int64_t> memory_bytes;     // per rank of this process: arena, variables, inputs and outputs
  std::vector<double> predicted_bytes;   // per rank of this process: the plan's peak for its stage
  bool ok = false;
  std::string json() const;
};

// Runs the plan on simulated devices and the whole batch on one device, on the same random
// inputs and initial parameters, for opt.steps optimizer steps.
VerifyReport verify_plan(const VerifyOptions& opt, const DevicePlan& plan);

}  // namespace tessel
