// What a training run measured about its own steps, from every rank's timeline
// (runtime::Executor::timeline): the step split into compute, optimizer, exposed
// communication, pipeline bubble and the rest, per rank (medians over the timed steps), set
// beside the planner's prediction; and a Chrome-trace / Perfetto JSON file of a few steps of
// every rank, both streams, each op with its node and source line.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "frontend/engine.h"
#include "planner/pipeline.h"
#include "planner/report.h"

namespace tessel {

struct MeasuredParts {
  double step_s = 0, compute_s = 0, optimizer_s = 0, exposed_comm_s = 0, bubble_s = 0, other_s = 0;
};

struct MeasuredSteps {
  std::vector<MeasuredParts> ranks;  // by global rank: medians of each part over the timed steps
  std::vector<int64_t> peak_bytes;   // by global rank: the executor's arena plus its variables and inputs
  int64_t busiest = 0;               // the rank with the most compute and optimizer time
  // The traced steps: per step, from its earliest start on any rank to its latest end.
  std::vector<std::pair<int64_t, double>> traced_step_s;
  std::string trace_json;            // in the process of rank 0 (empty elsewhere, or with no trace)
  // The first traced step, every rank, from its earliest start (for the HTML report).
  std::vector<planner::TimelineEvent> first_step;
};

class StepRecorder {
 public:
  // Traces steps [trace_first, trace_first + trace_steps) (none when trace_steps is 0).
  StepRecorder(int64_t trace_first, int64_t trace_steps) : trace_first_(trace_first), trace_steps_(trace_steps) {}
  // After each timed step (the engine records timelines), which ran from start_ns to end_ns
  // (steady_clock; the driver's whole step: feeding the inputs, every rank's step, reading
  // the loss): this process's ranks' breakdowns, and their whole timelines when the step is
  // traced, inside a "step" event of that span.
  void after_step(const detail::Engine& engine, int64_t step, int64_t start_ns, int64_t end_ns);
  // Collective across processes (every process calls it once, after the last step):
  // gathers every rank's figures; rank 0's process also gets the trace. `memory`: this
  // process's ranks' bytes, in order.
  MeasuredSteps finish(detail::Engine& engine, const std::vector<int64_t>& memory, double step_ms_median);

 private:
  int64_t trace_first_, trace_steps_;
  std::vector<int64_t> ranks_;                      // global ranks of this process
  std::vector<std::vector<MeasuredParts>> parts_;   // per local rank, per timed step
  std::string events_;                              // traced events, a tab-separated line each
  int64_t origin_ns_ = -1;                          // the first traced step's earliest start here
};

// The prediction and the measurement side by side: step time and its parts (busiest rank,
// as the planner reports them), peak memory per rank.
void print_predicted_vs_measured(std::ostream& os, const planner::PlanEstimate& predicted,
                                 const std::vector<int64_t>& rank_stage, const MeasuredSteps& m, double step_ms_median);
// The same as JSON members (no braces): "predicted_step_ms":..,"predicted":{..},"measured":{..},"ranks":[..].
std::string predicted_vs_measured_json(const planner::PlanEstimate& predicted, const std::vector<int64_t>& rank_stage,
                                       const MeasuredSteps& m, double step_ms_median);

}  // namespace tessel
