// Elementwise kernels compiled for this CPU through LLVM's ORC JIT: a scalar expression
// (graph/scalar_expr.h, the data each elementwise op registers) lowered to a loop over a
// range of elements, optimised for the host's vector units. The first slice of the lowering
// in ../shared/DESIGN.md: one expression per kernel, f32, contiguous or scalar-broadcast
// arguments; the fusion pass and the executor's use of these kernels come next.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "graph/scalar_expr.h"

namespace tessel::runtime {

struct ElementwiseKernel {
  std::string name;               // the symbol's stem, for reading IR and profiles
  ScalarExpr expr;                // over arguments 0..n-1
  std::vector<bool> scalar_args;  // per argument: true reads element 0 for every output element
};

// out[i] = expr(in[0][i or 0], in[1][i or 0], ...) for i in [begin, end).
using ElementwiseFn = void (*)(const float* const* in, float* out, int64_t begin, int64_t end);

class CpuJit {
 public:
  CpuJit();
  ~CpuJit();
  CpuJit(const CpuJit&) = delete;
  CpuJit& operator=(const CpuJit&) = delete;

  // The process's JIT. Thread-safe.
  static CpuJit& shared();

  // Compiles (or finds in the cache, keyed by the kernel's IR and the host CPU) and returns
  // the kernel. Throws tessel::Error when LLVM fails, with its message.
  ElementwiseFn compile(const ElementwiseKernel& k);
  // The kernel's LLVM IR before optimisation.
  std::string ir(const ElementwiseKernel& k) const;
  // The host CPU LLVM targets ("skylake-avx512", "znver3", ...) and its features.
  std::string host_cpu() const;

  struct Stats {
    int64_t compiled = 0, cache_hits = 0;
    double compile_s = 0;
  };
  Stats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessel::runtime
