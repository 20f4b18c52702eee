// The layer structure of a training graph, from the graph alone: the unit of pipeline
// stages, recomputation and repetition. Forward nodes belong to the layer of their DSL scope
// (the first part of Origin::scope: "block3" for "block3/attn/q"); in a graph without
// scopes, layers are cut where the forward pass narrows to one value (the residual stream
// between blocks) before an op that reads a weight. Backward nodes belong to the layer of the
// forward node they serve, optimizer nodes to the layer of their parameter (Node::pass,
// Node::serves). Node names are never read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/graph.h"

namespace tessel::planner {

struct Layer {
  std::string name;  // its scope ("block3"), or "layer7" in a graph without scopes
  std::vector<int32_t> forward, backward, optimizer;  // in graph order
  // Layers of one class have identical subgraphs (ops, attributes, types, edges; node k of
  // one part corresponds to node k of the same part of the other); the class is the index of
  // its first layer.
  int klass = -1;
  // The same for the forward part alone (a model's last block, whose backward starts from
  // the output layer's, shares its first block's forward class).
  int forward_class = -1;
};

struct LayerStructure {
  std::vector<Layer> layers;    // in forward order
  std::vector<int32_t> global;  // data inputs, step counters, learning rate, shared scalars
  std::vector<int> layer_of;    // per node: its layer, -1 global or not needed
  // Per node: its index in its layer's part (forward, backward or optimizer), -1 for
  // global nodes: node k of a layer corresponds to node k of any layer of its class.
  std::vector<int32_t> position;
  // Per node: the attention core of its layer (what selective recomputation reruns).
  std::vector<char> attention_core;
  // Per node: the nodes considered that read it, in order.
  std::vector<std::vector<int32_t>> users;

  // Repetition, for planning a layer once per class. Per node: the node whose placement it
  // repeats (-1: none): for a forward or optimizer node of a class's later layer, the node of
  // the class's first layer; for a backward node, the node of the layer last_of_class names
  // (the backward pass meets it before the ones it stands for), but in the class's last layer.
  std::vector<int32_t> repeats;
  std::vector<int32_t> distinct;     // the nodes considered that repeat none, in order
  std::vector<char> read_by_repeat;  // per node: a repeating node reads it
  // Per layer that starts a class: the layer whose backward stands for the class's (the one
  // before its last, whose backward starts from its own class's; the last with fewer than 3).
  std::vector<int> last_of_class;
};

// Nodes considered are those needed for the updates of `phase` and the "loss" output.
LayerStructure find_layers(const Graph& g, const std::string& phase);

}  // namespace tessel::planner
