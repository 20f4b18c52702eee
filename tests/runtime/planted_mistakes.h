// Planted mistakes: rewrites of the partitioned rank programs that make a plan train a
// different model, to prove that the equivalence search can fail. Each returns what it
// changed, or "" when the programs hold nothing it applies to.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "planner/partition.h"

namespace tessel::fuzz {

// (a) One all_reduce over two or more ranks is dropped on every rank whose program has it:
// its consumers read its input (each rank keeps its partial sum). The largest one that moves
// a variable's update other than through the gradient norm is chosen, else the largest.
std::string drop_all_reduce(std::vector<planner::RankProgram>& programs);
// (b) One gradient is doubled: the largest all_reduce or reduce_scatter that reduces a
// gradient for the optimizer, preferring those that move an update other than through the
// gradient norm (else the largest of a backward section), is followed by a
// multiplication by 2 on every rank whose program has it.
std::string double_gradient(std::vector<planner::RankProgram>& programs);
// (c) One rank reads its neighbour's shard: the start of a slice the partitioner inserted
// (a sequence-parallel region's split, a ZeRO shard) moves by one shard, on one rank.
// Activation slices (forward section) are preferred.
std::string shift_shard(std::vector<planner::RankProgram>& programs);

// Rebuilds p.graph node by node (nodes are append-only). For each node, `edit` returns what
// stands for its outputs after adding its replacement to `out`, or nullopt to copy it as it
// is; nodes it adds belong to the node's section. Outputs, updates and stored data follow.
using NodeEdit = std::function<std::optional<std::vector<Value>>(Graph& out, const Node& n, const std::vector<Value>& in)>;
void rebuild(planner::RankProgram& p, const NodeEdit& edit);

}  // namespace tessel::fuzz
