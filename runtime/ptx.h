// Fused kernels (ops/fused.h) as PTX for NVIDIA GPUs, from the same description and the
// same row body (runtime/kernel_ir.h) the CPU JIT compiles. Kernels with reductions or
// per-row outputs run a thread per row; the others a thread per element. Emitted for sm_80
// by default: LLVM 14 knows no newer architecture, and ptxas builds sm_80 PTX for newer
// chips. Parameters: one global pointer per input, then one per output, in the
// description's order; launch with at least rows (or rows * cols) threads in x.
#pragma once

#include <string>

#include "ops/fused.h"

namespace tessel::runtime {

// Throws tessel::Error when LLVM cannot emit it, with LLVM's message.
std::string emit_ptx(const ops::FusedKernelDesc& d, const std::string& name, const std::string& arch = "sm_80");

// True when the kernel runs a thread per row (it reduces or writes per-row values).
bool ptx_thread_per_row(const ops::FusedKernelDesc& d);

}  // namespace tessel::runtime
