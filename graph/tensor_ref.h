// What a kernel sees: untyped views of buffers owned by an executor, and the executor's
// thread pool.
#pragma once

#include <cstdint>
#include <span>

#include "graph/dtype.h"
#include "graph/function_ref.h"

namespace tessel {

// A dense, row-major tensor view. Not owning.
struct TensorRef {
  void* data = nullptr;
  DType dtype = DType::f32;
  std::span<const int64_t> shape;
  int64_t numel = 0;

  template <class T>
  T* as() const { return static_cast<T*>(data); }
  int rank() const { return static_cast<int>(shape.size()); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  int64_t bytes() const;
};

// Work-sharing across the executor's threads. Implementations may run fn concurrently on
// disjoint ranges; for_range returns once all of [0, n) is done.
class Parallel {
 public:
  virtual ~Parallel() = default;
  virtual int num_threads() const = 0;
  virtual void for_range(int64_t n, int64_t grain, FunctionRef<void(int64_t, int64_t)> fn) = 0;
};

// Runs everything on the calling thread.
class SerialParallel final : public Parallel {
 public:
  int num_threads() const override { return 1; }
  void for_range(int64_t n, int64_t grain, FunctionRef<void(int64_t, int64_t)> fn) override {
    if (n > 0) fn(0, n);
  }
};

struct KernelCtx {
  Parallel* parallel = nullptr;  // never null when a kernel runs
  uint64_t seed = 0;             // run-wide seed, mixed into initializers and dropout masks
  // Added to a generated tensor's offsets in the whole (its "offsets" attribute): where this
  // run's part lies when the node runs once per microbatch. Empty: none.
  std::span<const int64_t> shift;
};

}  // namespace tessel
