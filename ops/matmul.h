// Matmul dimension logic, shared by the reference kernel and faster kernels (BLAS).
#pragma once

#include <span>

#include "graph/graph.h"
#include "ops/kernel_util.h"

namespace tessel::ops {

struct MatmulDims {
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0;
  Dims batch_a, batch_b, batch;  // batch dims of a, b and the (broadcast) output
};

// Throws tessel::Error ("inner dims differ: ...") on mismatched operands.
MatmulDims matmul_dims(const Node& n, std::span<const int64_t> a, std::span<const int64_t> b);

}  // namespace tessel::ops
