// The layer structure of a training graph, from node names: the unit of pipeline stages,
// recomputation and repetition. A layer is a top-level DSL scope ("block3", "fc1"); its
// backward nodes are named "<forward node>/grad/..." and its optimizer nodes
// "optimizer/<parameter>/...".
#pragma once

#include <string>
#include <vector>

#include "graph/graph.h"

namespace tessel::planner {

struct Layer {
  std::string name;
  std::vector<int32_t> forward, backward, optimizer;  // in graph order
};

struct LayerStructure {
  std::vector<Layer> layers;    // in forward order
  std::vector<int32_t> global;  // data inputs, step counters, learning rate, shared scalars
  // The layer of each node (-1: global).
  std::vector<int> layer_of;
};

// Nodes considered are those needed for the updates of `phase` and the "loss" output.
LayerStructure find_layers(const Graph& g, const std::string& phase);

// The attention core of a layer (what selective recomputation reruns): the forward nodes of
// an attention scope outside its q/k/v/output projections.
bool attention_core(const Node& n);

}  // namespace tessel::planner
