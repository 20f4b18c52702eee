// Helpers shared by the reference kernels: dtype dispatch, half-precision conversion,
// broadcasting iteration. Internal to ops/ and the runtime's kernels.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "graph/error.h"
#include "graph/graph.h"
#include "graph/tensor_ref.h"

namespace tessel::ops {

// Elements per parallel chunk below which a kernel stays on one thread.
inline constexpr int64_t kGrain = 1 << 15;

[[noreturn]] void unsupported_dtype(const Node& n, DType t);

// A fixed-capacity list of dims or axes. Kernels use it instead of std::vector so the
// step loop never touches the heap.
template <class T>
class SmallVec {
 public:
  SmallVec() = default;
  explicit SmallVec(std::span<const T> s) {
    for (T x : s) push_back(x);
  }
  void push_back(T x) {
    if (n_ >= kMaxRank) throw Error("more than " + std::to_string(kMaxRank) + " dims");
    v_[n_++] = x;
  }
  T& operator[](int i) { return v_[i]; }
  T operator[](int i) const { return v_[i]; }
  int size() const { return n_; }
  bool empty() const { return n_ == 0; }
  const T* begin() const { return v_.data(); }
  const T* end() const { return v_.data() + n_; }
  T* begin() { return v_.data(); }
  T* end() { return v_.data() + n_; }
  std::span<const T> span() const { return {v_.data(), static_cast<size_t>(n_)}; }
  operator std::span<const T>() const { return span(); }  // NOLINT: a view, by design
  bool operator==(const SmallVec& o) const { return std::equal(begin(), end(), o.begin(), o.end()); }

 private:
  std::array<T, kMaxRank> v_{};
  int n_ = 0;
};
using Dims = SmallVec<int64_t>;

// Calls f(T{}) for f32/f64; other dtypes are refused naming the node.
template <class F>
void dispatch_float(const Node& n, DType t, F&& f) {
  switch (t) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    default: unsupported_dtype(n, t);
  }
}
// f32/f64/i32/i64.
template <class F>
void dispatch_numeric(const Node& n, DType t, F&& f) {
  switch (t) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::i32: f(int32_t{}); return;
    case DType::i64: f(int64_t{}); return;
    default: unsupported_dtype(n, t);
  }
}
template <class F>
void dispatch_index(const Node& n, DType t, F&& f) {
  switch (t) {
    case DType::i32: f(int32_t{}); return;
    case DType::i64: f(int64_t{}); return;
    default: unsupported_dtype(n, t);
  }
}

// bf16/f16 <-> f32 (round to nearest even).
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

// Output-indexed iteration over up to 3 broadcast inputs. Dims are right-aligned NumPy
// style; adjacent dims that broadcast the same way are merged so most cases become rank 1
// or 2.
struct Broadcast {
  int rank = 0;
  std::array<int64_t, kMaxRank> dims{};
  std::array<std::array<int64_t, kMaxRank>, 3> strides{};  // elements; 0 where broadcast
  int64_t total = 0;

  Broadcast(std::span<const int64_t> out, std::span<const std::span<const int64_t>> ins);
  // Element offsets of each input for flat output index `i`.
  void offsets(int64_t i, std::array<int64_t, 3>& off) const;
};

// Runs body(begin, end) over [0, n) on the context's threads.
template <class F>
void parallel_range(const KernelCtx& ctx, int64_t n, F&& body, int64_t grain = kGrain) {
  if (n <= grain || ctx.parallel->num_threads() == 1) {
    if (n > 0) body(int64_t{0}, n);
    return;
  }
  ctx.parallel->for_range(n, grain, body);
}

// out[i] = f(a[i]) over same-shaped contiguous tensors.
template <class TI, class TO, class F>
void map_unary(const KernelCtx& ctx, const TensorRef& a, const TensorRef& out, F f) {
  const TI* x = a.as<const TI>();
  TO* y = out.as<TO>();
  parallel_range(ctx, out.numel, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = f(x[i]);
  });
}

// out = f(a, b) with NumPy broadcasting.
template <class TA, class TB, class TO, class F>
void map_binary(const KernelCtx& ctx, const TensorRef& a, const TensorRef& b,
                const TensorRef& out, F f) {
  const TA* x = a.as<const TA>();
  const TB* y = b.as<const TB>();
  TO* z = out.as<TO>();
  if (a.numel == out.numel && b.numel == out.numel) {
    parallel_range(ctx, out.numel, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) z[i] = f(x[i], y[i]);
    });
    return;
  }
  if (b.numel == 1) {
    const TB c = y[0];
    parallel_range(ctx, out.numel, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) z[i] = f(x[i], c);
    });
    return;
  }
  if (a.numel == 1) {
    const TA c = x[0];
    parallel_range(ctx, out.numel, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) z[i] = f(c, y[i]);
    });
    return;
  }
  std::array<std::span<const int64_t>, 2> ins = {a.shape, b.shape};
  Broadcast bc(out.shape, ins);
  const int64_t inner = bc.rank ? bc.dims[bc.rank - 1] : 1;
  const int64_t sa = bc.rank ? bc.strides[0][bc.rank - 1] : 0;
  const int64_t sb = bc.rank ? bc.strides[1][bc.rank - 1] : 0;
  const int64_t rows = inner ? out.numel / inner : 0;
  parallel_range(
      ctx, rows,
      [&](int64_t r0, int64_t r1) {
        std::array<int64_t, 3> off{};
        for (int64_t r = r0; r < r1; ++r) {
          bc.offsets(r * inner, off);
          const TA* xa = x + off[0];
          const TB* yb = y + off[1];
          TO* zo = z + r * inner;
          if (sa == 1 && sb == 1)
            for (int64_t i = 0; i < inner; ++i) zo[i] = f(xa[i], yb[i]);
          else if (sa == 1 && sb == 0)
            for (int64_t i = 0; i < inner; ++i) zo[i] = f(xa[i], yb[0]);
          else if (sa == 0 && sb == 1)
            for (int64_t i = 0; i < inner; ++i) zo[i] = f(xa[0], yb[i]);
          else
            for (int64_t i = 0; i < inner; ++i) zo[i] = f(xa[i * sa], yb[i * sb]);
        }
      },
      std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)));
}

// out = f(a, b, c) with broadcasting (general strided loop).
template <class TA, class TB, class TC, class TO, class F>
void map_ternary(const KernelCtx& ctx, const TensorRef& a, const TensorRef& b,
                 const TensorRef& c, const TensorRef& out, F f) {
  std::array<std::span<const int64_t>, 3> ins = {a.shape, b.shape, c.shape};
  Broadcast bc(out.shape, ins);
  const TA* x = a.as<const TA>();
  const TB* y = b.as<const TB>();
  const TC* w = c.as<const TC>();
  TO* z = out.as<TO>();
  const int64_t inner = bc.rank ? bc.dims[bc.rank - 1] : 1;
  const int64_t rows = inner ? out.numel / inner : 0;
  std::array<int64_t, 3> s{};
  for (int k = 0; k < 3; ++k) s[k] = bc.rank ? bc.strides[k][bc.rank - 1] : 0;
  parallel_range(
      ctx, rows,
      [&](int64_t r0, int64_t r1) {
        std::array<int64_t, 3> off{};
        for (int64_t r = r0; r < r1; ++r) {
          bc.offsets(r * inner, off);
          TO* zo = z + r * inner;
          for (int64_t i = 0; i < inner; ++i)
            zo[i] = f(x[off[0] + i * s[0]], y[off[1] + i * s[1]], w[off[2] + i * s[2]]);
        }
      },
      std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)));
}

// The kernel of ops whose output holds input 0's bytes (reshape, stop_gradient); the
// executor normally aliases them and skips it.
void copy_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                 const KernelCtx& ctx);

// NumPy broadcast of shapes; throws describing the mismatch.
Shape broadcast_shapes(std::span<const int64_t> a, std::span<const int64_t> b);
Dims broadcast_dims(std::span<const int64_t> a, std::span<const int64_t> b);

// Deterministic counter-based random numbers (splitmix64 over seed and index): the same
// element gets the same number whatever the thread count or later sharding.
uint64_t mix64(uint64_t x);
inline uint64_t rand_bits(uint64_t seed, uint64_t index) { return mix64(seed ^ mix64(index)); }
// Uniform in [0, 1).
inline double rand_uniform(uint64_t seed, uint64_t index) {
  return static_cast<double>(rand_bits(seed, index) >> 11) * 0x1.0p-53;
}
double rand_normal(uint64_t seed, uint64_t index);
uint64_t hash_name(std::string_view s);

}  // namespace tessel::ops
