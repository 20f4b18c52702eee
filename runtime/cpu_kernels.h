// Faster CPU kernels that replace an op's reference kernel in the executor.
#pragma once

#include <string_view>

#include "graph/op_def.h"

namespace tessel::runtime {

// The BLAS-backed kernel for `op`, or null when the reference kernel is used.
KernelFn fast_cpu_kernel(std::string_view op);
// The kernel an executor runs for `n`: the fast one when there is one and BLAS is allowed,
// else the op's reference kernel.
KernelFn cpu_kernel_for(const Node& n, bool use_blas);
// Keeps OpenBLAS on one thread: tessel's pool splits GEMMs itself.
void configure_blas_threads();

}  // namespace tessel::runtime
