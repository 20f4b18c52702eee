// The one thread pool of a process's executors: kernels split work across it, and BLAS
// calls are split across it too (OpenBLAS itself is kept single-threaded), so two pools
// never fight over the cores.
#pragma once

#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "graph/tensor_ref.h"

namespace tessel::runtime {

class ThreadPool final : public Parallel {
 public:
  // `threads` counts the calling thread; 0 means one per hardware core.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool() override;
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const override { return static_cast<int>(workers_.size()) + 1; }
  // Safe to call from several threads: a call made while the pool is busy, or from inside
  // one of its own tasks, runs on the calling thread. The first exception a task throws is
  // rethrown here after every chunk has finished.
  void for_range(int64_t n, int64_t grain, FunctionRef<void(int64_t, int64_t)> fn) override;

  // A process-wide pool sized to the hardware (or TESSEL_NUM_THREADS).
  static ThreadPool& shared();

 private:
  void worker(int index);
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex busy_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // The job in flight; written before generation_ is bumped.
  FunctionRef<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  std::mutex error_mu_;
  std::exception_ptr error_;
};

}  // namespace tessel::runtime
