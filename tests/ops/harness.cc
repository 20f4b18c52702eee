#include "tests/ops/harness.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>

#include "ops/emit.h"
#include "ops/kernel_util.h"
#include "ops/registry.h"
#include "planner/partition.h"
#include "runtime/executor.h"

namespace tessel::test {

HostTensor make_tensor(DType dt, Shape shape, std::vector<double> v) {
  EXPECT_EQ(static_cast<int64_t>(v.size()), numel(shape)) << shape_str(shape);
  return HostTensor{dt, std::move(shape), std::move(v)};
}

HostTensor zeros(DType dt, Shape shape) {
  std::vector<double> v(static_cast<size_t>(numel(shape)), 0.0);
  return HostTensor{dt, std::move(shape), std::move(v)};
}

namespace {
double round_to(DType dt, double x) {
  switch (dt) {
    case DType::f32:
      return static_cast<float>(x);
    case DType::bf16:
      return ops::bf16_to_f32(ops::f32_to_bf16(static_cast<float>(x)));
    case DType::f16:
      return ops::f16_to_f32(ops::f32_to_f16(static_cast<float>(x)));
    case DType::i32:
    case DType::i64:
      return std::round(x);
    case DType::boolean:
      return x != 0 ? 1.0 : 0.0;
    case DType::f64:
      return x;
  }
  return x;
}
}  // namespace

HostTensor random_tensor(Rng& r, DType dt, Shape shape, double lo, double hi) {
  HostTensor t = zeros(dt, std::move(shape));
  for (auto& x : t.v) x = round_to(dt, r.uniform(lo, hi));
  return t;
}

HostTensor quantized_tensor(Rng& r, DType dt, Shape shape, int lo, int hi, bool zero) {
  HostTensor t = zeros(dt, std::move(shape));
  const bool integral = is_integral(dt);
  for (auto& x : t.v) {
    int64_t k;
    do k = r.integer(lo, hi);
    while (!zero && k == 0);
    x = integral ? static_cast<double>(k) : k / 4.0;
  }
  return t;
}

HostTensor index_tensor(Rng& r, DType dt, Shape shape, int64_t lo, int64_t hi) {
  HostTensor t = zeros(dt, std::move(shape));
  for (auto& x : t.v) x = static_cast<double>(r.integer(lo, hi));
  return t;
}

void store(const TensorRef& t, const HostTensor& h) {
  ASSERT_EQ(t.dtype, h.dtype);
  ASSERT_EQ(t.numel, h.numel());
  for (int64_t i = 0; i < t.numel; ++i) {
    const double x = h.v[i];
    switch (t.dtype) {
      case DType::f32:
        t.as<float>()[i] = static_cast<float>(x);
        break;
      case DType::f64:
        t.as<double>()[i] = x;
        break;
      case DType::bf16:
        t.as<uint16_t>()[i] = ops::f32_to_bf16(static_cast<float>(x));
        break;
      case DType::f16:
        t.as<uint16_t>()[i] = ops::f32_to_f16(static_cast<float>(x));
        break;
      case DType::i32:
        t.as<int32_t>()[i] = static_cast<int32_t>(x);
        break;
      case DType::i64:
        t.as<int64_t>()[i] = static_cast<int64_t>(x);
        break;
      case DType::boolean:
        t.as<bool>()[i] = x != 0;
        break;
    }
  }
}

HostTensor load(const TensorRef& t) {
  HostTensor h = zeros(t.dtype, Shape(t.shape.begin(), t.shape.end()));
  for (int64_t i = 0; i < t.numel; ++i) {
    double& x = h.v[i];
    switch (t.dtype) {
      case DType::f32:
        x = t.as<const float>()[i];
        break;
      case DType::f64:
        x = t.as<const double>()[i];
        break;
      case DType::bf16:
        x = ops::bf16_to_f32(t.as<const uint16_t>()[i]);
        break;
      case DType::f16:
        x = ops::f16_to_f32(t.as<const uint16_t>()[i]);
        break;
      case DType::i32:
        x = t.as<const int32_t>()[i];
        break;
      case DType::i64:
        x = static_cast<double>(t.as<const int64_t>()[i]);
        break;
      case DType::boolean: {
        // Read the byte: a bool holding anything but 0 or 1 is itself a kernel bug.
        unsigned char b;
        std::memcpy(&b, static_cast<const unsigned char*>(t.data) + i, 1);
        EXPECT_LE(b, 1) << "bool element " << i << " holds byte " << int(b);
        x = b ? 1.0 : 0.0;
        break;
      }
    }
  }
  return h;
}

std::string attr_str(DType dt) { return std::string(dtype_name(dt)); }

HostTensor run_op(std::string_view op, const std::vector<HostTensor>& ins, const Attrs& attrs,
                  const RunConfig& cfg) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  std::vector<Value> in;
  for (size_t i = 0; i < ins.size(); ++i)
    in.push_back(e.input("in" + std::to_string(i), ins[i].dtype, ins[i].shape));
  Value out = g.add(op, in, attrs, "under_test", Origin::here());
  g.set_output("out", out);
  g.verify();
  const Node& n = g.node(out.node);
  if (n.def->cost) {  // the cost model's view of this node: finite and non-negative
    std::vector<TensorType> in_types;
    for (auto& v : in) in_types.push_back(g.type(v));
    const Cost c = n.def->cost(n, in_types);
    EXPECT_TRUE(std::isfinite(c.flops) && c.flops >= 0 && std::isfinite(c.bytes) && c.bytes >= 0)
        << n.where() << ": cost flops " << c.flops << " bytes " << c.bytes;
  }
  SerialParallel serial;
  runtime::Executor ex(planner::one_device(g, {"out"}, ""), {.seed = cfg.seed,
                           .use_blas = cfg.use_blas,
                           .jit = cfg.jit,
                           .parallel = cfg.parallel ? cfg.parallel : &serial});
  ex.initialize();
  for (size_t i = 0; i < ins.size(); ++i)
    if (const TensorRef t = ex.input("in" + std::to_string(i)); t.data) store(t, ins[i]);  // an op may read none
  ex.step();
  return load(ex.output("out"));
}

HostTensor call_kernel(std::string_view op, const std::vector<HostTensor>& ins, const Attrs& attrs,
                       Parallel& par, KernelFn kernel) {
  Graph g(ops::registry());
  ops::Emitter e(g, Origin::here());
  std::vector<Value> in;
  for (size_t i = 0; i < ins.size(); ++i)
    in.push_back(e.input("in" + std::to_string(i), ins[i].dtype, ins[i].shape));
  const Node& n = g.node(g.add(op, in, attrs, "under_test", Origin::here()).node);
  std::vector<std::unique_ptr<std::byte[]>> bufs;
  auto ref = [&](const TensorType& t) {
    bufs.push_back(
        std::make_unique<std::byte[]>(static_cast<size_t>(std::max<int64_t>(t.bytes(), 1))));
    return TensorRef{bufs.back().get(), t.dtype, t.shape, t.numel()};
  };
  std::vector<TensorRef> in_refs, out_refs;
  for (size_t i = 0; i < ins.size(); ++i) {
    in_refs.push_back(ref(g.type(in[i])));
    store(in_refs.back(), ins[i]);
  }
  for (auto& t : n.outputs) {
    out_refs.push_back(ref(t));
    std::memset(out_refs.back().data, 0xff, static_cast<size_t>(t.bytes()));
  }
  (kernel ? kernel : n.def->kernel)(n, in_refs, out_refs, KernelCtx{&par, 0, {}});
  return load(out_refs[0]);
}

void expect_op(Parallels& par, std::string_view op, const std::vector<HostTensor>& ins,
               const Attrs& attrs, const HostTensor& want, double rtol, double atol,
               const std::string& what) {
  for (Parallel* p : par.all())
    EXPECT_TRUE(all_close(run_op(op, ins, attrs, {.parallel = p}), want, rtol, atol))
        << op << " " << what << ", executor, " << par_name(p);
  EXPECT_TRUE(all_close(call_kernel(op, ins, attrs, par.pool), want, rtol, atol))
      << op << " " << what << ", kernel on poisoned buffers, pool(2)";
}

void expect_op(Parallels& par, std::string_view op, const std::vector<HostTensor>& ins,
               const Attrs& attrs, const HostTensor& want, const std::string& what) {
  for (Parallel* p : par.all())
    EXPECT_TRUE(all_close(run_op(op, ins, attrs, {.parallel = p}), want))
        << op << " " << what << ", executor, " << par_name(p);
  EXPECT_TRUE(all_close(call_kernel(op, ins, attrs, par.pool), want))
      << op << " " << what << ", kernel on poisoned buffers, pool(2)";
}

std::vector<int64_t> strides_of(const Shape& s) {
  std::vector<int64_t> st(s.size());
  int64_t k = 1;
  for (int d = static_cast<int>(s.size()) - 1; d >= 0; --d) {
    st[d] = k;
    k *= s[d];
  }
  return st;
}

std::vector<int64_t> unravel(const Shape& s, int64_t i) {
  std::vector<int64_t> idx(s.size());
  for (int d = static_cast<int>(s.size()) - 1; d >= 0; --d) {
    idx[d] = s[d] ? i % s[d] : 0;
    i = s[d] ? i / s[d] : 0;
  }
  return idx;
}

int64_t broadcast_index(const Shape& out, const Shape& in, int64_t i) {
  auto idx = unravel(out, i);
  auto st = strides_of(in);
  const size_t lead = out.size() - in.size();
  int64_t off = 0;
  for (size_t d = 0; d < in.size(); ++d)
    if (in[d] != 1) off += idx[lead + d] * st[d];
  return off;
}

testing::AssertionResult all_close(const HostTensor& got, const HostTensor& want, double rtol,
                                   double atol) {
  if (got.dtype != want.dtype)
    return testing::AssertionFailure()
           << "dtype " << dtype_name(got.dtype) << ", want " << dtype_name(want.dtype);
  if (got.shape != want.shape)
    return testing::AssertionFailure()
           << "shape " << shape_str(got.shape) << ", want " << shape_str(want.shape);
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double a = got.v[i], b = want.v[i];
    if (std::isnan(a) || std::isnan(b)) {
      if (std::isnan(a) != std::isnan(b))
        return testing::AssertionFailure() << "element " << i << ": " << a << ", want " << b;
      continue;
    }
    if (std::isinf(a) || std::isinf(b)) {
      if (a != b)
        return testing::AssertionFailure() << "element " << i << ": " << a << ", want " << b;
      continue;
    }
    if (std::fabs(a - b) > atol + rtol * std::fabs(b)) {
      std::ostringstream os;
      os.precision(17);
      os << "element " << i << " of " << shape_str(got.shape) << ": " << a << ", want " << b
         << " (diff " << std::fabs(a - b) << ")";
      return testing::AssertionFailure() << os.str();
    }
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult all_close(const HostTensor& got, const HostTensor& want) {
  switch (want.dtype) {
    case DType::f32:
      return all_close(got, want, 1e-6, 1e-6);
    case DType::f64:
      return all_close(got, want, 1e-12, 1e-13);
    case DType::bf16:
      return all_close(got, want, 1e-2, 1e-2);
    case DType::f16:
      return all_close(got, want, 2e-3, 2e-3);
    default:
      return all_close(got, want, 0, 0);
  }
}

}  // namespace tessel::test
