// The op harness (STYLE rule 11): helpers shared by tests/ops/*_test.cc. Test-side
// tensors hold doubles whatever their dtype, so every naive reference implementation is
// written once, in double; one-op graphs run through the CPU executor.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "graph/graph.h"
#include "graph/op_def.h"
#include "graph/tensor_ref.h"
#include "runtime/thread_pool.h"

namespace tessel::test {

// A dense row-major tensor on the test side.
struct HostTensor {
  DType dtype = DType::f64;
  Shape shape;
  std::vector<double> v;  // numel(shape) values, exact for every dtype the kernels take

  int64_t numel() const { return static_cast<int64_t>(v.size()); }
};

HostTensor make_tensor(DType dt, Shape shape, std::vector<double> v);
HostTensor zeros(DType dt, Shape shape);

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(gen_);
  }
  int64_t integer(int64_t lo, int64_t hi) {  // [lo, hi]
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen_);
  }
  std::mt19937_64& engine() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// Uniform in [lo, hi), rounded to the dtype (integers: rounded to whole numbers).
HostTensor random_tensor(Rng& r, DType dt, Shape shape, double lo = -2, double hi = 2);
// Values k/4 for integer k in [lo, hi]: exact in every float dtype and full of ties, for
// comparisons, maximum/minimum and exact integer arithmetic. zero=false skips k = 0.
HostTensor quantized_tensor(Rng& r, DType dt, Shape shape, int lo = -8, int hi = 8,
                            bool zero = true);
// Integers in [lo, hi].
HostTensor index_tensor(Rng& r, DType dt, Shape shape, int64_t lo, int64_t hi);

// HostTensor <-> a buffer of any dtype.
void store(const TensorRef& t, const HostTensor& h);
HostTensor load(const TensorRef& t);

// How one-op graphs run: reference kernels unless use_blas, and with jit the op's fused
// kernel where the fusion pass takes it (elementwise ops, broadcasts, trailing-axis
// reductions in f32): so every naive check covers the JIT-compiled kernel too.
struct RunConfig {
  Parallel* parallel = nullptr;  // null: a SerialParallel
  bool use_blas = false;
  bool jit = true;
  uint64_t seed = 0;
};

// Inputs "in0", "in1", ... typed like `ins`, one node of `op` over them, run once.
HostTensor run_op(std::string_view op, const std::vector<HostTensor>& ins, const Attrs& attrs = {},
                  const RunConfig& cfg = {});
// Calls the op's reference kernel (or `kernel`) on separately allocated buffers,
// bypassing the executor (view ops such as reshape are aliased there and never run).
// Output buffers start as 0xFF bytes (NaN), so an element the kernel skips shows.
HostTensor call_kernel(std::string_view op, const std::vector<HostTensor>& ins, const Attrs& attrs,
                       Parallel& par, KernelFn kernel = nullptr);

// The two thread settings every kernel that splits work is checked under.
struct Parallels {
  SerialParallel serial;
  runtime::ThreadPool pool{2};
  std::array<Parallel*, 2> all() { return {&serial, &pool}; }
};
inline std::string par_name(Parallel* p) { return p->num_threads() == 1 ? "serial" : "pool(2)"; }

// Checks `op` on `ins` against `want` three ways: through the executor (with the JIT) on
// one thread and on the pool, and by call_kernel (the reference kernel) on poisoned buffers. `what` names the case.
void expect_op(Parallels& par, std::string_view op, const std::vector<HostTensor>& ins,
               const Attrs& attrs, const HostTensor& want, const std::string& what);
void expect_op(Parallels& par, std::string_view op, const std::vector<HostTensor>& ins,
               const Attrs& attrs, const HostTensor& want, double rtol, double atol,
               const std::string& what);

// Row-major strides, and the flat index into `in` that NumPy broadcasting reads for flat
// output index `i` of `out`.
std::vector<int64_t> strides_of(const Shape& s);
int64_t broadcast_index(const Shape& out, const Shape& in, int64_t i);
std::vector<int64_t> unravel(const Shape& s, int64_t i);

// Same dtype, same shape, and |got - want| <= atol + rtol * |want| everywhere (equal
// infinities and NaN positions match). Names the first failing element.
testing::AssertionResult all_close(const HostTensor& got, const HostTensor& want, double rtol,
                                   double atol);
// Exact for integers and bool; f32 and f64 at a few units of their rounding.
testing::AssertionResult all_close(const HostTensor& got, const HostTensor& want);

std::string attr_str(DType dt);

// Every gradient-check case (defined in grad_check_test.cc), for the registry test.
struct GradCaseInfo {
  std::string op;    // registered op, or an Emitter composition ("softmax", ...)
  std::string name;  // case name
};
std::vector<GradCaseInfo> grad_case_index();

}  // namespace tessel::test
