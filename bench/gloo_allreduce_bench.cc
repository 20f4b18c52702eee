// One rank of the Gloo engine's all-reduce benchmark: run as one process per rank under a
// launcher (`tessel launch --nproc 2 -- gloo_allreduce_bench ITERS`). For each buffer size
// (1-256 MiB of f32) rank 0 prints one JSON line: the median over ITERS calls (after 5
// uncounted ones) of an in-place sum (a call ends when the slowest rank returns: each call
// starts after a barrier and its time is the max over ranks), and its bus bandwidth
// (bytes x 2(k-1)/k over the time, NCCL's convention). bench/compare_gloo_allreduce.py
// runs it beside PyTorch's gloo backend.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "runtime/process_env.h"

using Clock = std::chrono::steady_clock;
using namespace tessel;

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 10;
  const auto role = runtime::process_role();
  if (!role) {
    std::fprintf(stderr, "run under a launcher: tessel launch --nproc 2 -- %s [iters]\n", argv[0]);
    return 2;
  }
  runtime::CommOptions co;
  co.timeout_s = 120;
  co.engine = "gloo";
  auto comm = runtime::connect_ranks(*role, co);
  std::vector<int64_t> group(static_cast<size_t>(role->size));
  std::iota(group.begin(), group.end(), 0);
  const int64_t one = 1, k = role->size;
  for (int64_t mib : {1, 4, 16, 64, 256}) {
    const int64_t n = mib * (1 << 20) / 4;
    std::vector<float> buf(static_cast<size_t>(n), 1.f);
    const TensorRef t{buf.data(), DType::f32, std::span<const int64_t>(&n, 1), n};
    std::vector<double> times;
    for (int i = 0; i < iters + 5; ++i) {  // 5 uncounted first
      comm->barrier(group);
      const auto t0 = Clock::now();
      comm->all_reduce(t, t, runtime::ReduceOp::sum, group);
      double s = std::chrono::duration<double>(Clock::now() - t0).count();
      const TensorRef st{&s, DType::f64, std::span<const int64_t>(&one, 1), 1};
      std::vector<double> all(static_cast<size_t>(k));
      const TensorRef at{all.data(), DType::f64, std::span<const int64_t>(&k, 1), k};
      comm->all_gather(st, at, 0, group);
      if (i >= 5) times.push_back(*std::max_element(all.begin(), all.end()));
    }
    std::sort(times.begin(), times.end());
    const double med = times[times.size() / 2];
    const double bytes = static_cast<double>(n) * 4;
    if (role->rank == 0)
      std::printf("{\"engine\":\"tessel gloo\",\"ranks\":%lld,\"bytes\":%.0f,\"allreduce_s\":%.6g,\"bus_gbps\":%.4g}\n",
                  static_cast<long long>(k), bytes, med, bytes * 2 * (k - 1) / k / med / 1e9);
    std::fflush(stdout);
  }
  return 0;
}
