// Reverse-mode differentiation over a static graph. Backward nodes are added to the same
// graph using each op's gradient rule from the registry, marked Pass::backward and serving
// the forward node whose rule made them.
#pragma once

#include <span>
#include <vector>

#include "graph/graph.h"

namespace tessel {

// Gradients of `loss` (seeded with ones of its shape) with respect to each of `wrt`, in
// order. A value that `loss` does not depend on gets an invalid Value. Throws, naming the
// node and its origin, when a node on a path from `wrt` to `loss` has no gradient rule.
std::vector<Value> gradients(Graph& g, Value loss, std::span<const Value> wrt);

}  // namespace tessel
