// The "fused" op: a kernel description (ops/fused.h) as a node, with its reference
// interpreter. Only the fusion pass makes these nodes; the JIT runs them.
#include "ops/fused.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/defs.h"
#include "ops/fast_math.h"

namespace tessel::ops {

namespace {

int operand_count(ScalarOp op) {
  switch (op) {
    case ScalarOp::arg:
    case ScalarOp::constant: return 0;
    case ScalarOp::neg: case ScalarOp::exp: case ScalarOp::log: case ScalarOp::sqrt:
    case ScalarOp::rsqrt: case ScalarOp::tanh: case ScalarOp::abs: case ScalarOp::sigmoid: return 1;
    case ScalarOp::select: return 3;
    default: return 2;
  }
}

float apply(ScalarOp op, float a, float b, float c) {
  switch (op) {
    case ScalarOp::neg: return -a;
    case ScalarOp::exp: return fast_exp(a);
    case ScalarOp::log: return std::log(a);
    case ScalarOp::sqrt: return std::sqrt(a);
    case ScalarOp::rsqrt: return 1.0f / std::sqrt(a);
    case ScalarOp::tanh: return fast_tanh(a);
    case ScalarOp::abs: return std::fabs(a);
    case ScalarOp::add: return a + b;
    case ScalarOp::sub: return a - b;
    case ScalarOp::mul: return a * b;
    case ScalarOp::div: return a / b;
    case ScalarOp::max: return a < b ? b : a;
    case ScalarOp::min: return b < a ? b : a;
    case ScalarOp::gt: return a > b ? 1.0f : 0.0f;
    case ScalarOp::ge: return a >= b ? 1.0f : 0.0f;
    case ScalarOp::eq: return a == b ? 1.0f : 0.0f;
    case ScalarOp::select: return a != 0 ? b : c;
    case ScalarOp::sigmoid: return fast_sigmoid(a);
    default: return 0;
  }
}

}  // namespace

std::vector<bool> FusedKernelDesc::row_levels() const {
  std::vector<bool> row(code.size());
  auto operand = [&](size_t k, int32_t o) {
    if (o < 0 || static_cast<size_t>(o) >= k)
      throw Error("fused kernel: instruction %" + std::to_string(k) + " reads %" + std::to_string(o) +
                  ", which is not an earlier instruction");
    return static_cast<size_t>(o);
  };
  for (size_t k = 0; k < code.size(); ++k) {
    const FusedInstr& i = code[k];
    if (i.reduce != FusedReduce::none) {  // a per-row operand is constant along the row
      operand(k, i.a);
      row[k] = true;
      continue;
    }
    if (i.op == ScalarOp::arg) {
      if (i.index < 0 || static_cast<size_t>(i.index) >= inputs.size())
        throw Error("fused kernel: %" + std::to_string(k) + " reads input " + std::to_string(i.index) + " of " +
                    std::to_string(inputs.size()));
      const FusedInput in = inputs[static_cast<size_t>(i.index)];
      row[k] = in == FusedInput::per_row || in == FusedInput::scalar;
      continue;
    }
    if (i.op == ScalarOp::constant) {
      row[k] = true;
      continue;
    }
    bool all_row = true;
    int n = operand_count(i.op);
    for (int32_t o : {i.a, i.b, i.c})
      if (n-- > 0) all_row = row[operand(k, o)] && all_row;  // every operand checked
    row[k] = all_row;
  }
  return row;
}

void FusedKernelDesc::validate() const {
  if (rows < 0 || cols < 0) throw Error("fused kernel: negative domain [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  if (code.empty()) throw Error("fused kernel: no instructions");
  if (outputs.empty()) throw Error("fused kernel: no outputs");
  const auto row = row_levels();
  for (const FusedOutput& o : outputs) {
    if (o.instr < 0 || static_cast<size_t>(o.instr) >= code.size())
      throw Error("fused kernel: an output names %" + std::to_string(o.instr) + " of " + std::to_string(code.size()));
    if (o.row && !row[static_cast<size_t>(o.instr)])
      throw Error("fused kernel: output %" + std::to_string(o.instr) + " is per row but the value is per element");
    if (o.over < 0) continue;
    if (o.row || static_cast<size_t>(o.over) >= inputs.size() || inputs[static_cast<size_t>(o.over)] != FusedInput::full)
      throw Error("fused kernel: output %" + std::to_string(o.instr) + " is written over in" + std::to_string(o.over) +
                  ", which is not a full input of a per-element output");
    for (const FusedOutput& p : outputs)
      if (&p != &o && p.over == o.over)
        throw Error("fused kernel: two outputs are written over in" + std::to_string(o.over));
  }
}

bool FusedKernelDesc::has_reduction() const {
  return std::any_of(code.begin(), code.end(), [](const FusedInstr& i) { return i.reduce != FusedReduce::none; });
}

int64_t FusedKernelDesc::input_numel(size_t i) const {
  switch (inputs[i]) {
    case FusedInput::full: return rows * cols;
    case FusedInput::per_col: return cols;
    case FusedInput::per_row: return rows;
    case FusedInput::scalar: return 1;
  }
  return 0;
}

double FusedKernelDesc::flops_per_element() const {
  double n = 0;
  for (const FusedInstr& i : code)
    if (i.reduce != FusedReduce::none || (i.op != ScalarOp::arg && i.op != ScalarOp::constant)) ++n;
  return n;
}

Attrs FusedKernelDesc::to_attrs() const {
  std::vector<int64_t> in, c, out;
  std::vector<double> imm;
  for (FusedInput k : inputs) in.push_back(static_cast<int64_t>(k));
  for (const FusedInstr& i : code) {
    c.insert(c.end(), {static_cast<int64_t>(i.op), static_cast<int64_t>(i.reduce), i.a, i.b, i.c, i.index});
    imm.push_back(i.imm);
  }
  for (const FusedOutput& o : outputs) out.insert(out.end(), {o.instr, o.row ? 1 : 0});
  Attrs a;
  a.set("rows", rows);
  a.set("cols", cols);
  a.set("in", std::move(in));
  a.set("code", std::move(c));
  a.set("imm", std::move(imm));
  a.set("out", std::move(out));
  return a;
}

FusedKernelDesc FusedKernelDesc::from_attrs(const Attrs& a) {
  FusedKernelDesc d;
  d.rows = a.get_i64("rows");
  d.cols = a.get_i64("cols");
  for (int64_t k : a.get_i64s("in")) {
    if (k < 0 || k > static_cast<int64_t>(FusedInput::scalar)) throw Error("fused kernel: bad input kind " + std::to_string(k));
    d.inputs.push_back(static_cast<FusedInput>(k));
  }
  const auto& c = a.get_i64s("code");
  const auto& imm = a.get_f64s("imm");
  if (c.size() % 6 != 0 || c.size() / 6 != imm.size())
    throw Error("fused kernel: 'code' holds " + std::to_string(c.size()) + " numbers and 'imm' " +
                std::to_string(imm.size()) + " (want 6 per instruction and one)");
  for (size_t k = 0; k < imm.size(); ++k) {
    const int64_t* p = &c[6 * k];
    if (p[0] < 0 || p[0] > static_cast<int64_t>(ScalarOp::sigmoid) || p[1] < 0 || p[1] > 2)
      throw Error("fused kernel: bad instruction %" + std::to_string(k));
    d.code.push_back(FusedInstr{static_cast<ScalarOp>(p[0]), static_cast<FusedReduce>(p[1]), static_cast<int32_t>(p[2]),
                                static_cast<int32_t>(p[3]), static_cast<int32_t>(p[4]), static_cast<int32_t>(p[5]), imm[k]});
  }
  const auto& out = a.get_i64s("out");
  if (out.size() % 2 != 0) throw Error("fused kernel: 'out' holds pairs (instruction, per row)");
  for (size_t k = 0; k < out.size(); k += 2) d.outputs.push_back({static_cast<int32_t>(out[k]), out[k + 1] != 0});
  d.validate();
  return d;
}

std::string FusedKernelDesc::str() const {
  static const char* kinds[] = {"full", "per_col", "per_row", "scalar"};
  std::string s = "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
  const auto row = row_levels();
  for (size_t k = 0; k < code.size(); ++k) {
    const FusedInstr& i = code[k];
    s += "\n  %" + std::to_string(k) + (row[k] ? " row " : "     ") + "= ";
    if (i.reduce != FusedReduce::none) {
      s += std::string(i.reduce == FusedReduce::sum ? "row_sum" : "row_max") + "(%" + std::to_string(i.a) + ")";
    } else if (i.op == ScalarOp::arg) {
      s += "in" + std::to_string(i.index) + " (" + kinds[static_cast<int>(inputs[static_cast<size_t>(i.index)])] + ")";
    } else if (i.op == ScalarOp::constant) {
      s += std::to_string(i.imm);
    } else {
      s += std::string(scalar_op_name(i.op)) + "(";
      int n = operand_count(i.op);
      bool first = true;
      for (int32_t o : {i.a, i.b, i.c})
        if (n-- > 0) {
          s += (first ? "%" : ", %") + std::to_string(o);
          first = false;
        }
      s += ")";
    }
  }
  for (size_t k = 0; k < outputs.size(); ++k)
    s += "\n  out" + std::to_string(k) + " = %" + std::to_string(outputs[k].instr) + (outputs[k].row ? " (per row)" : "") +
         (outputs[k].over >= 0 ? " (over in" + std::to_string(outputs[k].over) + ")" : "");
  return s;
}

FusedKernelDesc elementwise_desc(const ScalarExpr& e, std::vector<FusedInput> inputs, int64_t rows, int64_t cols) {
  FusedKernelDesc d;
  d.rows = rows;
  d.cols = cols;
  d.inputs = std::move(inputs);
  for (const ScalarInstr& i : e.code()) d.code.push_back(FusedInstr{i.op, FusedReduce::none, i.a, i.b, i.c, i.index, i.imm});
  d.outputs.push_back({static_cast<int32_t>(d.code.size()) - 1, false});
  d.validate();
  return d;
}

void run_fused_reference(const FusedKernelDesc& d, const float* const* in, float* const* out, int64_t row_begin,
                         int64_t row_end) {
  const auto row = d.row_levels();
  const size_t n = d.code.size();
  std::vector<float> v(n);
  auto load = [&](const FusedInstr& i, int64_t r, int64_t c) {
    const float* p = in[i.index];
    switch (d.inputs[static_cast<size_t>(i.index)]) {
      case FusedInput::full: return p[r * d.cols + c];
      case FusedInput::per_col: return p[c];
      case FusedInput::per_row: return p[r];
      case FusedInput::scalar: return p[0];
    }
    return 0.0f;
  };
  auto compute = [&](size_t k, int64_t r, int64_t c) {
    const FusedInstr& i = d.code[k];
    if (i.op == ScalarOp::arg) return load(i, r, c);
    if (i.op == ScalarOp::constant) return static_cast<float>(i.imm);
    auto at = [&](int32_t o) { return o >= 0 ? v[static_cast<size_t>(o)] : 0.0f; };
    return apply(i.op, at(i.a), at(i.b), at(i.c));
  };
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (size_t k = 0; k < n; ++k) {
      if (!row[k]) continue;
      const FusedInstr& i = d.code[k];
      if (i.reduce == FusedReduce::none) {
        v[k] = compute(k, r, 0);
        continue;
      }
      if (row[static_cast<size_t>(i.a)]) {  // constant along the row
        const float x = v[static_cast<size_t>(i.a)];
        v[k] = i.reduce == FusedReduce::sum ? static_cast<float>(static_cast<double>(x) * static_cast<double>(d.cols))
               : d.cols > 0                 ? x
                                            : -std::numeric_limits<float>::infinity();
        continue;
      }
      // Sums accumulate in f64, as the reference sum kernel does.
      double acc = i.reduce == FusedReduce::sum ? 0.0 : -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < d.cols; ++c) {
        for (size_t j = 0; j <= static_cast<size_t>(i.a); ++j)
          if (!row[j]) v[j] = compute(j, r, c);
        const double x = v[static_cast<size_t>(i.a)];
        acc = i.reduce == FusedReduce::sum ? acc + x : (x > acc ? x : acc);
      }
      v[k] = static_cast<float>(acc);
    }
    for (size_t o = 0; o < d.outputs.size(); ++o)
      if (d.outputs[o].row) out[o][r] = v[static_cast<size_t>(d.outputs[o].instr)];
    bool any_full = false;
    for (const FusedOutput& o : d.outputs) any_full = any_full || !o.row;
    if (!any_full) continue;
    for (int64_t c = 0; c < d.cols; ++c) {
      for (size_t j = 0; j < n; ++j)
        if (!row[j]) v[j] = compute(j, r, c);
      for (size_t o = 0; o < d.outputs.size(); ++o)
        if (!d.outputs[o].row) out[o][r * d.cols + c] = v[static_cast<size_t>(d.outputs[o].instr)];
    }
  }
}

namespace {

std::vector<TensorType> infer_fused(const Node& n, std::span<const TensorType> in) {
  const FusedKernelDesc d = FusedKernelDesc::from_attrs(n.attrs);
  if (in.size() != d.inputs.size())
    throw Error("the kernel reads " + std::to_string(d.inputs.size()) + " inputs, the node has " + std::to_string(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i].dtype != DType::f32) throw Error("input " + std::to_string(i) + " must be f32, got " + in[i].str());
    if (in[i].numel() != d.input_numel(i))
      throw Error("input " + std::to_string(i) + " " + in[i].str() + " has " + std::to_string(in[i].numel()) +
                  " elements; the kernel reads " + std::to_string(d.input_numel(i)));
  }
  const auto& shapes = n.attrs.get_i64s("shapes");
  std::vector<TensorType> out;
  size_t p = 0;
  for (size_t o = 0; o < d.outputs.size(); ++o) {
    if (p >= shapes.size()) throw Error("'shapes' lists fewer shapes than the kernel has outputs");
    const int64_t rank = shapes[p++];
    if (rank < 0 || p + static_cast<size_t>(rank) > shapes.size()) throw Error("'shapes' is malformed");
    Shape s(shapes.begin() + static_cast<int64_t>(p), shapes.begin() + static_cast<int64_t>(p) + rank);
    p += static_cast<size_t>(rank);
    TensorType t{DType::f32, s};
    if (t.numel() != d.output_numel(o))
      throw Error("output " + std::to_string(o) + " " + t.str() + " has " + std::to_string(t.numel()) +
                  " elements; the kernel writes " + std::to_string(d.output_numel(o)));
    out.push_back(t);
  }
  if (p != shapes.size()) throw Error("'shapes' lists more shapes than the kernel has outputs");
  return out;
}

void fused_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out, const KernelCtx& ctx) {
  const FusedKernelDesc d = FusedKernelDesc::from_attrs(n.attrs);
  std::vector<const float*> ins;
  std::vector<float*> outs;
  for (auto& t : in) ins.push_back(t.as<const float>());
  for (auto& t : out) outs.push_back(t.as<float>());
  parallel_range(ctx, d.rows, [&](int64_t b, int64_t e) { run_fused_reference(d, ins.data(), outs.data(), b, e); },
                 std::max<int64_t>(1, kGrain / std::max<int64_t>(1, d.cols)));
}

Cost fused_cost(const Node& n, std::span<const TensorType> in) {
  const FusedKernelDesc d = FusedKernelDesc::from_attrs(n.attrs);
  Cost c;
  c.flops = d.flops_per_element() * static_cast<double>(d.rows * d.cols);
  for (auto& t : in) c.bytes += static_cast<double>(t.bytes());
  for (auto& t : n.outputs) c.bytes += static_cast<double>(t.bytes());
  return c;
}

// Fused nodes exist only in a device's program, after partitioning: nothing of them splits.
ShardingRule rule_fused(const Node& n, std::span<const TensorType> in) {
  ShardingRule r;
  for (auto& t : in) r.inputs.emplace_back(static_cast<size_t>(t.rank()), -1);
  for (auto& t : n.outputs) r.outputs.emplace_back(static_cast<size_t>(t.rank()), -1);
  r.linear.assign(in.size(), false);
  return r;
}

}  // namespace

void register_fused_ops(OpRegistry& r) {
  OpDef d;
  d.name = "fused";
  d.min_inputs = 0;
  d.max_inputs = -1;
  d.attrs = {attr("rows", AttrType::i64), attr("cols", AttrType::i64), attr("in", AttrType::i64s),
             attr("code", AttrType::i64s), attr("imm", AttrType::f64s), attr("out", AttrType::i64s),
             attr("shapes", AttrType::i64s)};
  d.infer = infer_fused;
  d.kernel = fused_kernel;
  d.cost = fused_cost;
  d.sharding = rule_fused;
  d.doc = "a fused kernel (elementwise chains and the row reductions that end them), made by the fusion pass";
  r.add(std::move(d));
}

}  // namespace tessel::ops
