// Reading and writing plan files (.tsp, planner/plan.proto).
#pragma once

#include <string>
#include <vector>

#include "planner/partition.h"
#include "planner/pipeline.h"

namespace tessel::planner {

struct PlanFile {
  std::string model, cluster;
  int64_t global_batch = 0;
  PlanConfig config;
  PlanEstimate estimate;                         // costs and stages as predicted
  std::vector<std::pair<std::string, Sharding>> parameters;
  std::vector<RankProgram> programs;             // empty when not partitioned
  std::vector<std::string> notes;
};

// Writes atomically; errors name the path.
void save_plan(const PlanFile& p, const std::string& path);
// Checks format and version; per-rank programs are loaded through the graph reader (with
// its checks) against `registry`.
PlanFile load_plan(const std::string& path, const OpRegistry& registry);

}  // namespace tessel::planner
