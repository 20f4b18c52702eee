// Batched matrix product with optional transposes of the last two dims.
#include <algorithm>

#include "ops/defs.h"
#include "ops/matmul.h"

namespace tessel::ops {

MatmulDims matmul_dims(const Node& n, std::span<const int64_t> a, std::span<const int64_t> b) {
  MatmulDims d;
  d.ta = n.attrs.get_bool_or("transpose_a", false);
  d.tb = n.attrs.get_bool_or("transpose_b", false);
  const int ra = static_cast<int>(a.size()), rb = static_cast<int>(b.size());
  d.m = d.ta ? a[ra - 1] : a[ra - 2];
  d.k = d.ta ? a[ra - 2] : a[ra - 1];
  const int64_t kb = d.tb ? b[rb - 1] : b[rb - 2];
  d.n = d.tb ? b[rb - 2] : b[rb - 1];
  if (d.k != kb) {
    throw Error("inner dims differ: " + shape_str(a) + (d.ta ? "^T" : "") + " x " +
                shape_str(b) + (d.tb ? "^T" : "") + " (" + std::to_string(d.k) + " vs " +
                std::to_string(kb) + ")");
  }
  d.batch_a = Dims(a.first(ra - 2));
  d.batch_b = Dims(b.first(rb - 2));
  d.batch = broadcast_dims(d.batch_a, d.batch_b);
  return d;
}

namespace {

std::vector<TensorType> infer_matmul(const Node& n, std::span<const TensorType> in) {
  if (in[0].rank() < 2 || in[1].rank() < 2)
    throw Error("operands need rank >= 2, got " + in[0].str() + " and " + in[1].str());
  if (in[0].dtype != in[1].dtype)
    throw Error("dtypes differ: " + in[0].str() + " vs " + in[1].str());
  require_float(in[0], "operands");
  MatmulDims d;
  try {
    d = matmul_dims(n, in[0].shape, in[1].shape);
  } catch (const Error& e) {
    throw Error(std::string(e.what()));
  }
  Shape out(d.batch.begin(), d.batch.end());
  out.push_back(d.m);
  out.push_back(d.n);
  return {TensorType{in[0].dtype, out}};
}

template <class T>
void matmul_ref(const MatmulDims& d, const TensorRef& A, const TensorRef& B, const TensorRef& C,
                const KernelCtx& ctx) {
  const int64_t M = d.m, N = d.n, K = d.k;
  const int64_t batches = numel(d.batch);
  std::array<std::span<const int64_t>, 2> ins = {d.batch_a.span(), d.batch_b.span()};
  Broadcast bc(d.batch, ins);
  const T* a = A.as<const T>();
  const T* b = B.as<const T>();
  T* c = C.as<T>();
  parallel_range(ctx, batches * M, [&](int64_t r0, int64_t r1) {
    std::array<int64_t, 3> off{};
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bi = r / M, i = r % M;
      bc.offsets(bi, off);
      const T* ab = a + off[0] * M * K;
      const T* bb = b + off[1] * K * N;
      T* crow = c + (bi * M + i) * N;
      std::fill(crow, crow + N, T(0));
      for (int64_t k = 0; k < K; ++k) {
        const T aik = d.ta ? ab[k * M + i] : ab[i * K + k];
        if (!d.tb) {
          const T* brow = bb + k * N;
          for (int64_t j = 0; j < N; ++j) crow[j] += aik * brow[j];
        } else {
          for (int64_t j = 0; j < N; ++j) crow[j] += aik * bb[j * K + k];
        }
      }
    }
  }, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N * K)));
}

void matmul_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                   const KernelCtx& ctx) {
  MatmulDims d = matmul_dims(n, in[0].shape, in[1].shape);
  dispatch_float(n, in[0].dtype, [&](auto t) { matmul_ref<decltype(t)>(d, in[0], in[1], out[0], ctx); });
}

void grad_matmul(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  Value g = c.out_grads[0], a = n.inputs[0], b = n.inputs[1];
  const bool ta = n.attrs.get_bool_or("transpose_a", false);
  const bool tb = n.attrs.get_bool_or("transpose_b", false);
  // (x, y, transpose_x, transpose_y) of each input's gradient product.
  struct Product { Value x, y; bool tx, ty; };
  Product pa, pb;
  if (!ta && !tb) { pa = {g, b, false, true}; pb = {a, g, true, false}; }
  else if (!ta && tb) { pa = {g, b, false, false}; pb = {g, a, true, false}; }
  else if (ta && !tb) { pa = {b, g, false, true}; pb = {a, g, false, false}; }
  else { pa = {b, g, true, true}; pb = {g, a, true, true}; }
  if (c.wants(0)) c.in_grads[0] = e.sum_to(e.matmul(pa.x, pa.y, pa.tx, pa.ty), e.shape(a));
  if (c.wants(1)) c.in_grads[1] = e.sum_to(e.matmul(pb.x, pb.y, pb.tx, pb.ty), e.shape(b));
}

// Batch dims broadcast like elementwise ops; m and n reach the output; k is contracted.
ShardingRule matmul_rule(const Node& n, std::span<const TensorType> in) {
  MatmulDims d = matmul_dims(n, in[0].shape, in[1].shape);
  ShardingRule r;
  std::vector<int> out;
  for (int64_t b : d.batch) out.push_back(r.add_factor(b));
  const int fm = r.add_factor(d.m), fn = r.add_factor(d.n), fk = r.add_factor(d.k, FactorReduce::sum);
  auto operand = [&](const TensorType& t, bool trans, int rows, int cols) {
    const int rank = t.rank(), off = d.batch.size() - (rank - 2);
    std::vector<int> f(rank);
    for (int i = 0; i < rank - 2; ++i) f[i] = t.shape[i] == d.batch[i + off] ? out[i + off] : -1;
    f[rank - 2] = trans ? cols : rows;
    f[rank - 1] = trans ? rows : cols;
    return f;
  };
  r.inputs = {operand(in[0], d.ta, fm, fk), operand(in[1], d.tb, fk, fn)};
  out.push_back(fm);
  out.push_back(fn);
  r.outputs = {out};
  r.linear = {true, true};
  return r;
}

Cost matmul_cost(const Node& n, std::span<const TensorType> in) {
  MatmulDims d = matmul_dims(n, in[0].shape, in[1].shape);
  Cost c = streaming_cost(n, in, 0);
  c.flops = 2.0 * static_cast<double>(numel(d.batch)) * d.m * d.n * d.k;
  return c;
}

}  // namespace

void register_matmul_ops(OpRegistry& r) {
  OpDef d;
  d.name = "matmul";
  d.min_inputs = d.max_inputs = 2;
  d.attrs = {attr("transpose_a", AttrType::boolean, false), attr("transpose_b", AttrType::boolean, false)};
  d.infer = infer_matmul;
  d.kernel = matmul_kernel;
  d.grad = grad_matmul;
  d.cost = matmul_cost;
  d.sharding = matmul_rule;
  d.doc = "a[..., M, K] @ b[..., K, N], optional transposes, broadcast batch dims";
  r.add(std::move(d));
}

}  // namespace tessel::ops
