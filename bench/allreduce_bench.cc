// The in-process engine's all-reduce against this machine's memcpy bandwidth. Prints one
// JSON line per (ranks, bytes): the median time of an in-place f32 sum over `iters` calls,
// its bus bandwidth (NCCL's convention: bytes x 2(k-1)/k over the time: what each rank's
// link would carry in a ring) and the time one thread takes to memcpy the same bytes,
// measured in the same run. Run by bench/compare_allreduce.py.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "runtime/inprocess_comm.h"

using Clock = std::chrono::steady_clock;
using namespace tessel;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  int iters = argc > 1 ? std::atoi(argv[1]) : 20;
  for (int64_t k : {2, 4})
    for (int64_t bytes : {int64_t{1} << 16, int64_t{1} << 20, int64_t{1} << 24, int64_t{1} << 26}) {
      const int64_t n = bytes / 4;
      runtime::InProcessWorld world(k);
      std::vector<std::vector<float>> buf(static_cast<size_t>(k), std::vector<float>(static_cast<size_t>(n), 1.f));
      std::vector<int64_t> group(static_cast<size_t>(k));
      std::iota(group.begin(), group.end(), 0);
      std::vector<double> times;
      std::vector<std::thread> threads;
      std::vector<std::vector<double>> per(static_cast<size_t>(k));
      for (int64_t r = 0; r < k; ++r)
        threads.emplace_back([&, r] {
          auto& b = buf[static_cast<size_t>(r)];
          const int64_t shape[1] = {n};
          TensorRef t{b.data(), DType::f32, shape, n};
          for (int i = 0; i < iters + 2; ++i) {
            world.rank(r).barrier(group);
            const auto t0 = Clock::now();
            world.rank(r).all_reduce(t, t, runtime::ReduceOp::sum, group);
            if (i >= 2) per[static_cast<size_t>(r)].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
          }
        });
      for (auto& t : threads) t.join();
      for (int i = 0; i < iters; ++i) {  // a call ends when its slowest member does
        double worst = 0;
        for (auto& p : per) worst = std::max(worst, p[static_cast<size_t>(i)]);
        times.push_back(worst);
      }
      std::vector<char> src(static_cast<size_t>(bytes), 1), dst(static_cast<size_t>(bytes), 0);
      std::vector<double> copy;
      for (int i = 0; i < iters + 2; ++i) {
        const auto t0 = Clock::now();
        std::memcpy(dst.data(), src.data(), src.size());
        if (i >= 2) copy.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        src[static_cast<size_t>(i) % src.size()] ^= dst[0];
      }
      const double t = median(times), c = median(copy);
      std::printf("{\"ranks\":%lld,\"bytes\":%lld,\"allreduce_s\":%.9g,\"busbw_gbs\":%.4g,\"memcpy_s\":%.9g,\"memcpy_gbs\":%.4g}\n",
                  static_cast<long long>(k), static_cast<long long>(bytes), t,
                  static_cast<double>(bytes) * 2 * static_cast<double>(k - 1) / static_cast<double>(k) / t / 1e9, c,
                  static_cast<double>(bytes) / c / 1e9);
      std::fflush(stdout);
    }
}
