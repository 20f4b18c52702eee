// The analytic compute side of the cost model: FLOPs and bytes of a graph, from each op's
// registered cost. The planner issue adds devices, links and the simulator on top.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "graph/graph.h"

namespace tessel::planner {

struct OpCost {
  std::string op;
  int64_t count = 0;
  double flops = 0;
  double bytes = 0;
};

struct GraphCost {
  double flops = 0;
  double bytes = 0;
  std::vector<OpCost> by_op;  // sorted by FLOPs, largest first
};

// Cost of the nodes needed to compute `targets` (all nodes when empty).
GraphCost graph_cost(const Graph& g, std::span<const Value> targets = {});
// Cost of one step of `phase`: its updates and the named outputs.
GraphCost phase_cost(const Graph& g, const std::string& phase,
                     const std::vector<std::string>& outputs = {});

struct ParameterCount {
  int64_t tensors = 0;
  int64_t elements = 0;
  int64_t bytes = 0;
};
ParameterCount count_parameters(const Graph& g);

}  // namespace tessel::planner
