// The op-registry interface. graph/ defines it; ops/ fills it. The verifier, autodiff and
// the loader ask an op for its rules here without knowing the list of ops.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "graph/attr.h"
#include "graph/scalar_expr.h"
#include "graph/tensor_ref.h"
#include "graph/types.h"

namespace tessel {

class Graph;
struct Node;

// How the runtime treats a node.
enum class OpKind : uint8_t {
  compute,   // computed from its inputs each step
  input,     // fed by the caller each step
  variable,  // persistent across steps (parameters, optimizer state); initialised once
  constant,  // filled once before the first step
};

// The collectives, listed once. The op registry marks the op of each (OpDef::collective;
// send_recv: the ops send and recv), the partitioner inserts them, the cost model times
// them, the executor hands them to the communicator, and every engine names them in its
// errors and checks by them that a group's members agree.
enum class Collective : uint8_t {
  all_reduce,
  reduce_scatter,
  all_gather,
  all_to_all,
  broadcast,
  send_recv,
  barrier,
};
inline constexpr int kNumCollectives = 7;
// "all_reduce" (the op's name; send_recv and barrier have no op of that name).
std::string_view collective_name(Collective c);
// "all-reduce", for reports.
std::string_view collective_label(Collective c);

struct AttrSpec {
  std::string name;
  AttrType type;
  bool required = true;
};

struct Cost {
  double flops = 0;  // floating-point operations
  double bytes = 0;  // bytes read + written, assuming no reuse across ops
};

// How an op may be split over a device mesh, as data (after Shardy): every dim of every
// input and output is labelled with a factor; splitting a factor over a mesh axis splits
// every dim that carries it. A factor that no output carries is contracted: splitting it
// leaves each device with a partial result, combined by `reduce`.
enum class FactorReduce : uint8_t { none, sum, max };
struct ShardingRule {
  // Per input and per output, per dim: a factor index, or -1 where the dim cannot be split
  // (a broadcast dim of size 1, a concatenated axis, a gathered-from table dim, ...).
  std::vector<std::vector<int>> inputs, outputs;
  std::vector<int64_t> factor_sizes;
  std::vector<FactorReduce> reduce;  // per factor; none for factors that reach an output
  // Partial sums may pass through the op (so an all-reduce can wait until after it): with
  // `additive`, when every input is partial (add, concat); otherwise when exactly one input
  // is partial and the op is linear in it (mul, matmul, reshape, ...).
  std::vector<bool> linear;  // per input
  bool additive = false;

  int add_factor(int64_t size, FactorReduce r = FactorReduce::none) {
    factor_sizes.push_back(size);
    reduce.push_back(r);
    return static_cast<int>(factor_sizes.size()) - 1;
  }
};

// Gradient rules see the forward node and the gradients of its outputs, and set the
// gradients of its inputs by adding nodes to the graph.
struct GradCtx {
  Graph& graph;
  int32_t node;                        // the forward node (look it up; references may move)
  std::span<const Value> out_grads;    // invalid Value: that output has zero gradient
  std::vector<Value> in_grads;         // one per input; leave invalid for none
  std::vector<bool> needed;            // per input: does anyone want its gradient? Rules
                                       // may skip the others (their result is dropped)
  bool wants(size_t input) const { return input < needed.size() ? bool(needed[input]) : true; }
};

using InferFn = std::vector<TensorType> (*)(const Node& node, std::span<const TensorType> in);
using GradFn = void (*)(GradCtx& ctx);
using CostFn = Cost (*)(const Node& node, std::span<const TensorType> in);
using KernelFn = void (*)(const Node& node, std::span<const TensorRef> in,
                          std::span<const TensorRef> out, const KernelCtx& ctx);
using ScalarFn = ScalarExpr (*)(const Node& node);
using ShardingFn = ShardingRule (*)(const Node& node, std::span<const TensorType> in);

// What a node is on one device of a partitioned program: its outputs' local types and where
// its output shard starts in the global tensor (per dim), and likewise for each input.
struct ShardView {
  std::span<const TensorType> local_outputs;
  std::span<const int64_t> output_offsets;      // per dim of output 0
  std::span<const int64_t> global_output_shape;
  std::vector<std::vector<int64_t>> input_offsets;  // per input, per dim
  std::vector<Shape> local_inputs, global_inputs;   // per input
};
// The attributes of the node's local copy. Null: the attributes are kept, except that a
// "shape" attribute becomes the local output shape.
using LocalizeFn = Attrs (*)(const Node& node, const ShardView& view);

struct OpDef {
  std::string name;
  OpKind kind = OpKind::compute;
  int min_inputs = 0;
  int max_inputs = 0;  // -1: any number
  std::vector<AttrSpec> attrs;
  InferFn infer = nullptr;
  GradFn grad = nullptr;          // null: not differentiable
  CostFn cost = nullptr;          // null: bytes of inputs + outputs, no FLOPs
  KernelFn kernel = nullptr;      // reference CPU kernel; variables: their initializer
  ScalarFn scalar = nullptr;      // elementwise ops only
  ShardingFn sharding = nullptr;  // every op has one (a registry test checks)
  LocalizeFn localize = nullptr;  // see LocalizeFn
  // The output holds input 0's bytes unchanged (reshape, stop_gradient): an executor may
  // alias the two buffers instead of running the kernel.
  bool view = false;
  std::optional<Collective> collective;  // the collective this op is, if any
  std::string doc;                // one line saying what the op computes (for listings of the registry)

  bool elementwise() const { return scalar != nullptr; }
  bool differentiable() const { return grad != nullptr; }
};

// Ops by name. Filled once at start-up (ops::registry()); read-only and thread-safe after.
class OpRegistry {
 public:
  void add(OpDef def);  // throws on a duplicate name or an incomplete definition
  const OpDef* find(std::string_view name) const;
  const OpDef& get(std::string_view name) const;  // throws naming the unknown op
  std::vector<const OpDef*> all() const;          // sorted by name

 private:
  std::unordered_map<std::string, std::unique_ptr<OpDef>> ops_;
};

}  // namespace tessel
