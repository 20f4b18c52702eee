// Internal to ops/: helpers for writing op definitions, and the per-family registration
// functions that ops::registry() calls.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "graph/error.h"
#include "graph/graph.h"
#include "ops/emit.h"
#include "ops/kernel_util.h"

namespace tessel::ops {

void register_source_ops(OpRegistry& r);       // source.cc
void register_elementwise_ops(OpRegistry& r);  // elementwise.cc
void register_reduce_ops(OpRegistry& r);       // reduce.cc
void register_shape_ops(OpRegistry& r);        // shape.cc
void register_matmul_ops(OpRegistry& r);       // matmul.cc
void register_nn_ops(OpRegistry& r);           // nn.cc
void register_optimizer_ops(OpRegistry& r);    // optimizer.cc
void register_collective_ops(OpRegistry& r);   // collective.cc
void register_fused_ops(OpRegistry& r);        // fused.cc

inline AttrSpec attr(std::string name, AttrType t, bool required = true) {
  return AttrSpec{std::move(name), t, required};
}

// An emitter for gradient nodes: the forward node's origin, scoped under its name.
inline Emitter grad_emitter(const GradCtx& c) {
  const Node& n = c.graph.node(c.node);
  return Emitter(c.graph, n.origin, n.name + "/grad");
}
inline const Node& fwd(const GradCtx& c) { return c.graph.node(c.node); }

// The dtype attribute ("f32", ...) of a source-like op.
DType attr_dtype(const Node& n, const char* name = "dtype");
// A "shape" attribute, validated (non-negative, rank and element limits).
Shape attr_shape(const Node& n, const char* name = "shape");

// Cost of an op that reads its inputs and writes its outputs once with `flops_per_out`
// operations per output element.
Cost streaming_cost(const Node& n, std::span<const TensorType> in, double flops_per_out);
Cost elementwise_cost(const Node& n, std::span<const TensorType> in);

// Sharding rules shared by op families (ops/sharding_rules.cc).
// Elementwise with NumPy broadcasting: output dims get one factor each; an input dim of
// size 1 broadcast against a larger one cannot be split. `linear`: see ShardingRule.
ShardingRule rule_elementwise(const Node& n, std::span<const TensorType> in);
// Sources and ops whose outputs depend on no splittable input dims: outputs get factors
// (so they can be created sharded), inputs none.
ShardingRule rule_source(const Node& n, std::span<const TensorType> in);
// Same dims in and out, one factor per dim (views, identity-like ops).
ShardingRule rule_identity(const Node& n, std::span<const TensorType> in);

// A shard of a tensor generated from element indices (initializers, dropout masks): the
// attributes "global_shape" and "offsets" say where the local tensor sits, so a shard holds
// exactly the slice of what the whole tensor would hold. Absent: the tensor is whole.
struct ShardIndex {
  std::vector<int64_t> global_shape, offsets, local_shape;
  bool whole = true;
  int64_t global(int64_t local_flat) const;  // flat index in the whole tensor
};
ShardIndex shard_index(const Node& n, std::span<const int64_t> local_shape, std::span<const int64_t> shift = {});
// Localize for ops whose output is generated from indices: shape, global_shape and offsets.
Attrs localize_generated(const Node& n, const ShardView& v);

// Reference kernels compute in f32 and f64 (and integers where noted); bf16 and f16 are
// storage types here. Inference refuses what no kernel can run, so errors come at build
// time, naming the user's line, not at the first step.
inline void require_float(const TensorType& t, const char* what) {
  if (t.dtype == DType::f32 || t.dtype == DType::f64) return;
  std::string hint = t.dtype == DType::bf16 || t.dtype == DType::f16
                         ? " (bf16 and f16 are storage types: cast to f32 to compute)"
                         : "";
  throw Error(std::string(what) + " must be f32 or f64, got " + t.str() + hint);
}
inline void require_numeric(const TensorType& t, const char* what) {
  if (t.dtype == DType::i32 || t.dtype == DType::i64) return;
  require_float(t, what);
}

}  // namespace tessel::ops
