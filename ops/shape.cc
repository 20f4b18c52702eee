// Data movement: reshape, transpose, concat, slice, pad, broadcast_to. Kernels are
// dtype-agnostic byte copies.
#include <algorithm>
#include <cstring>
#include <numeric>


#include "ops/defs.h"

namespace tessel::ops {

namespace {

// out[i0..] = in[sum(i_d * in_stride[d])] for a dense out of `dims`, in bytes of `esize`.
// Runs of the last dim are copied with memcpy when the input is contiguous there.
void strided_copy(const KernelCtx& ctx, std::byte* out, const std::byte* in, int rank,
                  const int64_t* dims, const int64_t* in_stride, size_t esize) {
  int64_t total = 1;
  for (int d = 0; d < rank; ++d) total *= dims[d];
  if (total == 0) return;
  if (rank == 0) {
    std::memcpy(out, in, esize);
    return;
  }
  const int64_t inner = dims[rank - 1];
  const bool contiguous = in_stride[rank - 1] == 1;
  const int64_t rows = total / inner;
  parallel_range(ctx, rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t off = 0, rest = r;
      for (int d = rank - 2; d >= 0; --d) {
        off += (rest % dims[d]) * in_stride[d];
        rest /= dims[d];
      }
      std::byte* dst = out + r * inner * esize;
      const std::byte* src = in + off * esize;
      if (contiguous) {
        std::memcpy(dst, src, inner * esize);
      } else {
        const int64_t s = in_stride[rank - 1];
        switch (esize) {
          case 4: for (int64_t i = 0; i < inner; ++i) std::memcpy(dst + i * 4, src + i * s * 4, 4); break;
          case 8: for (int64_t i = 0; i < inner; ++i) std::memcpy(dst + i * 8, src + i * s * 8, 8); break;
          default: for (int64_t i = 0; i < inner; ++i) std::memcpy(dst + i * esize, src + i * s * esize, esize);
        }
      }
    }
  }, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)));
}

void contiguous_strides(std::span<const int64_t> shape, int64_t* st) {
  int64_t s = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    st[d] = s;
    s *= shape[d];
  }
}

std::byte* bytes(const TensorRef& t) { return static_cast<std::byte*>(t.data); }

// ---- reshape ----------------------------------------------------------------------------

std::vector<TensorType> infer_reshape(const Node& n, std::span<const TensorType> in) {
  Shape s = n.attrs.get_i64s("shape");
  int64_t known = 1;
  int infer_at = -1;
  for (int i = 0; i < static_cast<int>(s.size()); ++i) {
    if (s[i] == -1) {
      if (infer_at >= 0) throw Error("more than one -1 in target shape " + shape_str(s));
      infer_at = i;
    } else if (s[i] < 0) {
      throw Error("negative dim in target shape " + shape_str(s));
    } else {
      if (s[i] != 0 && known > kMaxElements / s[i]) throw Error("target shape " + shape_str(s) + " is too large");
      known *= s[i];
    }
  }
  const int64_t total = in[0].numel();
  if (infer_at >= 0) {
    if (known == 0 || total % known != 0)
      throw Error("cannot infer -1 reshaping " + shape_str(in[0].shape) + " to " + shape_str(s));
    s[infer_at] = total / known;
  }
  if (checked_numel(s) != total)
    throw Error("cannot reshape " + shape_str(in[0].shape) + " (" + std::to_string(total) +
                " elements) to " + shape_str(s) + " (" + std::to_string(numel(s)) + ")");
  return {TensorType{in[0].dtype, s}};
}


void grad_reshape(GradCtx& c) {
  Emitter e = grad_emitter(c);
  c.in_grads[0] = e.reshape(c.out_grads[0], e.shape(fwd(c).inputs[0]));
}

// ---- transpose --------------------------------------------------------------------------

Dims checked_perm(const Node& n, int rank) {
  const auto& attr = n.attrs.get_i64s("perm");
  if (static_cast<int>(attr.size()) != rank)
    throw Error("perm " + shape_str(attr) + " has " + std::to_string(attr.size()) +
                " entries for rank " + std::to_string(rank));
  Dims p(attr);
  std::array<char, kMaxRank> seen{};
  for (auto& x : p) {
    x = normalize_axis(x, rank);
    if (seen[x]++) throw Error("perm " + shape_str(n.attrs.get_i64s("perm")) + " repeats an axis");
  }
  return p;
}

std::vector<TensorType> infer_transpose(const Node& n, std::span<const TensorType> in) {
  auto p = checked_perm(n, in[0].rank());
  Shape s(p.size());
  for (int i = 0; i < p.size(); ++i) s[i] = in[0].shape[p[i]];
  return {TensorType{in[0].dtype, s}};
}

void transpose_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                      const KernelCtx& ctx) {
  const int rank = in[0].rank();
  auto p = checked_perm(n, rank);
  int64_t ist[kMaxRank], st[kMaxRank];
  contiguous_strides(in[0].shape, ist);
  for (int d = 0; d < rank; ++d) st[d] = ist[p[d]];
  strided_copy(ctx, bytes(out[0]), bytes(in[0]), rank, out[0].shape.data(), st,
               dtype_size(in[0].dtype));
}

void grad_transpose(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  auto p = checked_perm(n, e.type(n.inputs[0]).rank());
  std::vector<int64_t> inv(p.size());
  for (int i = 0; i < p.size(); ++i) inv[p[i]] = i;
  c.in_grads[0] = e.transpose(c.out_grads[0], inv);
}

// ---- concat -----------------------------------------------------------------------------

std::vector<TensorType> infer_concat(const Node& n, std::span<const TensorType> in) {
  const int rank = in[0].rank();
  const int axis = normalize_axis(n.attrs.get_i64("axis"), rank);
  Shape s = in[0].shape;
  for (size_t k = 1; k < in.size(); ++k) {
    if (in[k].dtype != in[0].dtype || in[k].rank() != rank)
      throw Error("input " + std::to_string(k) + " is " + in[k].str() + ", input 0 is " + in[0].str());
    for (int d = 0; d < rank; ++d)
      if (d != axis && in[k].shape[d] != s[d])
        throw Error("input " + std::to_string(k) + " " + in[k].str() + " differs from " +
                    in[0].str() + " in dim " + std::to_string(d) + " (concat axis " +
                    std::to_string(axis) + ")");
    s[axis] += in[k].shape[axis];
  }
  return {TensorType{in[0].dtype, s}};
}

void concat_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                   const KernelCtx&) {
  const int rank = out[0].rank();
  const int axis = normalize_axis(n.attrs.get_i64("axis"), rank);
  const size_t es = dtype_size(out[0].dtype);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= out[0].shape[d];
  for (int d = axis + 1; d < rank; ++d) inner *= out[0].shape[d];
  const int64_t out_row = out[0].shape[axis] * inner;
  int64_t col = 0;
  for (const TensorRef& t : in) {
    const int64_t len = t.shape[axis] * inner;
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(bytes(out[0]) + (o * out_row + col) * es, bytes(t) + o * len * es, len * es);
    col += len;
  }
}

void grad_concat(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  const int rank = e.type(n.out()).rank();
  const int64_t axis = normalize_axis(n.attrs.get_i64("axis"), rank);
  int64_t start = 0;
  for (size_t k = 0; k < n.inputs.size(); ++k) {
    int64_t len = e.shape(n.inputs[k])[axis];
    c.in_grads[k] = e.slice(c.out_grads[0], {axis}, {start}, {start + len});
    start += len;
  }
}

// ---- slice and pad ----------------------------------------------------------------------

// Per-dim [begin, end) of a slice node against an input shape.
void slice_bounds(const Node& n, std::span<const int64_t> in, Dims& begin, Dims& end) {
  const auto& axes = n.attrs.get_i64s("axes");
  const auto& starts = n.attrs.get_i64s("starts");
  const auto& ends = n.attrs.get_i64s("ends");
  if (axes.size() != starts.size() || axes.size() != ends.size())
    throw Error("axes, starts and ends differ in length");
  const int rank = static_cast<int>(in.size());
  begin = Dims();
  end = Dims(in);
  for (int d = 0; d < rank; ++d) begin.push_back(0);
  std::array<char, kMaxRank> seen{};
  for (size_t i = 0; i < axes.size(); ++i) {
    int a = normalize_axis(axes[i], rank);
    if (seen[a]++) throw Error("axis " + std::to_string(a) + " sliced twice");
    int64_t b = starts[i] < 0 ? starts[i] + in[a] : starts[i];
    int64_t e = ends[i] < 0 ? ends[i] + in[a] : ends[i];
    if (b < 0 || e > in[a] || b > e)
      throw Error("slice [" + std::to_string(starts[i]) + ", " + std::to_string(ends[i]) +
                  ") is out of range for dim " + std::to_string(a) + " of size " + std::to_string(in[a]));
    begin[a] = b;
    end[a] = e;
  }
}

std::vector<TensorType> infer_slice(const Node& n, std::span<const TensorType> in) {
  Dims b, e;
  slice_bounds(n, in[0].shape, b, e);
  Shape s(b.size());
  for (int i = 0; i < b.size(); ++i) s[i] = e[i] - b[i];
  return {TensorType{in[0].dtype, s}};
}

void slice_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                  const KernelCtx& ctx) {
  Dims b, e;
  slice_bounds(n, in[0].shape, b, e);
  const int rank = in[0].rank();
  int64_t st[kMaxRank];
  contiguous_strides(in[0].shape, st);
  int64_t off = 0;
  for (int d = 0; d < rank; ++d) off += b[d] * st[d];
  const size_t es = dtype_size(in[0].dtype);
  strided_copy(ctx, bytes(out[0]), bytes(in[0]) + off * es, rank, out[0].shape.data(), st, es);
}

void grad_slice(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  const Shape& in = e.shape(n.inputs[0]);
  Dims b, en;
  slice_bounds(n, in, b, en);
  std::vector<int64_t> before(b.begin(), b.end()), after(in.size());
  for (size_t i = 0; i < in.size(); ++i) after[i] = in[i] - en[static_cast<int>(i)];
  c.in_grads[0] = e.pad(c.out_grads[0], before, after);
}

std::vector<TensorType> infer_pad(const Node& n, std::span<const TensorType> in) {
  const auto& b = n.attrs.get_i64s("before");
  const auto& a = n.attrs.get_i64s("after");
  if (static_cast<int>(b.size()) != in[0].rank() || static_cast<int>(a.size()) != in[0].rank())
    throw Error("before/after need one entry per dim of " + in[0].str());
  Shape s = in[0].shape;
  for (size_t i = 0; i < s.size(); ++i) {
    if (b[i] < 0 || a[i] < 0) throw Error("negative padding");
    if (b[i] > kMaxElements || a[i] > kMaxElements) throw Error("padding over 2^48");
    s[i] += b[i] + a[i];
  }
  return {TensorType{in[0].dtype, s}};
}

void pad_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                const KernelCtx& ctx) {
  const auto& b = n.attrs.get_i64s("before");
  const int rank = in[0].rank();
  const size_t es = dtype_size(in[0].dtype);
  std::memset(out[0].data, 0, static_cast<size_t>(out[0].bytes()));
  if (in[0].numel == 0) return;
  // Copy the input into the interior: walk input rows, writing at padded offsets.
  int64_t ost[kMaxRank];
  contiguous_strides(out[0].shape, ost);
  int64_t base = 0;
  for (int d = 0; d < rank; ++d) base += b[d] * ost[d];
  if (rank == 0) {
    std::memcpy(out[0].data, in[0].data, es);
    return;
  }
  const int64_t inner = in[0].shape[rank - 1];
  const int64_t rows = in[0].numel / inner;
  parallel_range(ctx, rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t off = base, rest = r;
      for (int d = rank - 2; d >= 0; --d) {
        off += (rest % in[0].shape[d]) * ost[d];
        rest /= in[0].shape[d];
      }
      std::memcpy(bytes(out[0]) + off * es, bytes(in[0]) + r * inner * es, inner * es);
    }
  }, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)));
}

void grad_pad(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  const auto& b = n.attrs.get_i64s("before");
  const Shape& in = e.shape(n.inputs[0]);
  std::vector<int64_t> axes, starts, ends;
  for (size_t i = 0; i < in.size(); ++i) {
    axes.push_back(static_cast<int64_t>(i));
    starts.push_back(b[i]);
    ends.push_back(b[i] + in[i]);
  }
  c.in_grads[0] = e.slice(c.out_grads[0], axes, starts, ends);
}

// ---- broadcast_to -----------------------------------------------------------------------

std::vector<TensorType> infer_broadcast_to(const Node& n, std::span<const TensorType> in) {
  Shape target = n.attrs.get_i64s("shape");
  checked_numel(target);
  if (broadcast_shapes(in[0].shape, target) != target)
    throw Error("cannot broadcast " + shape_str(in[0].shape) + " to " + shape_str(target));
  return {TensorType{in[0].dtype, target}};
}

void broadcast_kernel(const Node&, std::span<const TensorRef> in, std::span<const TensorRef> out,
                      const KernelCtx& ctx) {
  std::array<std::span<const int64_t>, 1> ins = {in[0].shape};
  Broadcast bc(out[0].shape, ins);
  strided_copy(ctx, bytes(out[0]), bytes(in[0]), bc.rank, bc.dims.data(), bc.strides[0].data(),
               dtype_size(in[0].dtype));
}

void grad_broadcast_to(GradCtx& c) {
  Emitter e = grad_emitter(c);
  c.in_grads[0] = e.sum_to(c.out_grads[0], e.shape(fwd(c).inputs[0]));
}

// ---- sharding rules ---------------------------------------------------------------------

// Reshape: dims are grouped where running products meet; a group of one dim on each side
// keeps its factor, a merged or split group can be split only along its major dims (a
// contiguous block of the flat range), with the factor both major dims divide.
ShardingRule rule_reshape(const Node& n, std::span<const TensorType> in) {
  ShardingRule r;
  const Shape& a = in[0].shape;
  const Shape& b = n.outputs[0].shape;
  std::vector<int> fa(a.size(), -1), fb(b.size(), -1);
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (a[i] == 1) { ++i; continue; }
    if (b[j] == 1) { ++j; continue; }
    const size_t gi = i, gj = j;
    int64_t pa = a[i++], pb = b[j++];
    while (pa != pb) {
      if (pa < pb && i < a.size()) pa *= a[i++];
      else if (pb < pa && j < b.size()) pb *= b[j++];
      else break;
    }
    const int64_t g = std::gcd(a[gi], b[gj]);
    if (g > 1) fa[gi] = fb[gj] = r.add_factor(g);
  }
  r.inputs = {fa};
  r.outputs = {fb};
  r.linear = {true};
  return r;
}

ShardingRule rule_transpose(const Node& n, std::span<const TensorType> in) {
  ShardingRule r = rule_identity(n, in);
  auto p = checked_perm(n, in[0].rank());
  std::vector<int> out(p.size());
  for (int d = 0; d < p.size(); ++d) out[d] = r.inputs[0][p[d]];
  r.outputs = {out};
  return r;
}

ShardingRule rule_concat(const Node& n, std::span<const TensorType> in) {
  ShardingRule r;
  const int rank = in[0].rank();
  const int axis = normalize_axis(n.attrs.get_i64("axis"), rank);
  std::vector<int> f(rank, -1);
  for (int d = 0; d < rank; ++d)
    if (d != axis) f[d] = r.add_factor(in[0].shape[d]);
  r.inputs.assign(in.size(), f);
  r.outputs = {f};
  r.linear.assign(in.size(), true);
  r.additive = true;
  return r;
}

// Slice and pad: the dims they cut or extend cannot be split; the others pass through.
ShardingRule rule_except(std::span<const TensorType> in, const std::vector<bool>& fixed) {
  ShardingRule r;
  std::vector<int> f;
  for (int d = 0; d < in[0].rank(); ++d) f.push_back(fixed[d] ? -1 : r.add_factor(in[0].shape[d]));
  r.inputs = {f};
  r.outputs = {f};
  r.linear = {true};
  return r;
}

ShardingRule rule_slice(const Node& n, std::span<const TensorType> in) {
  std::vector<bool> fixed(in[0].rank(), false);
  for (int64_t a : n.attrs.get_i64s("axes")) fixed[normalize_axis(a, in[0].rank())] = true;
  return rule_except(in, fixed);
}

ShardingRule rule_pad(const Node& n, std::span<const TensorType> in) {
  const auto& b = n.attrs.get_i64s("before");
  const auto& a = n.attrs.get_i64s("after");
  std::vector<bool> fixed(in[0].rank(), false);
  for (int d = 0; d < in[0].rank(); ++d) fixed[d] = b[d] != 0 || a[d] != 0;
  return rule_except(in, fixed);
}

ShardingRule rule_broadcast_to(const Node& n, std::span<const TensorType> in) {
  ShardingRule r = rule_elementwise(n, in);
  r.linear = {true};
  return r;
}

Cost move_cost(const Node& n, std::span<const TensorType> in) {
  Cost c;
  for (auto& t : n.outputs) c.bytes += 2.0 * static_cast<double>(t.bytes());
  return c;
}

OpDef def(std::string name, int nin, InferFn infer, KernelFn k, GradFn g, std::string doc) {
  OpDef d;
  d.name = std::move(name);
  d.min_inputs = nin;
  d.max_inputs = nin;
  d.infer = infer;
  d.kernel = k;
  d.grad = g;
  d.cost = move_cost;
  d.doc = std::move(doc);
  return d;
}

}  // namespace

void register_shape_ops(OpRegistry& r) {
  OpDef rs = def("reshape", 1, infer_reshape, copy_kernel, grad_reshape, "same elements, new shape (one dim may be -1)");
  rs.attrs = {attr("shape", AttrType::i64s)};
  rs.view = true;
  rs.sharding = rule_reshape;
  rs.cost = [](const Node&, std::span<const TensorType>) { return Cost{}; };
  r.add(std::move(rs));

  OpDef tr = def("transpose", 1, infer_transpose, transpose_kernel, grad_transpose, "permute dims");
  tr.attrs = {attr("perm", AttrType::i64s)};
  tr.sharding = rule_transpose;
  r.add(std::move(tr));

  OpDef cc = def("concat", 1, infer_concat, concat_kernel, grad_concat, "join along an axis");
  cc.max_inputs = -1;
  cc.attrs = {attr("axis", AttrType::i64)};
  cc.sharding = rule_concat;
  r.add(std::move(cc));

  OpDef sl = def("slice", 1, infer_slice, slice_kernel, grad_slice, "[starts, ends) along axes, step 1");
  sl.attrs = {attr("axes", AttrType::i64s), attr("starts", AttrType::i64s), attr("ends", AttrType::i64s)};
  sl.sharding = rule_slice;
  r.add(std::move(sl));

  OpDef pd = def("pad", 1, infer_pad, pad_kernel, grad_pad, "zero padding before/after each dim");
  pd.attrs = {attr("before", AttrType::i64s), attr("after", AttrType::i64s)};
  pd.sharding = rule_pad;
  r.add(std::move(pd));

  OpDef bc = def("broadcast_to", 1, infer_broadcast_to, broadcast_kernel, grad_broadcast_to, "NumPy broadcast to a shape");
  bc.attrs = {attr("shape", AttrType::i64s)};
  bc.sharding = rule_broadcast_to;
  r.add(std::move(bc));
}

}  // namespace tessel::ops
