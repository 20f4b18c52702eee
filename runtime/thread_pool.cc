#include "runtime/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

namespace tessel::runtime {

namespace {
thread_local bool t_in_pool = false;

int default_threads() {
  if (const char* env = std::getenv("TESSEL_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// Spin briefly before sleeping: steps of a training loop come back within microseconds,
// and a futex wake-up costs more than that.
template <class Pred>
void spin_then_wait(std::atomic<uint64_t>& gen, uint64_t seen, Pred done) {
  for (int i = 0; i < 20000; ++i) {
    if (done()) return;
    if ((i & 63) == 63) std::this_thread::yield();
  }
  while (!done()) gen.wait(seen, std::memory_order_acquire);
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = default_threads();
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::shared() {
  static ThreadPool pool(default_threads());
  return pool;
}

void ThreadPool::run_chunks() {
  for (;;) {
    int64_t c = next_.fetch_add(1, std::memory_order_relaxed);
    int64_t b = c * chunk_;
    if (b >= n_) return;
    try {
      (*fn_)(b, std::min(n_, b + chunk_));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
}

void ThreadPool::worker(int) {
  t_in_pool = true;
  uint64_t seen = 0;
  for (;;) {
    spin_then_wait(generation_, seen, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    run_chunks();
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::for_range(int64_t n, int64_t grain, FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  const int threads = num_threads();
  if (t_in_pool || !lock.owns_lock() || threads == 1 || n <= std::max<int64_t>(grain, 1)) {
    fn(0, n);
    return;
  }
  // A few chunks per thread balance uneven chunks without much scheduling overhead.
  int64_t chunks = std::min<int64_t>((n + grain - 1) / std::max<int64_t>(grain, 1), threads * 4);
  chunks = std::max<int64_t>(chunks, 1);
  fn_ = &fn;
  n_ = n;
  chunk_ = (n + chunks - 1) / chunks;
  next_.store(0, std::memory_order_relaxed);
  error_ = nullptr;
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  t_in_pool = true;
  run_chunks();
  t_in_pool = false;
  while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  fn_ = nullptr;
  if (error_) std::rethrow_exception(error_);
}

}  // namespace tessel::runtime
