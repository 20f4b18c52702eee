// A JIT-compiled fused bias + GELU (tanh form) over 64 MB of f32 against memcpy of the same
// buffer, on one thread and split over two; both move 128 MB (read + write). Prints one
// JSON line per thread count with medians of `iters` runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "runtime/cpu_jit.h"

using Clock = std::chrono::steady_clock;
using namespace tessel;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class F>
double timed(int threads, int64_t n, F f) {
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int t = 1; t < threads; ++t) ts.emplace_back([&, t] { f(n * t / threads, n * (t + 1) / threads); });
  f(0, n / threads);
  for (auto& t : ts) t.join();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 10;
  ScalarExpr gelu;
  int x = gelu.binary(ScalarOp::add, gelu.arg(0), gelu.arg(1));
  int x3 = gelu.binary(ScalarOp::mul, gelu.binary(ScalarOp::mul, x, x), x);
  int inner = gelu.binary(ScalarOp::mul, gelu.constant(0.7978845608),
                          gelu.binary(ScalarOp::add, x, gelu.binary(ScalarOp::mul, gelu.constant(0.044715), x3)));
  int t = gelu.binary(ScalarOp::add, gelu.constant(1), gelu.unary(ScalarOp::tanh, inner));
  gelu.binary(ScalarOp::mul, gelu.binary(ScalarOp::mul, gelu.constant(0.5), x), t);
  auto& jit = runtime::CpuJit::shared();
  const auto c0 = Clock::now();
  runtime::ElementwiseFn fn = jit.compile({"bias_gelu", gelu, {false, true}});
  const double compile_s = std::chrono::duration<double>(Clock::now() - c0).count();
  const int64_t n = int64_t{16} << 20;  // 64 MB of f32
  std::vector<float> in(static_cast<size_t>(n), 0.5f), out(static_cast<size_t>(n)), dst(static_cast<size_t>(n));
  float bias = 0.1f;
  const float* args[2] = {in.data(), &bias};
  for (int threads : {1, 2}) {
    std::vector<double> k, c;
    for (int i = 0; i < iters + 1; ++i) {
      const double tk = timed(threads, n, [&](int64_t b, int64_t e) { fn(args, out.data(), b, e); });
      const double tc = timed(threads, n, [&](int64_t b, int64_t e) {
        std::memcpy(dst.data() + b, in.data() + b, static_cast<size_t>(e - b) * sizeof(float));
      });
      if (i) k.push_back(tk), c.push_back(tc);
    }
    const double bytes = 2.0 * static_cast<double>(n) * sizeof(float);
    std::printf("{\"threads\":%d,\"kernel_s\":%.6g,\"kernel_gbs\":%.4g,\"memcpy_s\":%.6g,\"memcpy_gbs\":%.4g,\"compile_s\":%.4g,\"cpu\":\"%s\"}\n",
                threads, median(k), bytes / median(k) / 1e9, median(c), bytes / median(c) / 1e9, compile_s,
                jit.host_cpu().substr(0, jit.host_cpu().find(' ')).c_str());
  }
}
