// The automatic search: given a training graph (at the global batch: its batched inputs
// say how many samples a step takes), a cluster and optional pins, find the plan with the
// best predicted step time that fits every device's memory; and say why the runners-up
// lost. Deterministic. The graph is all it reads: microbatch shapes come from its inputs'
// batch dims, layers and their repetition from its structure (planner/layers.h).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "planner/pipeline.h"

namespace tessel::planner {

struct Pins {
  std::optional<int64_t> dp, tp, pp, zero, microbatches;
  std::optional<Schedule> schedule;
  std::optional<Recompute> recompute;
  std::optional<bool> sequence_parallel;
  std::vector<int64_t> stage_layers;  // empty: balanced (pins pp to its size otherwise)
  // Tensor-parallel splits the user fixed: parameter node -> the dim tp splits (-1: kept
  // whole). A pin holds for every layer of the parameter's class (its counterparts); the
  // search chooses the rest around them and drops degrees that do not divide a pinned dim.
  std::map<int32_t, int8_t> splits;
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
};

// The options `tessel plan` and `tessel train` both search with, so that a plan inspected is
// the plan trained: mixed precision on devices whose bf16 peak is over 4x their f32 peak
// (tensor cores), f32 otherwise; on a cluster of simulated CPU devices (no tensor cores)
// every power-of-two microbatch size up to the whole batch is tried (small models on a
// host gain from any of them, and the search stays quick), on others up to 8.
SearchOptions default_search_options(const Graph& g, const ClusterSpec& cluster);

// Throws tessel::Error when no plan satisfies the pins (naming why: divisibility, device
// count) ; when plans exist but none fits in memory, returns the one needing least memory
// with fits = false and its fit_problem filled in.
SearchResult search_plan(const Graph& g, const std::string& phase, const ClusterSpec& cluster, const Pins& pins,
                         const SearchOptions& opt);

}  // namespace tessel::planner
