// Reductions over axes: sum and max (mean is a composition in Emitter).
#include <algorithm>
#include <vector>
#include <limits>

#include "ops/defs.h"

namespace tessel::ops {

namespace {

// Normalised, sorted, de-duplicated axes of a reduce node (empty attr: all axes).
SmallVec<int> reduce_axes(const Node& n, int rank) {
  const auto& a = n.attrs.get_i64s("axes");
  SmallVec<int> axes;
  if (a.empty()) {
    for (int i = 0; i < rank; ++i) axes.push_back(i);
    return axes;
  }
  for (int64_t x : a) axes.push_back(normalize_axis(x, rank));
  std::sort(axes.begin(), axes.end());
  if (std::adjacent_find(axes.begin(), axes.end()) != axes.end())
    throw Error("repeated axis in " + shape_str(a));
  return axes;
}

Shape reduced_shape(const Shape& in, const SmallVec<int>& axes, bool keepdims) {
  Shape out;
  for (int i = 0; i < static_cast<int>(in.size()); ++i) {
    bool r = std::binary_search(axes.begin(), axes.end(), i);
    if (!r) out.push_back(in[i]);
    else if (keepdims) out.push_back(1);
  }
  return out;
}

std::vector<TensorType> infer_reduce(const Node& n, std::span<const TensorType> in) {
  require_numeric(in[0], "the input");
  auto axes = reduce_axes(n, in[0].rank());
  return {TensorType{in[0].dtype, reduced_shape(in[0].shape, axes, n.attrs.get_bool("keepdims"))}};
}

struct SumOp {
  template <class T> static T init() { return T(0); }
  template <class T> static T combine(T a, T b) { return a + b; }
};
struct MaxOp {
  template <class T> static T init() {
    if constexpr (std::numeric_limits<T>::has_infinity) return -std::numeric_limits<T>::infinity();
    else return std::numeric_limits<T>::lowest();
  }
  template <class T> static T combine(T a, T b) { return b > a ? b : a; }
};

template <class R, class T>
void reduce_impl(const Node& n, const TensorRef& x, const TensorRef& y, const KernelCtx& ctx) {
  const T* in = x.as<const T>();
  T* out = y.as<T>();
  auto axes = reduce_axes(n, x.rank());
  // Collapse into alternating kept / reduced runs, dropping size-1 dims.
  int64_t dims[kMaxRank];
  bool red[kMaxRank];
  int rank = 0;
  for (int i = 0; i < x.rank(); ++i) {
    if (x.shape[i] == 1) continue;
    bool r = std::binary_search(axes.begin(), axes.end(), i);
    if (rank > 0 && red[rank - 1] == r) {
      dims[rank - 1] *= x.shape[i];
    } else {
      dims[rank] = x.shape[i];
      red[rank] = r;
      ++rank;
    }
  }
  // Accumulate f32 sums of long rows in double; max stays exact in T.
  using Acc = std::conditional_t<std::is_same_v<T, float> && std::is_same_v<R, SumOp>, double, T>;
  if (x.numel == 0 || rank == 0 || (rank == 1 && !red[0])) {
    // Nothing reduced (or nothing to read): out is a copy of in, or the identity.
    if (x.numel == 0) {
      for (int64_t i = 0; i < y.numel; ++i) out[i] = R::template init<T>();
    } else {
      std::copy(in, in + x.numel, out);
    }
    return;
  }
  if (rank == 1 || (rank == 2 && !red[0])) {  // [R] or [K, R]: rows
    const int64_t rows = rank == 1 ? 1 : dims[0];
    const int64_t len = dims[rank - 1];
    parallel_range(ctx, rows, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const T* p = in + k * len;
        Acc acc = R::template init<Acc>();
        for (int64_t i = 0; i < len; ++i) acc = R::combine(acc, Acc(p[i]));
        out[k] = static_cast<T>(acc);
      }
    }, std::max<int64_t>(1, kGrain / len));
    return;
  }
  if (rank == 2 || (rank == 3 && !red[0])) {  // [R, K] or [K1, R, K2]: columns
    const int64_t outer = rank == 2 ? 1 : dims[0];
    const int64_t len = dims[rank - 2];
    const int64_t inner = dims[rank - 1];
    // [R, K] (a bias gradient: the sum over the batch): whole rows read front to back, into the
    // output on one thread (or with few rows), else into a partial row per block of rows, the
    // partials then combined. Column chunks would read a slice of every row, which the
    // prefetcher follows badly.
    if (outer == 1 && inner <= (int64_t{1} << 16)) {
      auto sum_rows = [&](T* acc, int64_t r0, int64_t r1) {
        for (int64_t c = 0; c < inner; ++c) acc[c] = R::template init<T>();
        for (int64_t r = r0; r < r1; ++r) {
          const T* row = in + r * inner;
          for (int64_t c = 0; c < inner; ++c) acc[c] = R::combine(acc[c], row[c]);
        }
      };
      const int64_t threads = ctx.parallel->num_threads();
      const int64_t blocks = threads > 1 ? std::min<int64_t>(4 * threads, len / 64) : 1;
      if (blocks <= 1) {
        sum_rows(out, 0, len);
        return;
      }
      static thread_local std::vector<T> partial;  // grows once; the step loop allocates nothing after
      if (partial.size() < static_cast<size_t>(blocks * inner)) partial.resize(static_cast<size_t>(blocks * inner));
      T* part = partial.data();
      ctx.parallel->for_range(blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t k = b0; k < b1; ++k) sum_rows(part + k * inner, len * k / blocks, len * (k + 1) / blocks);
      });
      for (int64_t c = 0; c < inner; ++c) out[c] = part[c];
      for (int64_t k = 1; k < blocks; ++k)
        for (int64_t c = 0; c < inner; ++c) out[c] = R::combine(out[c], part[k * inner + c]);
      return;
    }
    // Split over outer blocks and inner columns so both shapes use every thread.
    const int64_t col_chunk = 256;
    const int64_t chunks_per_outer = (inner + col_chunk - 1) / col_chunk;
    parallel_range(ctx, outer * chunks_per_outer, [&](int64_t b, int64_t e) {
      for (int64_t w = b; w < e; ++w) {
        const int64_t o = w / chunks_per_outer;
        const int64_t c0 = (w % chunks_per_outer) * col_chunk;
        const int64_t c1 = std::min(inner, c0 + col_chunk);
        T* dst = out + o * inner;
        const T* src = in + o * len * inner;
        for (int64_t c = c0; c < c1; ++c) dst[c] = R::template init<T>();
        for (int64_t r = 0; r < len; ++r) {
          const T* row = src + r * inner;
          for (int64_t c = c0; c < c1; ++c) dst[c] = R::combine(dst[c], row[c]);
        }
      }
    }, std::max<int64_t>(1, kGrain / (len * col_chunk)));
    return;
  }
  // General pattern: odometer over the input, output offset from kept dims only.
  int64_t ostride[kMaxRank];
  int64_t s = 1;
  for (int i = rank - 1; i >= 0; --i) {
    ostride[i] = red[i] ? 0 : s;
    if (!red[i]) s *= dims[i];
  }
  for (int64_t i = 0; i < y.numel; ++i) out[i] = R::template init<T>();
  int64_t idx[kMaxRank] = {};
  int64_t off = 0;
  for (int64_t i = 0; i < x.numel; ++i) {
    out[off] = R::combine(out[off], in[i]);
    for (int d = rank - 1; d >= 0; --d) {
      off += ostride[d];
      if (++idx[d] < dims[d]) break;
      off -= ostride[d] * dims[d];
      idx[d] = 0;
    }
  }
}

template <class R>
void reduce_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                   const KernelCtx& ctx) {
  dispatch_numeric(n, in[0].dtype, [&](auto t) {
    reduce_impl<R, decltype(t)>(n, in[0], out[0], ctx);
  });
}

// The reduced gradient reshaped so it broadcasts against the input.
Value keepdims_grad(const Emitter& e, const Node& n, Value g) {
  const Shape& in = e.shape(n.inputs[0]);
  auto axes = reduce_axes(n, static_cast<int>(in.size()));
  return e.reshape(g, reduced_shape(in, axes, true));
}

void grad_sum(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  c.in_grads[0] = e.broadcast_to(keepdims_grad(e, n, c.out_grads[0]), e.shape(n.inputs[0]));
}

void grad_max(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  Value x = n.inputs[0];
  Value m = keepdims_grad(e, n, n.out());
  Value g = keepdims_grad(e, n, c.out_grads[0]);
  c.in_grads[0] = e.where(e.equal(x, m), e.broadcast_to(g, e.shape(x)), e.scalar_like(x, 0));
}

template <FactorReduce R>
ShardingRule rule_reduce(const Node& n, std::span<const TensorType> in) {
  ShardingRule r;
  auto axes = reduce_axes(n, in[0].rank());
  const bool keep = n.attrs.get_bool("keepdims");
  std::vector<int> fin, fout;
  for (int d = 0; d < in[0].rank(); ++d) {
    const bool red = std::binary_search(axes.begin(), axes.end(), d);
    const int f = r.add_factor(in[0].shape[d], red ? R : FactorReduce::none);
    fin.push_back(f);
    if (!red) fout.push_back(f);
    else if (keep) fout.push_back(-1);
  }
  r.inputs = {fin};
  r.outputs = {fout};
  r.linear = {R == FactorReduce::sum};
  return r;
}

Cost reduce_cost(const Node& n, std::span<const TensorType> in) {
  Cost c = streaming_cost(n, in, 0);
  c.flops = static_cast<double>(in[0].numel());
  return c;
}

void add_reduce(OpRegistry& r, std::string name, KernelFn k, GradFn g, ShardingFn sh, std::string doc) {
  OpDef d;
  d.name = std::move(name);
  d.min_inputs = d.max_inputs = 1;
  d.attrs = {attr("axes", AttrType::i64s), attr("keepdims", AttrType::boolean)};
  d.infer = infer_reduce;
  d.kernel = k;
  d.grad = g;
  d.cost = reduce_cost;
  d.sharding = sh;
  d.doc = std::move(doc);
  r.add(std::move(d));
}

}  // namespace

void register_reduce_ops(OpRegistry& r) {
  add_reduce(r, "sum", reduce_kernel<SumOp>, grad_sum, rule_reduce<FactorReduce::sum>, "sum over axes (empty: all)");
  add_reduce(r, "max", reduce_kernel<MaxOp>, grad_max, rule_reduce<FactorReduce::max>, "max over axes (empty: all)");
}

}  // namespace tessel::ops
