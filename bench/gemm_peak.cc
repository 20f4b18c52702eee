// OpenBLAS's own SGEMM rate on this machine: the physical limit the MLP step is measured
// against (bench/compare_step_time.py). OpenBLAS threads itself here (no tessel pool).
//   gemm_peak [--threads T] [--n N] [--iters K]
// Prints one JSON line: {"gflops_median":..., "gflops_max":..., "n":..., "threads":...}.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  int threads = 2, iters = 10;
  int64_t n = 2048;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--threads") threads = std::stoi(v);
    else if (k == "--n") n = std::stoll(v);
    else if (k == "--iters") iters = std::stoi(v);
    else {
      std::cerr << "gemm_peak: unknown option " << k << "\n";
      return 2;
    }
  }
  openblas_set_num_threads(threads);
  std::vector<float> a(static_cast<size_t>(n * n), 0.5f), b(a.size(), 0.25f), c(a.size(), 0.0f);
  std::vector<double> gf;
  for (int i = 0; i < iters + 1; ++i) {  // the first call warms up threads and caches
    const auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                c.data(), n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i) gf.push_back(2.0 * double(n) * double(n) * double(n) / s / 1e9);
  }
  std::sort(gf.begin(), gf.end());
  std::cout << "{\"n\":" << n << ",\"threads\":" << threads << ",\"gflops_median\":" << gf[gf.size() / 2]
            << ",\"gflops_max\":" << gf.back() << ",\"check\":" << c[0] << "}\n";
}
