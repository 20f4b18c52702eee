// A plan's parallel configuration, and the placements it gives each parameter, its
// optimizer state and the data inputs: data parallelism, ZeRO 1/2/3, Megatron-style tensor
// parallelism and sequence parallelism, all as placements in the sharding algebra.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "graph/graph.h"
#include "planner/sharding.h"

namespace tessel::planner {

enum class Schedule : uint8_t { gpipe, one_f_one_b };
// full: keep each layer's input, rerun its forward before its backward. selective (Korthikanti
// et al. 2022): keep everything but the attention core (QK^T, softmax, dropout, scores x V),
// whose activations grow with the square of the sequence, and rerun only that.
enum class Recompute : uint8_t { none, full, selective };
// mixed: bf16 compute, activations and gradients; f32 master weights and optimizer state.
enum class Precision : uint8_t { f32, mixed };

struct PlanConfig {
  int64_t dp = 1, tp = 1, pp = 1;
  int zero = 0;                    // 0-3: optimizer state, + gradients, + parameters sharded over dp
  bool sequence_parallel = false;  // norm/dropout regions split along the sequence over tp
  int64_t microbatches = 1;        // per optimizer step and data-parallel replica
  Schedule schedule = Schedule::one_f_one_b;
  Recompute recompute = Recompute::none;
  // Layers per pipeline stage, in the order planner/layers.h lists them (embedding, blocks,
  // final norm, loss); empty: balanced by the cost model.
  std::vector<int64_t> stage_layers;
  // The tensor-parallel split of each parameter, by node id of the training graph (its
  // parameters come before the gradients and updates, so one split serves any optimizer): the
  // dim split over tp, or -1 (replicated; also for every other node and beyond the end). Chosen by the search from
  // the ops' sharding rules and the cost model (planner/analysis.h choose_tensor_parallel);
  // empty with tp > 1: partition() chooses it.
  std::vector<int8_t> tp_dims;

  int64_t devices() const { return dp * tp * pp; }
  std::string str() const;  // "dp=8 tp=8 pp=16 zero=1 mb=192 1f1b recompute=full"
  bool operator==(const PlanConfig&) const = default;
};
std::string_view schedule_name(Schedule s);
std::string_view recompute_name(Recompute r);
std::optional<Recompute> recompute_from_name(std::string_view s);

// One step of a pipeline stage's program: the forward or backward pass of a microbatch, or
// the optimizer step (once, after every microbatch's backward).
enum class Section : uint8_t { forward, backward, apply };
std::string_view section_name(Section s);
struct ScheduleStep {
  Section section;
  int64_t microbatch = 0;  // forward/backward only
  bool operator==(const ScheduleStep&) const = default;
};
// Stage `stage`'s order of work for one optimizer step under c.schedule with
// c.microbatches microbatches: GPipe runs every forward, then every backward; 1F1B runs
// min(pp - stage - 1, m) forwards to fill the pipeline, then alternates one forward and one
// backward, then drains the remaining backwards. Both end with the optimizer step.
std::vector<ScheduleStep> stage_schedule(const PlanConfig& c, int64_t stage);

// The mesh of one pipeline stage: dp x tp, tp innermost (so a tp group of 8 stays in a
// node), as Megatron orders ranks. Stage s owns ranks [s*dp*tp, (s+1)*dp*tp).
Mesh stage_mesh(const PlanConfig& c);

// The mesh placements are found on: the stage mesh with a leading "microbatch" axis of
// c.microbatches. A microbatch is a split of the batch in time rather than over devices, so
// local shapes on this mesh are what one rank computes for one microbatch; every rank holds
// coordinate 0 of it. Partial sums over that axis are not reduced by a collective: the
// runtime adds up the microbatches' values (gradients, the loss). Anything else the axis
// would need (a value gathered across the batch, a batch statistic used in the forward pass)
// means the model cannot be split into microbatches.
Mesh planning_mesh(const PlanConfig& c);
inline constexpr int kMicrobatchAxis = 0;
// A placement on the planning mesh without its microbatch axis (what ranks and plan files see).
Sharding on_stage_mesh(const Sharding& s);

// The batch of a graph: the size of every batched input's batch dim (they must agree).
// Throws naming the inputs when they disagree or there is none.
int64_t graph_batch(const Graph& g);

// Why tensor-parallel splits (PlanConfig::tp_dims) do not fit graph `g`: a split of a node
// that is not a parameter of it, or of a dim it lacks (a plan for another model); empty if
// they fit.
std::string tp_dims_problem(const Graph& g, const std::vector<int8_t>& tp_dims);

// The dim of an input that holds the batch: its "batch_dim" attribute, else 0 (-1 for a
// scalar or an input marked as not batched).
int input_batch_dim(const Node& input);

// The variable whose placement a variable takes: a parameter itself, the parameter that
// optimizer state serves when it has its shape; null for other state (counters).
const Node* owner_parameter(const Graph& g, const Node& variable);

// Placement of a parameter (or of the optimizer state serving it) as it is
// stored, and as its consumers see it (they differ under ZeRO-3: stored split over dp,
// gathered for use).
struct ParameterPlacement {
  Sharding stored, used;
};
ParameterPlacement parameter_placement(const Graph& g, const Node& parameter, const PlanConfig& c,
                                       const Mesh& m, bool optimizer_state);

// The placement of every source node under a config: inputs split along the batch over dp
// (and along the sequence over tp with sequence parallelism); parameters as stored (split
// over dp under ZeRO-3: place_graph gathers them for their users), optimizer state as
// parameter_placement says; constants replicated.
SourcePlacement source_placements(const Graph& g, const PlanConfig& c, const Mesh& m);

// Placements of the graph's `nodes` (all: empty) under a config: its source placements,
// propagated with the config's hints (sequence parallelism).
// `same_as` as propagate_graph takes it.
GraphPlacement place_graph(const Graph& g, const PlanConfig& c, const Mesh& m, std::span<const int32_t> nodes = {},
                           std::span<const int32_t> same_as = {}, std::span<const char> keep = {},
                           const GraphPlacement* base = nullptr, GraphPlacement* reuse = nullptr);

// Why a placement on the planning mesh cannot run as microbatches (planning_mesh): a value
// summed over the batch that the forward or backward pass reads, or one gathered across the
// batch; empty when it can.
std::string microbatch_problem(const Graph& g, const GraphPlacement& gp, const Mesh& m);

}  // namespace tessel::planner
