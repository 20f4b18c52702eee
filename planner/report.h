// What `tessel plan` shows: a readable text report, the same as JSON for machines, a
// Graphviz view of the graph coloured by pipeline stage with collectives drawn as their
// own nodes, the simulated step as a Chrome trace, and one self-contained HTML page of it all.
#pragma once

#include <string>
#include <vector>

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

// One interval of a timeline (simulated or measured): what ran on which rank's stream.
struct TimelineEvent {
  int64_t rank = 0;
  std::string stream;  // "compute" or "comm"
  std::string name;    // node or task name, e.g. "block0/attn/matmul (mb 1)"
  std::string kind;    // "forward", "backward", "optimizer", "collective", "send", "recv", "wait", "other", ...
  double start_s = 0, dur_s = 0;  // from the start of the step
};
// What a run measured, set beside the predictions (tessel train --html).
struct MeasuredRun {
  double step_s = 0;  // median step
  double compute_s = 0, optimizer_s = 0, exposed_comm_s = 0, bubble_s = 0;  // busiest rank
  std::vector<double> peak_bytes;        // per rank: what the rank allocates
  std::vector<TimelineEvent> timeline;   // one measured step, every rank
};
// Events of a simulated step (Simulation::run() result) in the same form: one per task and
// rank it occupies (a collective appears on every rank of its group), sorted by rank, stream
// (compute first) and start. Tasks that take no time (memory bookkeeping) are left out.
std::vector<TimelineEvent> timeline_events(const Simulation& sim, const Simulation::Result& r);
// One self-contained HTML page (no network: styles inline, drawings as inline SVG, no external
// scripts or fonts): the plan's summary; the mesh (pp x dp x tp) and stages drawn, each stage's
// ranks and layer range; per-device memory as stacked bars (weights, gradients, optimizer state,
// activations, working) against the capacity; the simulated timeline (every rank, both streams,
// coloured by kind, with a time axis; names in <title> tooltips); the measured timeline when
// `measured` has one; the alternatives with their predicted step time and why they lost; and a
// predicted-versus-measured table (step time and its breakdown, peak memory per rank) when
// `measured` is given. Parts carry stable ids: summary, mesh, stages, memory,
// timeline-simulated, timeline-measured, alternatives, predicted-vs-measured.
// Without r.best.simulation, the step is simulated again in detail from r.best_profile (or
// from ctx.graph) on ctx.spec, as for a trace; the page says so when ctx lacks what that needs.
// Timelines draw at most kMaxBarsPerLane bars per rank and stream; tasks narrower than a pixel
// are merged with their neighbours, or left out when alone; the page counts both.
inline constexpr int kMaxBarsPerLane = 2000;
std::string report_html(const SearchResult& r, const ReportContext& ctx, const MeasuredRun* measured = nullptr);

}  // namespace tessel::planner
