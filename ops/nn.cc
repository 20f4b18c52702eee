// Ops that neural networks need beyond arithmetic: embedding lookup and its scatter-add
// gradient, one-hot labels, the causal attention mask and dropout masks.
#include <cmath>
#include <cstring>
#include <limits>

#include "ops/defs.h"

namespace tessel::ops {

namespace {

template <class I>
int64_t checked_index(const Node& n, const I* idx, int64_t i, int64_t size) {
  const int64_t v = static_cast<int64_t>(idx[i]);
  if (v < 0 || v >= size)
    throw Error(n.where() + ": index " + std::to_string(v) + " at position " + std::to_string(i) +
                " is out of range [0, " + std::to_string(size) + ")");
  return v;
}

// ---- gather / scatter_add ---------------------------------------------------------------

std::vector<TensorType> infer_gather(const Node&, std::span<const TensorType> in) {
  if (in[0].rank() < 1) throw Error("table must have rank >= 1, got " + in[0].str());
  if (!is_integral(in[1].dtype)) throw Error("indices must be integers, got " + in[1].str());
  Shape s = in[1].shape;
  s.insert(s.end(), in[0].shape.begin() + 1, in[0].shape.end());
  return {TensorType{in[0].dtype, s}};
}

void gather_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                   const KernelCtx& ctx) {
  const int64_t V = in[0].shape[0];
  const int64_t row = V ? in[0].numel / V : 0;
  const size_t bytes = row * dtype_size(in[0].dtype);
  const auto* table = static_cast<const std::byte*>(in[0].data);
  auto* dst = static_cast<std::byte*>(out[0].data);
  // A vocabulary shard (attribute "offset": its first row) gathers the rows it holds and
  // zeros for the others; summing the shards gives the whole lookup.
  const bool shard = n.attrs.has("offset");
  const int64_t offset = n.attrs.get_i64_or("offset", 0);
  dispatch_index(n, in[1].dtype, [&](auto t) {
    using I = decltype(t);
    const I* idx = in[1].as<const I>();
    parallel_range(ctx, in[1].numel, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        if (!shard) {
          std::memcpy(dst + i * bytes, table + checked_index(n, idx, i, V) * bytes, bytes);
          continue;
        }
        const int64_t r = static_cast<int64_t>(idx[i]) - offset;
        if (r >= 0 && r < V) std::memcpy(dst + i * bytes, table + r * bytes, bytes);
        else std::memset(dst + i * bytes, 0, bytes);
      }
    }, std::max<int64_t>(1, kGrain / std::max<int64_t>(row, 1)));
  });
}

Attrs localize_gather(const Node& n, const ShardView& v) {
  Attrs a = n.attrs;
  // The table split along its rows (a vocabulary-parallel embedding): this shard's first row.
  if (v.local_inputs.at(0).at(0) != v.global_inputs.at(0).at(0) || n.attrs.has("offset"))
    a.set("offset", v.input_offsets[0][0]);
  return a;
}

void grad_gather(GradCtx& c) {
  Emitter e = grad_emitter(c);
  const Node& n = fwd(c);
  c.in_grads[0] = e.scatter_add(n.inputs[1], c.out_grads[0], e.shape(n.inputs[0])[0]);
}

std::vector<TensorType> infer_scatter_add(const Node& n, std::span<const TensorType> in) {
  if (!is_integral(in[0].dtype)) throw Error("indices must be integers, got " + in[0].str());
  const int ri = in[0].rank();
  if (in[1].rank() < ri || !std::equal(in[0].shape.begin(), in[0].shape.end(), in[1].shape.begin()))
    throw Error("updates " + in[1].str() + " must start with the indices' shape " + in[0].str());
  const int64_t size = n.attrs.get_i64("size");
  if (size < 0) throw Error("negative size");
  require_float(in[1], "updates");
  Shape s{size};
  s.insert(s.end(), in[1].shape.begin() + ri, in[1].shape.end());
  return {TensorType{in[1].dtype, s}};
}

void scatter_add_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                        const KernelCtx& ctx) {
  const int64_t V = out[0].shape[0];
  const int64_t row = V ? out[0].numel / V : 0;
  // A shard of the rows (attribute "offset": its first row, "size" its row count) adds the
  // updates whose index falls in its range and skips the others; the shards side by side
  // are the whole result.
  const bool shard = n.attrs.has("offset");
  const int64_t offset = n.attrs.get_i64_or("offset", 0);
  dispatch_float(n, out[0].dtype, [&](auto t) {
    using T = decltype(t);
    T* dst = out[0].as<T>();
    const T* upd = in[1].as<const T>();
    std::fill(dst, dst + out[0].numel, T(0));
    dispatch_index(n, in[0].dtype, [&](auto it) {
      using I = decltype(it);
      const I* idx = in[0].as<const I>();
      if (!shard)
        for (int64_t i = 0; i < in[0].numel; ++i) checked_index(n, idx, i, V);
      // Threads own disjoint column ranges, so repeated indices never race.
      parallel_range(ctx, row, [&](int64_t c0, int64_t c1) {
        for (int64_t i = 0; i < in[0].numel; ++i) {
          const int64_t r = static_cast<int64_t>(idx[i]) - offset;
          if (shard && (r < 0 || r >= V)) continue;
          T* d = dst + r * row;
          const T* u = upd + i * row;
          for (int64_t c = c0; c < c1; ++c) d[c] += u[c];
        }
      }, std::max<int64_t>(64, kGrain / std::max<int64_t>(in[0].numel, 1)));
    });
  });
}

void grad_scatter_add(GradCtx& c) {
  Emitter e = grad_emitter(c);
  c.in_grads[1] = e.gather(c.out_grads[0], fwd(c).inputs[0]);
}

// ---- one_hot ----------------------------------------------------------------------------

std::vector<TensorType> infer_one_hot(const Node& n, std::span<const TensorType> in) {
  if (!is_integral(in[0].dtype)) throw Error("labels must be integers, got " + in[0].str());
  const int64_t depth = n.attrs.get_i64("depth");
  if (depth < 0) throw Error("negative depth");
  Shape s = in[0].shape;
  s.push_back(depth);
  TensorType t{attr_dtype(n), s};
  require_numeric(t, "the output");
  return {t};
}

void one_hot_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                    const KernelCtx& ctx) {
  const int64_t depth = n.attrs.get_i64("depth");
  dispatch_numeric(n, out[0].dtype, [&](auto t) {
    using T = decltype(t);
    T* o = out[0].as<T>();
    dispatch_index(n, in[0].dtype, [&](auto it) {
      using I = decltype(it);
      const I* lab = in[0].as<const I>();
      // A class shard (attribute "offset") marks only the labels in its range.
      const bool shard = n.attrs.has("offset");
      const int64_t offset = n.attrs.get_i64_or("offset", 0);
      parallel_range(ctx, in[0].numel, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          T* row = o + i * depth;
          std::fill(row, row + depth, T(0));
          if (!shard) {
            row[checked_index(n, lab, i, depth)] = T(1);
          } else {
            const int64_t c = static_cast<int64_t>(lab[i]) - offset;
            if (c >= 0 && c < depth) row[c] = T(1);
          }
        }
      }, std::max<int64_t>(1, kGrain / std::max<int64_t>(depth, 1)));
    });
  });
}

// ---- causal_mask ------------------------------------------------------------------------

std::vector<TensorType> infer_causal_mask(const Node& n, std::span<const TensorType>) {
  const int64_t r = n.attrs.get_i64("rows"), c = n.attrs.get_i64("cols");
  if (r < 0 || c < 0 || r > c) throw Error("need 0 <= rows <= cols, got rows=" + std::to_string(r) +
                                           " cols=" + std::to_string(c));
  TensorType t{attr_dtype(n), {r, c}};
  require_float(t, "the mask");
  return {t};
}

void causal_mask_kernel(const Node& n, std::span<const TensorRef>, std::span<const TensorRef> out,
                        const KernelCtx&) {
  const int64_t R = out[0].shape[0], C = out[0].shape[1];
  dispatch_float(n, out[0].dtype, [&](auto t) {
    using T = decltype(t);
    T* o = out[0].as<T>();
    for (int64_t i = 0; i < R; ++i)
      for (int64_t j = 0; j < C; ++j)
        o[i * C + j] = j <= i + (C - R) ? T(0) : -std::numeric_limits<T>::infinity();
  });
}

// ---- dropout_mask -----------------------------------------------------------------------

std::vector<TensorType> infer_dropout_mask(const Node& n, std::span<const TensorType> in) {
  if (!is_integral(in[0].dtype) || in[0].rank() != 0)
    throw Error("the counter must be an integer scalar, got " + in[0].str());
  const double p = n.attrs.get_f64("p");
  if (!(p >= 0 && p < 1)) throw Error("p must be in [0, 1), got " + std::to_string(p));
  TensorType t{attr_dtype(n), attr_shape(n)};
  require_float(t, "the mask");
  return {t};
}

void dropout_mask_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out,
                         const KernelCtx& ctx) {
  const double p = n.attrs.get_f64("p");
  int64_t counter = 0;
  dispatch_index(n, in[0].dtype, [&](auto t) { counter = static_cast<int64_t>(in[0].as<const decltype(t)>()[0]); });
  const uint64_t seed = mix64(mix64(ctx.seed ^ static_cast<uint64_t>(n.attrs.get_i64("seed"))) ^
                              static_cast<uint64_t>(counter));
  dispatch_float(n, out[0].dtype, [&](auto t) {
    using T = decltype(t);
    T* o = out[0].as<T>();
    const T keep = T(1.0 / (1.0 - p));
    const ShardIndex at = shard_index(n, out[0].shape, ctx.shift);
    parallel_range(ctx, out[0].numel, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) o[i] = rand_uniform(seed, at.global(i)) >= p ? keep : T(0);
    });
  });
}

Cost write_cost(const Node& n, std::span<const TensorType> in) { return streaming_cost(n, in, 1); }

// gather: the index dims and the table's row dims split. Splitting the gathered-from dim
// (a vocabulary-parallel embedding) leaves each device the rows in its range and zeros
// elsewhere: partial sums.
ShardingRule rule_gather(const Node&, std::span<const TensorType> in) {
  ShardingRule r;
  std::vector<int> table{r.add_factor(in[0].shape[0], FactorReduce::sum)}, idx, out;
  for (int64_t d : in[1].shape) idx.push_back(r.add_factor(d));
  out = idx;
  for (int d = 1; d < in[0].rank(); ++d) {
    table.push_back(r.add_factor(in[0].shape[d]));
    out.push_back(table.back());
  }
  r.inputs = {table, idx};
  r.outputs = {out};
  r.linear = {true, false};
  return r;
}

// scatter_add: splitting the index dims leaves partial sums of the result; splitting the
// result's rows (a vocabulary-parallel embedding's gradient) gives each device the updates
// of the rows in its range, read from all of them.
ShardingRule rule_scatter_add(const Node& n, std::span<const TensorType> in) {
  ShardingRule r;
  std::vector<int> idx, upd, out{r.add_factor(n.attrs.get_i64("size"))};
  for (int64_t d : in[0].shape) idx.push_back(r.add_factor(d, FactorReduce::sum));
  upd = idx;
  for (int d = in[0].rank(); d < in[1].rank(); ++d) {
    upd.push_back(r.add_factor(in[1].shape[d]));
    out.push_back(upd.back());
  }
  r.inputs = {idx, upd};
  r.outputs = {out};
  r.linear = {false, true};
  return r;
}

Attrs localize_scatter_add(const Node& n, const ShardView& v) {
  Attrs a = n.attrs;
  if (v.local_outputs[0].shape[0] != v.global_output_shape[0] || n.attrs.has("offset")) {
    a.set("size", v.local_outputs[0].shape[0]);
    a.set("offset", v.output_offsets[0]);
  }
  return a;
}

Attrs localize_one_hot(const Node& n, const ShardView& v) {
  Attrs a = n.attrs;
  const int64_t depth = v.local_outputs[0].shape.back();
  if (depth != n.attrs.get_i64("depth") || n.attrs.has("offset")) {
    a.set("depth", depth);
    a.set("offset", v.output_offsets.back());
  }
  return a;
}

Attrs localize_causal_mask(const Node& n, const ShardView& v) {
  for (int64_t o : v.output_offsets)
    if (o != 0) throw Error(n.where() + ": a split causal mask is not supported");
  if (v.local_outputs[0].shape != Shape(v.global_output_shape.begin(), v.global_output_shape.end()))
    throw Error(n.where() + ": a split causal mask is not supported");
  return n.attrs;
}

ShardingRule rule_one_hot(const Node& n, std::span<const TensorType> in) {
  ShardingRule r = rule_identity(n, in);
  std::vector<int> out = r.inputs[0];
  out.push_back(r.add_factor(n.outputs[0].shape.back()));
  r.outputs = {out};
  r.linear = {false};
  return r;
}

}  // namespace

void register_nn_ops(OpRegistry& r) {
  OpDef g;
  g.name = "gather";
  g.min_inputs = g.max_inputs = 2;
  g.infer = infer_gather;
  g.kernel = gather_kernel;
  g.grad = grad_gather;
  g.cost = write_cost;
  g.sharding = rule_gather;
  g.attrs = {attr("offset", AttrType::i64, false)};
  g.localize = localize_gather;
  g.doc = "table[idx]: rows of table[V, ...] picked by integer indices (embedding lookup)";
  r.add(std::move(g));

  OpDef s;
  s.name = "scatter_add";
  s.min_inputs = s.max_inputs = 2;
  s.attrs = {attr("size", AttrType::i64)};
  s.infer = infer_scatter_add;
  s.kernel = scatter_add_kernel;
  s.grad = grad_scatter_add;
  s.cost = write_cost;
  s.sharding = rule_scatter_add;
  s.attrs.push_back(attr("offset", AttrType::i64, false));
  s.localize = localize_scatter_add;
  s.doc = "zeros[size, ...] with updates added at the rows idx (gradient of gather)";
  r.add(std::move(s));

  OpDef o;
  o.name = "one_hot";
  o.min_inputs = o.max_inputs = 1;
  o.attrs = {attr("depth", AttrType::i64), attr("dtype", AttrType::string), attr("offset", AttrType::i64, false)};
  o.localize = localize_one_hot;
  o.infer = infer_one_hot;
  o.kernel = one_hot_kernel;
  o.cost = write_cost;
  o.sharding = rule_one_hot;
  o.doc = "labels[...] -> [..., depth] with a 1 at each label";
  r.add(std::move(o));

  OpDef m;
  m.name = "causal_mask";
  m.kind = OpKind::constant;
  m.attrs = {attr("rows", AttrType::i64), attr("cols", AttrType::i64), attr("dtype", AttrType::string)};
  m.infer = infer_causal_mask;
  m.kernel = causal_mask_kernel;
  m.cost = write_cost;
  m.sharding = rule_source;
  m.localize = localize_causal_mask;
  m.doc = "additive attention mask [rows, cols]: 0 on and below the diagonal, -inf above";
  r.add(std::move(m));

  OpDef d;
  d.name = "dropout_mask";
  d.min_inputs = d.max_inputs = 1;
  d.attrs = {attr("shape", AttrType::i64s), attr("p", AttrType::f64), attr("seed", AttrType::i64),
             attr("dtype", AttrType::string), attr("global_shape", AttrType::i64s, false),
             attr("offsets", AttrType::i64s, false)};
  d.localize = localize_generated;
  d.infer = infer_dropout_mask;
  d.kernel = dropout_mask_kernel;
  d.cost = write_cost;
  d.sharding = rule_source;
  d.doc = "1/(1-p) with probability 1-p else 0, drawn from (seed, counter, element)";
  r.add(std::move(d));
}

}  // namespace tessel::ops
