// A plan's parallel configuration, and the placements it gives each parameter, its
// optimizer state and the data inputs: data parallelism, ZeRO 1/2/3, Megatron-style tensor
// parallelism and sequence parallelism, all as placements in the sharding algebra.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "graph/graph.h"
#include "planner/sharding.h"

namespace tessel::planner {

enum class Schedule : uint8_t { gpipe, one_f_one_b };
enum class Recompute : uint8_t { none, full };
// mixed: bf16 compute, activations and gradients; f32 master weights and optimizer state.
enum class Precision : uint8_t { f32, mixed };

struct PlanConfig {
  int64_t dp = 1, tp = 1, pp = 1;
  int zero = 0;                    // 0-3: optimizer state, + gradients, + parameters sharded over dp
  bool sequence_parallel = false;  // norm/dropout regions split along the sequence over tp
  int64_t microbatches = 1;        // per optimizer step and data-parallel replica
  Schedule schedule = Schedule::one_f_one_b;
  Recompute recompute = Recompute::none;

  int64_t devices() const { return dp * tp * pp; }
  std::string str() const;  // "dp=8 tp=8 pp=16 zero=1 mb=192 1f1b recompute=full"
  bool operator==(const PlanConfig&) const = default;
};
std::string_view schedule_name(Schedule s);
std::string_view recompute_name(Recompute r);

// The mesh of one pipeline stage: dp x tp, tp innermost (so a tp group of 8 stays in a
// node), as Megatron orders ranks. Stage s owns ranks [s*dp*tp, (s+1)*dp*tp).
Mesh stage_mesh(const PlanConfig& c);

// Tensor-parallel role of a parameter, from the layer it belongs to.
enum class TpRole : uint8_t { replicated, column, row, vocab };
// Megatron's split for the layers the DSL builds: attention q/k/v and the MLP's first
// projection by output features (column), attention's and the MLP's output projections by
// input features (row); the token embedding (tied to the output projection) by vocabulary
// rows (vocab); everything else replicated. For an MLP (fc1, fc2, ...) the
// hidden layers alternate column / row, and the last layer is replicated.
TpRole tp_role(const std::string& parameter_name, const Graph& g);

// Placement of a parameter (or of optimizer state named "optimizer/<param>/...") as it is
// stored, and as its consumers see it (they differ under ZeRO-3: stored split over dp,
// gathered for use).
struct ParameterPlacement {
  Sharding stored, used;
};
ParameterPlacement parameter_placement(const Graph& g, const Node& parameter, const PlanConfig& c,
                                       const Mesh& m, bool optimizer_state);

// The placement of every source node under a config: inputs split along the batch over dp
// (and along the sequence over tp with sequence parallelism); parameters and optimizer
// state as parameter_placement says (their used placement); constants replicated.
SourcePlacement source_placements(const Graph& g, const PlanConfig& c, const Mesh& m);

}  // namespace tessel::planner
