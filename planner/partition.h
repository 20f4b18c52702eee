// The partitioner: from a training graph and a plan, one program per rank — local shapes,
// the collectives the placements need, and locally sliced parameters — that the runtime
// runs on each device. Inserted nodes carry the origin of the node they serve, so errors
// still point at the user's line. Deterministic; every program passes the verifier.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "graph/graph.h"
#include "planner/strategy.h"

namespace tessel::planner {

struct RankProgram {
  int64_t rank = 0;
  int64_t stage = 0;
  std::vector<int64_t> coords;  // on the stage mesh (dp, tp)
  Graph graph;                  // the training graph's phases and outputs, on this rank's shards
  // Where each output of the graph lives: outputs the partitioner leaves split (a batch-
  // split logits tensor, say) need gathering to be read whole.
  std::vector<std::pair<std::string, Sharding>> output_placements;
  // How inputs (fed per step) and variables are split: the runtime feeds each rank its part
  // of the batch and gathers variables for checkpoints.
  std::vector<std::pair<std::string, Sharding>> input_placements, variable_placements;
  // Per node of `graph`: the part of the step it belongs to. A stage runs `schedule`: for each
  // microbatch the forward section (on that microbatch's inputs), later its backward section
  // (reading the values its forward kept for it), and after the last backward the apply
  // section, which reads the mean over microbatches of each backward value it consumes (the
  // gradients). Forward nodes read no backward or apply value; backward nodes no apply value.
  std::vector<Section> section;
  std::vector<ScheduleStep> schedule;
  // Per node of `graph`: the layer it belongs to (planner/layers.h, -1: none), and whether it
  // lies in its layer's recompute region under the plan (the whole forward with full
  // recomputation, the attention core with selective): the runtime reruns that region before
  // the layer's backward instead of keeping its values. Inserted collectives take the values
  // of the node they serve.
  std::vector<int32_t> layer;
  std::vector<char> recompute;
  // Per node of `graph`: its outputs are one microbatch's part of a sum over the batch (a
  // gradient, the loss): the runtime adds the microbatches' values up. Otherwise a value
  // the apply section or an output reads across microbatches is the same in each.
  std::vector<char> summed;
  // Per node of `graph`: the dim of its output that microbatches split (the batch), -1 for
  // none. A tensor generated from its place in the whole (a dropout mask) is drawn at
  // microbatch j's place: j times the local size further along that dim.
  std::vector<int8_t> microbatch_dim;
};

// Where rank `coords`' shard of a tensor of `global` shape starts, per dim.
std::vector<int64_t> shard_offsets(std::span<const int64_t> global, const Sharding& s, const Mesh& m,
                                   const std::vector<int64_t>& coords);

// Programs for every rank, from the training graph at the global batch: stage s holds ranks
// [s*dp*tp, (s+1)*dp*tp); each runs one microbatch at a time (c.microbatches of them per
// step, planning_mesh). Throws naming the node when the step cannot be split into that
// many microbatches. With pp > 1, the
// layers (planner/layers.h) are cut into contiguous stages at `stage_bounds` (layer
// indices; empty: the config's stage_layers, else equal layer counts) and values crossing a cut travel by send/recv
// between the ranks with the same (dp, tp) coordinates; each program runs one microbatch's
// forward and backward, split into sections and ordered by the config's schedule.
std::vector<RankProgram> partition(const Graph& g, const PlanConfig& c,
                                   std::vector<int64_t> stage_bounds = {});

// The program of one device: the whole graph as it is (its batch is one microbatch), its
// nodes in their sections as partition() marks them, `microbatches` forward and backward
// runs per step on inputs fed per microbatch, then the apply section on the mean of the
// gradients over them. A graph without a loss or updates is all forward. Throws when
// microbatches > 1 but the apply section reads no backward value (nothing to accumulate).
RankProgram one_device(Graph g, int64_t microbatches = 1, Recompute recompute = Recompute::none);
// The same for a part of the graph: only `outputs` computed and `phase`'s updates applied
// ("": none). Throws naming an output the graph lacks or a phase without updates.
RankProgram one_device(Graph g, const std::vector<std::string>& outputs, std::string_view phase);

}  // namespace tessel::planner
