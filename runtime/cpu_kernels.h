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
// OpenBLAS's own SGEMM on `threads` of its own threads, C = A B (row-major, n x n): a
// reference figure for `tessel calibrate` to set beside other tools' measurements of the same
// library, not what the executor runs. Not thread-safe; OpenBLAS is left on one thread.
void reference_sgemm(int threads, int64_t n, const float* a, const float* b, float* c);

}  // namespace tessel::runtime
