// Per-layer costs of a training graph under a plan config, on one device of a stage: the
// compute time of each op from a roofline (FLOPs over the dtype's peak against bytes over
// memory bandwidth, plus launch overhead), the collectives the placements require, and
// memory. The pipeline builder (planner/pipeline.h) turns these into simulated programs.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "graph/graph.h"
#include "planner/cluster.h"
#include "planner/comm_cost.h"
#include "planner/layers.h"
#include "planner/strategy.h"

namespace tessel::planner {

struct CostOptions {
  Precision precision = Precision::f32;
  // Fraction of the dtype's peak that large matrix products reach; < 0: the device's own
  // (ClusterSpec: measured by a GEMM benchmark; 1 = pure roofline).
  double gemm_efficiency = -1;
  // Count elementwise ops fused into one kernel (what the runtime's fusion pass builds): a
  // value that stays in the kernel costs no memory traffic or launch; fuse_groups says which.
  bool fuse_elementwise = true;
  // How far fusion reaches: true, a value stays in its kernel when every reader is in the
  // group (tessel's fusion pass, broadcasts included); false, only an elementwise value with
  // one elementwise reader (eager frameworks' hand-fused kernels: Megatron-LM's bias-GeLU,
  // softmax and layer norm; what its published runs were).
  bool fuse_groups = true;
  // With mixed precision: gradients accumulated over microbatches and reduced across
  // replicas in f32 rather than in the compute dtype (what Megatron does with bf16, and
  // DeepSpeed's BF16_Optimizer): twice the gradient memory and data-parallel traffic.
  bool f32_gradients = false;
  // How one microbatch's weight gradients join the step's running sum when a step has
  // several microbatches:
  //  in_gemm:  the weight-gradient product accumulates into the sum itself (beta = 1): no
  //            extra traffic (Megatron-LM's gradient_accumulation_fusion);
  //  add:      a pass per microbatch reading the new gradient and reading and writing the
  //            sum (tessel's runtime; PyTorch's AccumulateGrad; Megatron-LM's main_grad hooks);
  //  cast_add: the gradient is first copied into the sum's dtype, then added: two passes
  //            (DeepSpeed's BF16_Optimizer: hp_grad.add_(lp_grad.to(float32))).
  enum class GradAccumulation : uint8_t { in_gemm, add, cast_add };
  GradAccumulation grad_accumulation = GradAccumulation::add;
  // Pipeline transfers hold the compute stream of both stages for their duration instead
  // of running beside it (DeepSpeed's pipeline engine: its sends and receives are NCCL
  // calls the compute stream waits on).
  bool blocking_p2p = false;
  // Gradients all-reduced over dp are laid out in buckets of up to this many bytes (in the
  // order the backward finishes them), each allocated whole when its first gradient is
  // written (tessel's runtime and PyTorch DDP, 25 MiB by default).
  double bucket_bytes = 25 << 20;
  // Gradient reductions wait for the whole backward instead of starting as their gradients
  // (or buckets) are final (Megatron-LM's allreduce_gradients() after the backward, before
  // its overlap_grad_reduce; DeepSpeed ZeRO-1 without overlap_comm).
  bool grad_reduce_after_backward = false;
  // Every buffer a rank holds is rounded up to this many bytes (tessel's arena and variables:
  // 64; CUDA caching allocators: 512).
  double buffer_alignment = 64;
};
std::string_view grad_accumulation_name(CostOptions::GradAccumulation a);
std::optional<CostOptions::GradAccumulation> grad_accumulation_from_name(std::string_view s);

// A piece of a layer's forward or backward pass on one device: compute, or a collective
// that the next piece waits for.
struct Segment {
  bool comm = false;
  double seconds = 0;
  Collective op = Collective::all_reduce;  // comm only
  int axis = -1;                           // comm: mesh axis (0 dp, 1 tp)
  double bytes = 0;                        // comm: NCCL-convention bytes
  int level = -1;                          // comm: outermost link level crossed
  double bus_bytes = 0;                    // comm: bytes each device sends on that level
};

struct LayerProfile {
  std::string name;
  int64_t repeat = 1;  // identical consecutive layers this profile stands for (solved once)
  std::vector<std::string> members;  // their names, repeat of them
  std::vector<Segment> forward, backward;  // one microbatch, in order
  std::vector<Segment> grad_sync;   // gradient reductions, async after the layer's last backward
  std::vector<Segment> param_sync;  // after the optimizer: gathers of updated parameters
  double optimizer_s = 0;           // optimizer compute on one device
  // Adding one microbatch's weight gradients to the step's sum (CostOptions::grad_accumulation;
  // paid after each backward when a step has more than one microbatch).
  double grad_accumulate_s = 0;
  double forward_compute_s = 0, backward_compute_s = 0;
  double model_flops = 0;           // forward + backward of one microbatch, whole layer (all devices)
  double forward_flops = 0;         // forward only, whole layer (for recompute accounting)
  double parameters = 0;            // elements, whole layer
  // Memory on one device.
  double weight_bytes = 0, grad_bytes = 0, optimizer_bytes = 0;
  double grad_whole_bytes = 0;  // gradients reduced to shards: their whole sums, until the reduce-scatter
  double grad_shard_bytes = 0;  // the part of grad_bytes that is those shards, made by the reduce-scatter
  double activation_bytes = 0;      // kept from forward for backward, one microbatch
  double input_bytes = 0;           // the layer's input, one microbatch (all recompute keeps)
  // Values of other layers that the layer's backward reads (a product's input for its weight
  // gradient; a tied embedding), one microbatch: kept from the forward to the backward, by
  // this layer when it received them from another stage or when their own layer does not
  // keep them. backward_input_bytes: all of them.
  struct BackwardInput {
    double bytes = 0;
    int layers_back = 1;          // the source layer: this one's index minus this
    bool kept_by_source = false;  // held there anyway (its own backward reads it; a parameter)
  };
  std::vector<BackwardInput> backward_inputs;
  double backward_input_bytes = 0;
  double output_bytes = 0;          // what a stage boundary after this layer sends, one microbatch
  double working_bytes = 0;         // largest transient set while computing the layer
  double forward_working_bytes = 0;  // the same in its forward alone
  double kept_input_forward_working_bytes = 0;  // ... when its input is kept anyway (recomputation)
  // The backward op by op, as the runtime runs it: what each op holds (its transients: in the
  // first microbatch's backward without its gradients, which are the sums then), the share of
  // the layer's gradients made by then, and the shares of the kept activations and kept inputs
  // still to be read (each dies at its last reader).
  struct BackwardStep {
    double first = 0, later = 0, made = 0, activations = 0, inputs = 0;
  };
  std::vector<BackwardStep> backward_steps;
  // The most one backward holds at once beyond its gradients' sums (grad_bytes, taken by the
  // first), given the activations and inputs kept for it; 0 with no steps.
  double backward_holding(bool first, double grad_bytes, double activations, double inputs) const;
  double optimizer_working_bytes = 0;  // largest transient set of one op of the update (a slice of a parameter to its shard)
  double io_bytes = 0;              // batch inputs it reads, graph outputs it makes (all microbatches), constants
  // Selective recomputation: the attention core's forward (rerun before the backward), and
  // what the layer keeps for its backward without the core's activations; the core's own
  // kept values that the rerun rebuilds.
  double core_forward_s = 0, core_forward_flops = 0;
  double selective_kept_bytes = 0, core_rebuilt_bytes = 0;
  std::vector<std::string> notes;   // e.g. "fc2/weight: tp split does not divide, replicated"
};

struct ModelProfile {
  std::vector<LayerProfile> layers;  // in forward order (repeats folded)
  double global_compute_s = 0;       // nodes outside layers (learning rate, norms), per step
  double samples_per_microbatch = 0;  // of all replicas together
};

// Profiles every layer of `g` (a training graph at the global batch, whose layers are `ls`)
// for one microbatch on a device of stage 0 of `c`. A layer identical to an earlier one (the
// same class) is profiled once: its placements are the first's and consecutive ones share
// one profile (a 96-block GPT is planned from one block). Throws when the model cannot be
// split into c.microbatches (planning_mesh).
ModelProfile profile_model(const Graph& g, const LayerStructure& ls, const PlanConfig& c, const ClusterSpec& cluster,
                           const CostOptions& opt);

// The tensor-parallel split of every parameter for c.tp and c.sequence_parallel
// (PlanConfig::tp_dims), from the ops' sharding rules and the cost model, with no knowledge
// of names or model kinds. Per layer class in forward order (solved once for its layers): the
// weights (parameters of rank >= 2) read alongside the same activation form a group that
// splits alike (q, k and v; a SwiGLU's gate and up); every combination of the groups' splits
// (replicated, or any dim tp divides) is propagated through the layers reading them, with the
// other parameters stored as their first readers slice them (a column-split projection's
// bias), and priced: compute on local shapes plus every collective the placements need, and,
// for a layer that repeats, the change from its output's placement back to its input's.
// The few cheapest are priced again as the whole model's simulated step; the cheapest wins,
// replicated on ties. Two sweeps over the layers, so that each is decided knowing the others;
// one, starting from `start` (the splits found for another degree), when given. c's dp and
// microbatches set the shapes priced. `pinned` (parameter -> dim, -1: whole) is kept as
// given, for the parameter and its counterparts in the other layers of its class; throws
// tessel::Error when two pins of one class disagree or a pin does not fit the parameter.
std::vector<int8_t> choose_tensor_parallel(const Graph& g, const LayerStructure& ls, const PlanConfig& c,
                                           const ClusterSpec& cluster, const CostOptions& opt,
                                           const std::vector<int8_t>& start = {},
                                           const std::map<int32_t, int8_t>& pinned = {});

}  // namespace tessel::planner
