// Fused kernels (ops/fused.h) compiled for this CPU through LLVM's ORC JIT: the description
// lowered to a loop over rows (runtime/kernel_ir.h), optimised at O3 for the host's vector
// units (AVX2 / AVX-512 as present; the loop vectoriser handles the last partial vector),
// then compiled to machine code.
//
// Compiled kernels are cached in memory by a hash of their IR and target, and on disk as
// object files (default_kernel_cache_dir()): an entry is written to a temporary file and
// renamed into place, so concurrent writers never expose a partial file, and carries a
// checksum, so a corrupt entry is compiled again instead of loaded.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "graph/tensor_ref.h"
#include "ops/fused.h"

namespace tessel::runtime {

// Rows [row_begin, row_end), columns [col_begin, col_end) of the kernel's domain. Kernels
// with reductions or per-row outputs must be given whole rows.
using FusedFn = void (*)(const float* const* in, float* const* out, int64_t row_begin, int64_t row_end,
                         int64_t col_begin, int64_t col_end);

// TESSEL_KERNEL_CACHE if set ("off": no disk cache), else $XDG_CACHE_HOME/tessel/kernels,
// else $HOME/.cache/tessel/kernels; "" when none of these can be had.
std::string default_kernel_cache_dir();

class CpuJit {
 public:
  // cache_dir "": no disk cache. Kernels that read and write more than streaming_bytes write
  // their outputs a cache line at a time, past the cache where that pays (kernel_ir.h);
  // -1: four times this machine's L2 cache (what that choice rests on: cpu_jit.cc).
  explicit CpuJit(std::string cache_dir = default_kernel_cache_dir(), int64_t streaming_bytes = -1);
  ~CpuJit();
  CpuJit(const CpuJit&) = delete;
  CpuJit& operator=(const CpuJit&) = delete;

  // The process's JIT. Thread-safe.
  static CpuJit& shared();

  // Compiles (or finds in a cache) the kernel. Throws tessel::Error when the description is
  // malformed or LLVM fails, with its message.
  FusedFn compile(const ops::FusedKernelDesc& d);
  // The kernel's LLVM IR before optimisation.
  std::string ir(const ops::FusedKernelDesc& d) const;
  // The host CPU LLVM targets ("znver3", "skylake-avx512", ...) and its features.
  std::string host_cpu() const;
  const std::string& cache_dir() const;

  struct Stats {
    int64_t compiled = 0;     // compiled by LLVM in this process
    int64_t disk_hits = 0;    // loaded from the disk cache
    int64_t memory_hits = 0;  // already loaded
    double compile_s = 0;     // time in compile(), all of it
  };
  Stats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Compiles d with CpuJit::shared() and adds to an executor's report what that took: kernels
// compiled by LLVM, kernels loaded from the disk cache, seconds.
FusedFn compile_and_count(const ops::FusedKernelDesc& d, int64_t& compiled, int64_t& disk_hits, double& seconds);

// Runs a compiled kernel over its whole domain, split across `parallel`: by rows when it
// has reductions or per-row outputs (or rows are plenty), else by rows and column chunks.
void run_fused(FusedFn fn, const ops::FusedKernelDesc& d, const float* const* in, float* const* out,
               Parallel& parallel);

}  // namespace tessel::runtime
