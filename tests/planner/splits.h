// Tensor-parallel splits given by hand, for tests of what a given split does (the planner
// chooses its own from costs; tests may use names).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "graph/graph.h"

namespace tessel::planner {

// Every parameter whose name contains a key takes that key's dim (the first key that
// matches); the rest stay replicated.
inline std::vector<int8_t> splits_by_name(const Graph& g, const std::vector<std::pair<std::string, int>>& rules) {
  std::vector<int8_t> dims(static_cast<size_t>(g.size()), -1);
  for (int32_t id : g.parameters())
    for (auto& [key, dim] : rules)
      if (g.node(id).name.find(key) != std::string::npos) {
        dims[static_cast<size_t>(id)] = static_cast<int8_t>(dim);
        break;
      }
  return dims;
}

// Megatron-LM's split of the GPT and MLP builders' layers: q, k, v and the MLP's first
// projection by output features (weights dim 1, biases dim 0), the output projections by input
// features (weights dim 0, biases whole), the token embedding by vocabulary rows; for an MLP,
// fc1 column and fc2 row.
inline std::vector<int8_t> megatron_splits(const Graph& g) {
  return splits_by_name(g, {{"attn/q/weight", 1}, {"attn/k/weight", 1}, {"attn/v/weight", 1}, {"attn/q/bias", 0},
                            {"attn/k/bias", 0}, {"attn/v/bias", 0}, {"attn/proj/weight", 0}, {"mlp/fc/weight", 1},
                            {"mlp/fc/bias", 0}, {"mlp/proj/weight", 0}, {"wte/weight", 0}, {"fc1/weight", 1},
                            {"fc1/bias", 0}, {"fc2/weight", 0}});
}

}  // namespace tessel::planner
