// What `tessel plan` shows: a readable text report, the same as JSON for machines, a
// Graphviz view of the graph coloured by pipeline stage with collectives drawn as their
// own nodes, and the simulated step as a Chrome trace.
#pragma once

#include <string>

#include "planner/search.h"

namespace tessel::planner {

struct ReportContext {
  std::string model;    // "gpt layers=96 d_model=12288 ..."
  std::string cluster;  // the spec as given
  int64_t global_batch = 0;
  const ClusterSpec* spec = nullptr;
  const CostOptions* cost = nullptr;
  const Graph* graph = nullptr;  // the training graph planned: for placements and the DOT view
  std::string phase = "train";
};

std::string report_text(const SearchResult& r, const ReportContext& ctx);
std::string report_json(const SearchResult& r, const ReportContext& ctx);
// Nodes of the training graph coloured by the stage of their layer; edges that need a
// collective get a box naming it.
std::string plan_dot(const SearchResult& r, const ReportContext& ctx);

}  // namespace tessel::planner
