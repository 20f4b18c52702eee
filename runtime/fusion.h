// The fusion pass: a graph transform that replaces chains of elementwise ops, broadcasts
// and the row reductions that end them (bias + GELU, softmax, layer norm forward and
// backward, the optimizer's update of each parameter, ...) by "fused" nodes
// (ops/fused.h), which the JIT compiles. Matrix products, gathers, shape changes and
// everything not in f32 stay as they are. The result passes Graph::verify().
//
// A group is one domain [rows, cols] (its tensors' shape, cols = the reduced trailing axes
// or, with no reduction, as many trailing axes as its broadcast inputs allow). An input of
// the group is read whole, per column (a bias), per row (a statistic) or as one number;
// constants become immediates. A value leaves the group (is written to memory) only when
// something outside it reads it, or it is a graph output or an update's value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/graph.h"
#include "ops/fused.h"

namespace tessel::runtime {

struct FusionOptions {
  // Per node of the source graph: nodes with different keys are never fused together
  // (pipeline sections, recomputed layers). Empty: one key for all.
  std::vector<int64_t> key;
};

struct FusedGraph {
  Graph graph;
  // Per node and output of the source graph: where that value is in `graph`; invalid when
  // it lives only inside a fused kernel.
  std::vector<std::vector<Value>> values;
  // Per node of `graph`: the source node it copies, or -1 for a fused node.
  std::vector<int32_t> source_node;
  // Per node of `graph`: for fused nodes, the source nodes it computes, in order.
  std::vector<std::vector<int32_t>> members;
  int64_t fused_nodes = 0;    // fused nodes made
  int64_t nodes_fused = 0;    // source nodes they replace

  Value map(Value v) const {
    return v.node >= 0 && static_cast<size_t>(v.node) < values.size() &&
                   static_cast<size_t>(v.index) < values[static_cast<size_t>(v.node)].size()
               ? values[static_cast<size_t>(v.node)][static_cast<size_t>(v.index)]
               : Value{};
  }
};

// Nodes no output or update needs are left out (their values map to invalid).
FusedGraph fuse(const Graph& g, const FusionOptions& options = {});

// An update's new value written over its variable: when fused node n (description d)
// computes output `output`, the new value of `variable`, element by element from the
// variable itself (an input read whole, of the same type, and no other input a view of
// the variable), the index of that input, else -1. Then the kernel can write the output
// over the variable (FusedOutput::over) instead of into a buffer of its own that is copied
// back after the step, provided nothing reads the variable after n, nothing else writes
// the value, and every program that runs n applies the update: the executor's to check.
int update_over_input(const Graph& g, const Node& n, const ops::FusedKernelDesc& d, int output, int32_t variable);

}  // namespace tessel::runtime
