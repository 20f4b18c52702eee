// The automatic search: given a model (as a training-graph builder), a global batch, a
// cluster and optional pins, find the plan with the best predicted step time that fits
// every device's memory; and say why the runners-up lost. Deterministic.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "planner/pipeline.h"

namespace tessel::planner {

// A training graph for one microbatch of every data-parallel replica together (batch =
// dp x samples per replica: the planner splits it over dp, which is what makes gradients
// partial sums to all-reduce), and how many copies each of its layers stands for (a
// one-block stand-in of a 96-block model: {"block0", 96}).
struct PlannedModel {
  std::shared_ptr<const Graph> graph;
  std::string phase = "train";
  std::vector<std::pair<std::string, int64_t>> repeats;
};
using ModelBuilder = std::function<PlannedModel(int64_t batch)>;

struct Pins {
  std::optional<int64_t> dp, tp, pp, zero, microbatches;
  std::optional<Schedule> schedule;
  std::optional<Recompute> recompute;
  std::optional<bool> sequence_parallel;
  std::vector<int64_t> stage_layers;  // empty: balanced (pins pp to its size otherwise)
};

struct Alternative {
  PlanEstimate estimate;
  std::string why;  // "tp=16 crosses nodes: exposed communication +41 %"
};

struct SearchResult {
  PlanEstimate best;
  ModelProfile best_profile;
  std::vector<Alternative> alternatives;  // the next best plans, best first
  double search_time_s = 0;
  int64_t candidates = 0, simulated = 0;
};

struct SearchOptions {
  CostOptions cost;
  // Microbatch sizes tried (samples per data-parallel replica per microbatch): powers of
  // two up to this, when microbatches are not pinned.
  int64_t max_microbatch_size = 8;
  int alternatives = 4;
  // The model builder fixes the graph's batch (a graph file): dp x samples per replica
  // must equal it.
  std::optional<int64_t> fixed_graph_batch;
};

// Throws tessel::Error when no plan satisfies the pins (naming why: divisibility, device
// count) ; when plans exist but none fits in memory, returns the one needing least memory
// with fits = false and its fit_problem filled in.
SearchResult search_plan(const ModelBuilder& model, int64_t global_batch, const ClusterSpec& cluster,
                         const Pins& pins, const SearchOptions& opt);

}  // namespace tessel::planner
