// matmul: the reference kernel against a naive triple loop, and the BLAS kernel the
// executor uses by default (ExecutorOptions::use_blas) against the reference kernel, over
// the four transpose combinations, batch broadcasting, M, N or K of 0 and 1, and sizes
// that take the multithreaded split paths (rows, columns, batches) of a ThreadPool(2).
#include <cmath>

#include "graph/error.h"
#include "runtime/cpu_kernels.h"
#include "tests/ops/harness.h"

namespace tessel::test {
namespace {

struct MatmulCase {
  Shape a, b;  // as stored (before the optional transposes)
  bool ta = false, tb = false;
};

std::string case_str(const MatmulCase& c) {
  return shape_str(c.a) + (c.ta ? "^T" : "") + " x " + shape_str(c.b) + (c.tb ? "^T" : "");
}

// The naive product and, per element, sum_k |a_ik| |b_kj| (the scale of its rounding).
std::pair<HostTensor, HostTensor> naive_matmul(const HostTensor& a, const HostTensor& b, bool ta,
                                               bool tb) {
  const size_t ra = a.shape.size(), rb = b.shape.size();
  const int64_t M = ta ? a.shape[ra - 1] : a.shape[ra - 2];
  const int64_t K = ta ? a.shape[ra - 2] : a.shape[ra - 1];
  const int64_t N = tb ? b.shape[rb - 2] : b.shape[rb - 1];
  EXPECT_EQ(K, tb ? b.shape[rb - 1] : b.shape[rb - 2]);
  const Shape ba(a.shape.begin(), a.shape.end() - 2), bb(b.shape.begin(), b.shape.end() - 2);
  Shape batch(std::max(ba.size(), bb.size()));
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t x = i + ba.size() >= batch.size() ? ba[i + ba.size() - batch.size()] : 1;
    const int64_t y = i + bb.size() >= batch.size() ? bb[i + bb.size() - batch.size()] : 1;
    batch[i] = x == 1 ? y : x;
  }
  Shape os = batch;
  os.push_back(M);
  os.push_back(N);
  HostTensor c = zeros(a.dtype, os), scale = zeros(a.dtype, os);
  for (int64_t bi = 0; bi < numel(batch); ++bi) {
    const int64_t oa = broadcast_index(batch, ba, bi) * M * K,
                  ob = broadcast_index(batch, bb, bi) * K * N;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0, t = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double x = a.v[oa + (ta ? k * M + i : i * K + k)];
          const double y = b.v[ob + (tb ? j * K + k : k * N + j)];
          s += x * y;
          t += std::fabs(x * y);
        }
        c.v[(bi * M + i) * N + j] = s;
        scale.v[(bi * M + i) * N + j] = t;
      }
  }
  return {c, scale};
}

// |got - want| <= tol * scale + 1e-30 per element.
testing::AssertionResult matmul_close(const HostTensor& got, const HostTensor& want,
                                      const HostTensor& scale, double tol) {
  if (got.shape != want.shape)
    return testing::AssertionFailure()
           << "shape " << shape_str(got.shape) << ", want " << shape_str(want.shape);
  for (int64_t i = 0; i < got.numel(); ++i)
    if (!(std::fabs(got.v[i] - want.v[i]) <= tol * scale.v[i] + 1e-30))
      return testing::AssertionFailure() << "element " << i << ": " << got.v[i] << ", want "
                                         << want.v[i] << " (scale " << scale.v[i] << ")";
  return testing::AssertionSuccess();
}

std::vector<MatmulCase> matmul_cases(bool large) {
  std::vector<MatmulCase> c;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      c.push_back({ta ? Shape{4, 3} : Shape{3, 4}, tb ? Shape{5, 4} : Shape{4, 5}, ta, tb});
      c.push_back({ta ? Shape{13, 7} : Shape{7, 13}, tb ? Shape{33, 13} : Shape{13, 33}, ta, tb});
      c.push_back({ta ? Shape{2, 4, 3} : Shape{2, 3, 4}, tb ? Shape{5, 4} : Shape{4, 5}, ta, tb});
      c.push_back({ta ? Shape{2, 1, 4, 3} : Shape{2, 1, 3, 4}, tb ? Shape{3, 5, 4} : Shape{3, 4, 5},
                   ta, tb});
      c.push_back({ta ? Shape{4, 3} : Shape{3, 4}, tb ? Shape{2, 5, 4} : Shape{2, 4, 5}, ta, tb});
      // Degenerate sizes: M, N or K of 0 or 1, batched too.
      c.push_back({ta ? Shape{4, 0} : Shape{0, 4}, tb ? Shape{5, 4} : Shape{4, 5}, ta, tb});
      c.push_back({ta ? Shape{4, 3} : Shape{3, 4}, tb ? Shape{0, 4} : Shape{4, 0}, ta, tb});
      c.push_back({ta ? Shape{0, 3} : Shape{3, 0}, tb ? Shape{5, 0} : Shape{0, 5}, ta, tb});
      c.push_back(
          {ta ? Shape{3, 0, 3} : Shape{3, 3, 0}, tb ? Shape{3, 5, 0} : Shape{3, 0, 5}, ta, tb});
      c.push_back(
          {ta ? Shape{2, 4, 0} : Shape{2, 0, 4}, tb ? Shape{2, 0, 4} : Shape{2, 4, 0}, ta, tb});
      c.push_back({Shape{1, 1}, Shape{1, 1}, ta, tb});
      c.push_back({ta ? Shape{4, 1} : Shape{1, 4}, tb ? Shape{1, 4} : Shape{4, 1}, ta, tb});
      c.push_back({ta ? Shape{1, 3} : Shape{3, 1}, tb ? Shape{5, 1} : Shape{1, 5}, ta, tb});
      c.push_back({Shape{0, 3, 4}, Shape{4, 5}, false, false});
      if (large) {
        // Rows split (300x200x100), columns split (few rows), batches split, and one
        // transposed batch that is split inside its GEMM.
        c.push_back({ta ? Shape{100, 300} : Shape{300, 100}, tb ? Shape{200, 100} : Shape{100, 200},
                     ta, tb});
        c.push_back(
            {ta ? Shape{300, 4} : Shape{4, 300}, tb ? Shape{500, 300} : Shape{300, 500}, ta, tb});
        c.push_back({ta ? Shape{3, 50, 40} : Shape{3, 40, 50},
                     tb ? Shape{3, 60, 50} : Shape{3, 50, 60}, ta, tb});
        c.push_back({ta ? Shape{1, 100, 300} : Shape{1, 300, 100},
                     tb ? Shape{1, 200, 100} : Shape{1, 100, 200}, ta, tb});
        c.push_back({ta ? Shape{2, 100, 150} : Shape{2, 150, 100},
                     tb ? Shape{90, 100} : Shape{100, 90}, ta, tb});
      }
    }
  return c;
}

Attrs matmul_attrs(const MatmulCase& c) { return {{"transpose_a", c.ta}, {"transpose_b", c.tb}}; }

TEST(KernelMatmul, ReferenceMatchesNaive) {
  Parallels par;
  Rng rng(20);
  for (DType dt : {DType::f32, DType::f64})
    for (const MatmulCase& c : matmul_cases(false)) {
      HostTensor a = random_tensor(rng, dt, c.a), b = random_tensor(rng, dt, c.b);
      auto [want, scale] = naive_matmul(a, b, c.ta, c.tb);
      for (Parallel* p : par.all())
        EXPECT_TRUE(matmul_close(run_op("matmul", {a, b}, matmul_attrs(c), {.parallel = p}), want,
                                 scale, dt == DType::f32 ? 1e-6 : 1e-14))
            << dtype_name(dt) << " " << case_str(c) << " " << par_name(p);
      EXPECT_TRUE(matmul_close(call_kernel("matmul", {a, b}, matmul_attrs(c), par.pool), want,
                               scale, dt == DType::f32 ? 1e-6 : 1e-14))
          << dtype_name(dt) << " " << case_str(c) << " on poisoned buffers";
    }
  // One large product through the reference kernel's parallel path.
  HostTensor a = random_tensor(rng, DType::f64, {301, 67}),
             b = random_tensor(rng, DType::f64, {67, 129});
  auto [want, scale] = naive_matmul(a, b, false, false);
  EXPECT_TRUE(
      matmul_close(run_op("matmul", {a, b}, {}, {.parallel = &par.pool}), want, scale, 1e-14));
}

TEST(KernelMatmul, RejectsMismatchedOperands) {
  EXPECT_THROW(run_op("matmul", {zeros(DType::f32, {3, 4}), zeros(DType::f32, {5, 6})}), Error);
  EXPECT_THROW(run_op("matmul", {zeros(DType::f32, {2, 3, 4}), zeros(DType::f32, {3, 4, 5})}),
               Error);
  EXPECT_THROW(run_op("matmul", {zeros(DType::f32, {4}), zeros(DType::f32, {4, 5})}), Error);
  EXPECT_THROW(run_op("matmul", {zeros(DType::f32, {3, 4}), zeros(DType::f64, {4, 5})}), Error);
}

// The BLAS kernel equals the reference within f32 rounding: relative 1e-5 of
// sum_k |a_ik b_kj|, the natural scale of a dot product's rounding error.
TEST(FastKernel, BlasMatmulMatchesReference) {
  const KernelFn blas = runtime::fast_cpu_kernel("matmul");
  ASSERT_NE(blas, nullptr);
  Parallels par;
  Rng rng(21);
  for (DType dt : {DType::f32, DType::f64})
    for (const MatmulCase& c : matmul_cases(true)) {
      HostTensor a = random_tensor(rng, dt, c.a), b = random_tensor(rng, dt, c.b);
      const HostTensor ref = run_op("matmul", {a, b}, matmul_attrs(c), {.use_blas = false});
      const HostTensor scale = naive_matmul(a, b, c.ta, c.tb).second;
      const double tol = dt == DType::f32 ? 1e-5 : 1e-13;
      for (Parallel* p : par.all()) {
        EXPECT_TRUE(matmul_close(
            run_op("matmul", {a, b}, matmul_attrs(c), {.parallel = p, .use_blas = true}), ref,
            scale, tol))
            << "blas " << dtype_name(dt) << " " << case_str(c) << " " << par_name(p);
        EXPECT_TRUE(
            matmul_close(call_kernel("matmul", {a, b}, matmul_attrs(c), *p, blas), ref, scale, tol))
            << "blas " << dtype_name(dt) << " " << case_str(c) << " " << par_name(p)
            << " on poisoned buffers";
      }
    }
}

}  // namespace
}  // namespace tessel::test
