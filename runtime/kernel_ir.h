// Internal to runtime/: a fused kernel description (ops/fused.h) as LLVM IR, shared by the
// CPU JIT (runtime/cpu_jit.h) and the PTX emitter (runtime/ptx.h). Each target wraps the
// same row body in its own iteration: a loop over rows on the CPU, a thread per element or
// per row on a GPU.
#pragma once

#include <vector>

#include <llvm/IR/IRBuilder.h>

#include "ops/fused.h"

namespace tessel::runtime {

// Emits, at b's insertion point in function f, the work of rows [r, r + 1) restricted to
// columns [c0, c1): the row values (reductions loop over all columns), the per-row outputs
// (callers that split rows by columns must not ask for those), then the per-element
// outputs over [c0, c1). `in` and `out` are float pointers in the description's order; an
// output written over an input (FusedOutput::over) is stored through the input's pointer,
// its own is not used. Leaves b at the end of the emitted code. `streaming` (CPU only, for
// kernels whose data does not fit in the cores' private caches) writes the per-element
// outputs a whole 64-byte aligned line at a time, and a single such output with
// non-temporal stores, which save reading each line in before it is written; the caller
// must then order them (sfence, see streams_past_cache) before another thread reads the output.
void emit_row_body(llvm::IRBuilder<>& b, llvm::Function* f, const ops::FusedKernelDesc& d, llvm::Value* r,
                   llvm::Value* c0, llvm::Value* c1, const std::vector<llvm::Value*>& in,
                   const std::vector<llvm::Value*>& out, bool streaming = false, bool row_cache = false);

// row_cache (CPU): a value that a row reduction folds and something else uses again is kept
// for the row in a stack buffer instead of computed twice, for rows of up to this many
// columns.
constexpr int64_t kRowCacheColumns = 4096;

// exp, tanh, sigmoid and log as straight-line arithmetic on a float or a vector of floats
// (vectorisable on the CPU, lowerable on NVPTX, which has no libm): the reference kernels'
// ops/fast_math.h algorithms for exp, tanh and sigmoid; log by Cephes' logf polynomial
// (within 2 ulp).
// Whether emit_row_body(..., streaming = true) emits non-temporal stores for d.
bool streams_past_cache(const ops::FusedKernelDesc& d);

llvm::Value* emit_exp(llvm::IRBuilder<>& b, llvm::Value* x);
llvm::Value* emit_tanh(llvm::IRBuilder<>& b, llvm::Value* x);
llvm::Value* emit_sigmoid(llvm::IRBuilder<>& b, llvm::Value* x);
llvm::Value* emit_log(llvm::IRBuilder<>& b, llvm::Value* x);

}  // namespace tessel::runtime
