#include "runtime/cpu_kernels.h"

#include <cblas.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <array>

#include "graph/error.h"
#include "graph/graph.h"
#include "ops/kernel_util.h"
#include "ops/matmul.h"

namespace tessel::runtime {

namespace {

// f32 products on oneDNN's sgemm (JIT kernels for this CPU: 11 % off a one-thread GPT step
// against OpenBLAS here, its attention's 128x128x64 products at 98-101 GFLOP/s against 74-86),
// f64 on OpenBLAS. Each call runs on the calling thread: the executor splits products over its
// own pool, so oneDNN's OpenMP team is one thread on every thread that calls it.
template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
          int64_t ldb, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    thread_local const bool one_thread = (omp_set_num_threads(1), true);
    (void)one_thread;
    if (dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc) != dnnl_success)
      throw Error("oneDNN sgemm failed on a " + std::to_string(M) + "x" + std::to_string(K) + " by " + std::to_string(K) +
                  "x" + std::to_string(N) + " product");
  } else {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0, A, lda, B,
                ldb, 0.0, C, ldc);
  }
}

// One GEMM split across the pool by rows of C, or by columns when there are few rows.
template <class T>
void gemm_parallel(const KernelCtx& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                   const T* A, const T* B, T* C) {
  const int64_t lda = ta ? M : K, ldb = tb ? K : N;
  if (M == 0 || N == 0) return;
  if (K == 0) {
    std::fill(C, C + M * N, T(0));
    return;
  }
  const int threads = ctx.parallel->num_threads();
  const double flops = 2.0 * M * N * K;
  if (threads == 1 || flops < 4e5) {
    gemm(ta, tb, M, N, K, A, lda, B, ldb, C, N);
    return;
  }
  if (M >= 16 * threads || M >= N) {
    const int64_t step = (M + threads - 1) / threads;
    ctx.parallel->for_range(threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * step, r1 = std::min(M, r0 + step);
        if (r0 >= r1) continue;
        const T* a = ta ? A + r0 : A + r0 * lda;
        gemm(ta, tb, r1 - r0, N, K, a, lda, B, ldb, C + r0 * N, N);
      }
    });
  } else {
    const int64_t step = (N + threads - 1) / threads;
    ctx.parallel->for_range(threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * step, c1 = std::min(N, c0 + step);
        if (c0 >= c1) continue;
        const T* b = tb ? B + c0 * ldb : B + c0;
        gemm(ta, tb, M, c1 - c0, K, A, lda, b, ldb, C + c0, N);
      }
    });
  }
}

template <class T>
void matmul_blas(const ops::MatmulDims& d, const TensorRef& a, const TensorRef& b,
                 const TensorRef& c, const KernelCtx& ctx) {
  const T* A = a.as<const T>();
  const T* B = b.as<const T>();
  T* C = c.as<T>();
  const int64_t batches = numel(d.batch.span());
  if (batches == 0 || d.m == 0 || d.n == 0) return;
  if (d.k == 0) {  // BLAS wants leading dimensions >= 1; the product is all zeros
    std::fill(C, C + batches * d.m * d.n, T(0));
    return;
  }
  // b shared by every batch of a, and a not transposed: one GEMM of [batch*M, K].
  if (numel(d.batch_b.span()) == 1 && !d.ta && d.batch_a == d.batch) {
    gemm_parallel(ctx, false, d.tb, batches * d.m, d.n, d.k, A, B, C);
    return;
  }
  std::array<std::span<const int64_t>, 2> ins = {d.batch_a.span(), d.batch_b.span()};
  ops::Broadcast bc(d.batch, ins);
  auto one = [&](int64_t i, bool split) {
    std::array<int64_t, 3> off{};
    bc.offsets(i, off);
    const T* ai = A + off[0] * d.m * d.k;
    const T* bi = B + off[1] * d.k * d.n;
    T* ci = C + i * d.m * d.n;
    if (split) gemm_parallel(ctx, d.ta, d.tb, d.m, d.n, d.k, ai, bi, ci);
    else gemm(d.ta, d.tb, d.m, d.n, d.k, ai, d.ta ? d.m : d.k, bi, d.tb ? d.k : d.n, ci, d.n);
  };
  if (batches >= ctx.parallel->num_threads()) {
    ctx.parallel->for_range(batches, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) one(i, false);
    });
  } else {
    for (int64_t i = 0; i < batches; ++i) one(i, true);
  }
}

void matmul_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                   const KernelCtx& ctx) {
  ops::MatmulDims d = ops::matmul_dims(n, in[0].shape, in[1].shape);
  ops::dispatch_float(n, in[0].dtype, [&](auto t) {
    matmul_blas<decltype(t)>(d, in[0], in[1], out[0], ctx);
  });
}

}  // namespace

KernelFn fast_cpu_kernel(std::string_view op) {
  if (op == "matmul") return matmul_kernel;
  return nullptr;
}

void configure_blas_threads() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

void reference_sgemm(int threads, int64_t n, const float* a, const float* b, float* c) {
  configure_blas_threads();
  openblas_set_num_threads(threads);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(n), static_cast<int>(n), 1.0f,
              a, static_cast<int>(n), b, static_cast<int>(n), 0.0f, c, static_cast<int>(n));
  openblas_set_num_threads(1);
}

KernelFn cpu_kernel_for(const Node& n, bool use_blas) {
  if (use_blas)
    if (KernelFn f = fast_cpu_kernel(n.op)) return f;
  return n.def->kernel;
}

}  // namespace tessel::runtime
