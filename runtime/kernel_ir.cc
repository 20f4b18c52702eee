#include "runtime/kernel_ir.h"

#include <llvm/IR/Intrinsics.h>

#include "graph/error.h"

namespace tessel::runtime {

using ops::FusedInput;
using ops::FusedInstr;
using ops::FusedKernelDesc;
using ops::FusedReduce;

namespace {

// i32 for a float, <n x i32> for <n x float>: the bit patterns of x.
llvm::Type* int_like(llvm::Value* x) {
  llvm::Type* i32 = llvm::Type::getInt32Ty(x->getContext());
  if (auto* v = llvm::dyn_cast<llvm::VectorType>(x->getType())) return llvm::VectorType::get(i32, v->getElementCount());
  return i32;
}

}  // namespace

llvm::Value* emit_exp(llvm::IRBuilder<>& b, llvm::Value* x) {
  llvm::Type* f32 = x->getType();
  llvm::Type* i32 = int_like(x);
  auto ci = [&](uint64_t v) { return llvm::ConstantInt::get(i32, v); };
  auto c = [&](double v) { return llvm::ConstantFP::get(f32, v); };
  llvm::Value* hi = c(88.72283935546875), *lo = c(-87.3365447505531);
  llvm::Value* xc = b.CreateSelect(b.CreateFCmpOLT(x, lo), lo, b.CreateSelect(b.CreateFCmpOGT(x, hi), hi, x));
  llvm::Value* n = b.CreateFSub(b.CreateFAdd(b.CreateFMul(xc, c(1.44269504088896341)), c(12582912.0)), c(12582912.0));
  llvm::Value* r = b.CreateFSub(xc, b.CreateFMul(n, c(0.693359375)));
  r = b.CreateFSub(r, b.CreateFMul(n, c(-2.12194440e-4)));
  llvm::Value* p = c(1.9875691500e-4);
  for (double k : {1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1})
    p = b.CreateFAdd(b.CreateFMul(p, r), c(k));
  p = b.CreateFAdd(b.CreateFAdd(b.CreateFMul(b.CreateFMul(p, r), r), r), c(1.0));
  llvm::Value* ni = b.CreateFPToSI(n, i32);
  llvm::Value* pos = b.CreateICmpSGT(ni, ci(0));
  llvm::Value* n1 = b.CreateSelect(pos, b.CreateSub(ni, ci(1)), ni);
  llvm::Value* scale = b.CreateBitCast(b.CreateShl(b.CreateAdd(n1, ci(127)), 23), f32);
  llvm::Value* y = b.CreateFMul(b.CreateFMul(p, scale), b.CreateSelect(pos, c(2.0), c(1.0)));
  y = b.CreateSelect(b.CreateFCmpOLT(x, lo), c(0.0), y);
  y = b.CreateSelect(b.CreateFCmpOGT(x, hi), llvm::ConstantFP::getInfinity(f32), y);
  return b.CreateSelect(b.CreateFCmpUNO(x, x), x, y);
}

namespace {

// As ops::exp_in_range: e^t for t in [-87.3, 88], no range handling.
llvm::Value* emit_exp_in_range(llvm::IRBuilder<>& b, llvm::Value* t) {
  llvm::Type* f32 = t->getType();
  llvm::Type* i32 = int_like(t);
  auto ci = [&](uint64_t v) { return llvm::ConstantInt::get(i32, v); };
  auto c = [&](double v) { return llvm::ConstantFP::get(f32, v); };
  llvm::Value* s = b.CreateFAdd(b.CreateFMul(t, c(1.44269504088896341)), c(12582912.0));
  llvm::Value* n = b.CreateFSub(s, c(12582912.0));
  llvm::Value* r = b.CreateFSub(t, b.CreateFMul(n, c(0.693359375)));
  r = b.CreateFSub(r, b.CreateFMul(n, c(-2.12194440e-4)));
  llvm::Value* q = c(1.984830596e-4);
  for (double k : {1.394062070e-3, 8.333384991e-3, 4.166636243e-2, 1.666666567e-1, 0.5})
    q = b.CreateFAdd(b.CreateFMul(q, r), c(k));
  llvm::Value* p = b.CreateFAdd(b.CreateFMul(b.CreateFMul(r, r), q), r);
  llvm::Value* scale = b.CreateBitCast(b.CreateShl(b.CreateAdd(b.CreateBitCast(s, i32), ci(127)), 23), f32);
  return b.CreateFAdd(b.CreateFMul(scale, p), scale);
}

}  // namespace

llvm::Value* emit_tanh(llvm::IRBuilder<>& b, llvm::Value* x) {
  // As ops::fast_tanh: an odd polynomial below 0.625, else 1 - 2 / (e^{2|x|} + 1) with e^t
  // for t in [0, 40] only (no range checks; 2^n from the bits of the rounding sum).
  llvm::Type* f32 = x->getType();
  llvm::Type* i32 = int_like(x);
  auto ci = [&](uint64_t v) { return llvm::ConstantInt::get(i32, v); };
  auto c = [&](double v) { return llvm::ConstantFP::get(f32, v); };
  llvm::Value* a = b.CreateUnaryIntrinsic(llvm::Intrinsic::fabs, x);
  llvm::Value* z = b.CreateFMul(a, a);
  llvm::Value* sp = c(-5.70498872745e-3);
  for (double k : {2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1})
    sp = b.CreateFAdd(b.CreateFMul(sp, z), c(k));
  llvm::Value* small = b.CreateFAdd(b.CreateFMul(b.CreateFMul(a, z), sp), a);
  llvm::Value* t = b.CreateFMul(a, c(2.0));
  t = b.CreateSelect(b.CreateFCmpOGT(t, c(40.0)), c(40.0), t);  // NaN passes through
  llvm::Value* big = b.CreateFSub(c(1.0), b.CreateFDiv(c(2.0), b.CreateFAdd(emit_exp_in_range(b, t), c(1.0))));
  llvm::Value* v = b.CreateSelect(b.CreateFCmpOLT(a, c(0.625)), small, big);
  // copysign(v, x) by bits: keeps tanh(-0) = -0.
  llvm::Value* sign = b.CreateAnd(b.CreateBitCast(x, i32), ci(0x80000000u));
  return b.CreateBitCast(b.CreateOr(b.CreateBitCast(v, i32), sign), f32);
}

llvm::Value* emit_sigmoid(llvm::IRBuilder<>& b, llvm::Value* x) {
  // As ops::fast_sigmoid: 1 / (1 + e^t), t = -x clamped so 2^n needs no range handling.
  llvm::Type* f32 = x->getType();
  auto c = [&](double v) { return llvm::ConstantFP::get(f32, v); };
  llvm::Value* t = b.CreateFNeg(x);
  t = b.CreateSelect(b.CreateFCmpOLT(t, c(-87.3)), c(-87.3), t);  // NaN passes through
  llvm::Value* zero = b.CreateFCmpOGT(t, c(88.0));
  t = b.CreateSelect(zero, c(88.0), t);
  return b.CreateSelect(zero, c(0.0), b.CreateFDiv(c(1.0), b.CreateFAdd(c(1.0), emit_exp_in_range(b, t))));
}

llvm::Value* emit_log(llvm::IRBuilder<>& b, llvm::Value* x) {
  // Cephes logf: x = m * 2^e with m in [sqrt(1/2), sqrt(2)); log(m) by a degree-9 polynomial.
  llvm::Type* f32 = x->getType();
  llvm::Type* i32 = int_like(x);
  auto ci = [&](uint64_t v) { return llvm::ConstantInt::get(i32, v); };
  auto c = [&](double v) { return llvm::ConstantFP::get(f32, v); };
  // Subnormal inputs: scale by 2^23 first.
  llvm::Value* tiny = b.CreateFCmpOLT(x, c(1.17549435e-38));
  llvm::Value* xs = b.CreateSelect(tiny, b.CreateFMul(x, c(8388608.0)), x);
  llvm::Value* bits = b.CreateBitCast(xs, i32);
  llvm::Value* e = b.CreateSub(b.CreateAnd(b.CreateLShr(bits, 23), ci(0xff)), ci(126));
  e = b.CreateSelect(tiny, b.CreateSub(e, ci(23)), e);
  llvm::Value* m = b.CreateBitCast(b.CreateOr(b.CreateAnd(bits, ci(0x807fffff)), ci(0x3f000000)), f32);
  llvm::Value* fe = b.CreateSIToFP(e, f32);
  llvm::Value* lt = b.CreateFCmpOLT(m, c(0.707106781186547524));
  fe = b.CreateSelect(lt, b.CreateFSub(fe, c(1.0)), fe);
  llvm::Value* t = b.CreateSelect(lt, b.CreateFSub(b.CreateFAdd(m, m), c(1.0)), b.CreateFSub(m, c(1.0)));
  llvm::Value* z = b.CreateFMul(t, t);
  llvm::Value* p = c(7.0376836292e-2);
  for (double k : {-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
                   2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1})
    p = b.CreateFAdd(b.CreateFMul(p, t), c(k));
  llvm::Value* y = b.CreateFMul(b.CreateFMul(p, t), z);
  y = b.CreateFAdd(y, b.CreateFMul(fe, c(-2.12194440e-4)));
  y = b.CreateFSub(y, b.CreateFMul(z, c(0.5)));
  llvm::Value* r = b.CreateFAdd(b.CreateFAdd(t, y), b.CreateFMul(fe, c(0.693359375)));
  // Special cases: log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, log(NaN) = NaN.
  r = b.CreateSelect(b.CreateFCmpOEQ(x, c(0.0)), llvm::ConstantFP::getInfinity(f32, true), r);
  r = b.CreateSelect(b.CreateFCmpOLT(x, c(0.0)), llvm::ConstantFP::getNaN(f32), r);
  r = b.CreateSelect(b.CreateFCmpOEQ(x, llvm::ConstantFP::getInfinity(f32)), x, r);
  return b.CreateSelect(b.CreateFCmpUNO(x, x), x, r);
}

namespace {

llvm::Value* apply(llvm::IRBuilder<>& b, ScalarOp op, llvm::Value* A, llvm::Value* B, llvm::Value* C) {
  llvm::Type* f32 = A->getType();
  llvm::Value* zero = llvm::ConstantFP::get(f32, 0.0);
  llvm::Value* one = llvm::ConstantFP::get(f32, 1.0);
  switch (op) {
    case ScalarOp::neg: return b.CreateFNeg(A);
    case ScalarOp::exp: return emit_exp(b, A);
    case ScalarOp::log: return emit_log(b, A);
    case ScalarOp::sqrt: return b.CreateUnaryIntrinsic(llvm::Intrinsic::sqrt, A);
    case ScalarOp::rsqrt: return b.CreateFDiv(one, b.CreateUnaryIntrinsic(llvm::Intrinsic::sqrt, A));
    case ScalarOp::tanh: return emit_tanh(b, A);
    case ScalarOp::abs: return b.CreateUnaryIntrinsic(llvm::Intrinsic::fabs, A);
    case ScalarOp::add: return b.CreateFAdd(A, B);
    case ScalarOp::sub: return b.CreateFSub(A, B);
    case ScalarOp::mul: return b.CreateFMul(A, B);
    case ScalarOp::div: return b.CreateFDiv(A, B);
    // As the reference kernels: the first operand unless the second is strictly larger (smaller).
    case ScalarOp::max: return b.CreateSelect(b.CreateFCmpOLT(A, B), B, A);
    case ScalarOp::min: return b.CreateSelect(b.CreateFCmpOLT(B, A), B, A);
    case ScalarOp::gt: return b.CreateSelect(b.CreateFCmpOGT(A, B), one, zero);
    case ScalarOp::ge: return b.CreateSelect(b.CreateFCmpOGE(A, B), one, zero);
    case ScalarOp::eq: return b.CreateSelect(b.CreateFCmpOEQ(A, B), one, zero);
    case ScalarOp::select: return b.CreateSelect(b.CreateFCmpUNE(A, zero), B, C);
    case ScalarOp::sigmoid: return emit_sigmoid(b, A);
    case ScalarOp::arg:
    case ScalarOp::constant: break;
  }
  throw Error("fused kernel: no lowering for this instruction");
}

// Per-element values of one column loop, computed on demand from the row values.
struct ColumnScope {
  llvm::IRBuilder<>& b;
  const FusedKernelDesc& d;
  const std::vector<bool>& row;
  const std::vector<llvm::Value*>& row_vals;
  const std::vector<llvm::Value*>& in;
  llvm::Value* r;
  llvm::Value* c;
  std::vector<llvm::Value*> memo;
  unsigned vf = 1;  // > 1: values are vectors of columns [c, c + vf)
  const std::vector<llvm::Value*>* cache = nullptr;  // per instruction: its row, kept, or null

  llvm::Value* load(llvm::Value* base, llvm::Value* idx) {
    llvm::Type* f32 = b.getFloatTy();
    llvm::Value* ptr = b.CreateInBoundsGEP(f32, base, idx);
    if (vf == 1) return b.CreateAlignedLoad(f32, ptr, llvm::MaybeAlign(4));
    llvm::Type* vt = llvm::FixedVectorType::get(f32, vf);
    return b.CreateAlignedLoad(vt, b.CreateBitCast(ptr, llvm::PointerType::getUnqual(vt)), llvm::MaybeAlign(4));
  }

  llvm::Value* get(int32_t k) {
    const size_t u = static_cast<size_t>(k);
    if (memo[u]) return memo[u];
    if (row[u]) return memo[u] = vf > 1 ? b.CreateVectorSplat(vf, row_vals[u]) : row_vals[u];
    if (cache && (*cache)[u]) return memo[u] = load((*cache)[u], c);
    const FusedInstr& i = d.code[u];
    llvm::Value* v = nullptr;
    if (i.op == ScalarOp::arg) {
      const size_t a = static_cast<size_t>(i.index);
      llvm::Value* idx = d.inputs[a] == FusedInput::full ? b.CreateAdd(b.CreateMul(r, b.getInt64(d.cols)), c) : c;
      v = load(in[a], idx);
    } else {
      auto op = [&](int32_t o) { return o >= 0 ? get(o) : nullptr; };
      llvm::Value* A = op(i.a);
      llvm::Value* B = op(i.b);
      llvm::Value* C = op(i.c);
      v = apply(b, i.op, A, B, C);
    }
    return memo[u] = v;
  }
};

}  // namespace

bool streams_past_cache(const FusedKernelDesc& d) {
  // An output written over its input has its lines in the cache already: plain stores.
  int full_outputs = 0, over = 0;
  for (const auto& o : d.outputs) full_outputs += o.row ? 0 : 1, over += o.over >= 0 ? 1 : 0;
  return full_outputs == 1 && over == 0;
}

void emit_row_body(llvm::IRBuilder<>& b, llvm::Function* f, const FusedKernelDesc& d, llvm::Value* r,
                   llvm::Value* c0, llvm::Value* c1, const std::vector<llvm::Value*>& in,
                   const std::vector<llvm::Value*>& out_ptrs, bool streaming, bool row_cache) {
  llvm::LLVMContext& ctx = b.getContext();
  // An output written over an input is stored through the input's pointer: one pointer read
  // and written, not two (noalias on the CPU) that alias.
  std::vector<llvm::Value*> out = out_ptrs;
  for (size_t o = 0; o < d.outputs.size(); ++o)
    if (d.outputs[o].over >= 0) out[o] = in.at(static_cast<size_t>(d.outputs[o].over));
  llvm::Type* f32 = b.getFloatTy();
  llvm::Type* i64 = b.getInt64Ty();
  const std::vector<bool> row = d.row_levels();
  std::vector<llvm::Value*> row_vals(d.code.size(), nullptr);
  // A value a row reduction folds that something else uses again (softmax's exp, used by
  // the division after the sum): kept for the row in a stack buffer while it is folded,
  // then read back instead of computed again.
  std::vector<llvm::Value*> slot(d.code.size(), nullptr), kept(d.code.size(), nullptr);
  if (row_cache && d.cols > 0 && d.cols <= kRowCacheColumns) {
    std::vector<bool> reused(d.code.size(), false);
    for (const FusedInstr& i : d.code)
      if (i.reduce == FusedReduce::none)
        for (int32_t o : {i.a, i.b, i.c})
          if (o >= 0) reused[static_cast<size_t>(o)] = true;
    for (const ops::FusedOutput& o : d.outputs) reused[static_cast<size_t>(o.instr)] = true;
    llvm::IRBuilder<> entry(&f->getEntryBlock(), f->getEntryBlock().begin());
    for (const FusedInstr& i : d.code) {
      if (i.reduce == FusedReduce::none || row[static_cast<size_t>(i.a)]) continue;
      const size_t a = static_cast<size_t>(i.a);
      const ScalarOp op = d.code[a].op;
      if (!reused[a] || slot[a] || d.code[a].reduce != FusedReduce::none || op == ScalarOp::arg || op == ScalarOp::constant)
        continue;
      auto* buf = entry.CreateAlloca(f32, entry.getInt64(d.cols), "row.kept");
      buf->setAlignment(llvm::Align(64));
      slot[a] = buf;
    }
  }
  auto keep = [&](size_t a, llvm::Value* c, llvm::Value* x) {  // while folding a
    if (!slot[a] || kept[a]) return;
    llvm::Value* ptr = b.CreateInBoundsGEP(f32, slot[a], c);
    b.CreateAlignedStore(x, b.CreateBitCast(ptr, llvm::PointerType::getUnqual(x->getType())), llvm::MaybeAlign(4));
  };
  auto column_loop = [&](llvm::Value* lo, llvm::Value* hi, const char* name, auto&& body, int64_t step = 1) {
    llvm::BasicBlock* pre = b.GetInsertBlock();
    auto* loop = llvm::BasicBlock::Create(ctx, name, f);
    auto* exit = llvm::BasicBlock::Create(ctx, std::string(name) + ".end", f);
    b.CreateCondBr(b.CreateICmpSLT(lo, hi), loop, exit);
    b.SetInsertPoint(loop);
    llvm::PHINode* c = b.CreatePHI(i64, 2, "c");
    c->addIncoming(lo, pre);
    body(c, pre, loop, exit);
    llvm::Value* next = b.CreateAdd(c, b.getInt64(step), "c.next", true, true);
    c->addIncoming(next, b.GetInsertBlock());
    b.CreateCondBr(b.CreateICmpSLT(next, hi), loop, exit);
    b.SetInsertPoint(exit);
  };
  for (size_t k = 0; k < d.code.size(); ++k) {
    if (!row[k]) continue;
    const FusedInstr& i = d.code[k];
    if (i.reduce != FusedReduce::none && row[static_cast<size_t>(i.a)]) {  // constant along the row
      llvm::Value* x = row_vals[static_cast<size_t>(i.a)];
      row_vals[k] = i.reduce == FusedReduce::sum ? b.CreateFMul(x, llvm::ConstantFP::get(f32, static_cast<double>(d.cols)))
                    : d.cols > 0                 ? x
                                                 : llvm::ConstantFP::getInfinity(f32, true);
      continue;
    }
    if (i.reduce != FusedReduce::none) {
      const bool sum = i.reduce == FusedReduce::sum;
      auto combine = [&](llvm::Value* acc, llvm::Value* x) -> llvm::Value* {
        if (!sum) return b.CreateSelect(b.CreateFCmpOGT(x, acc), x, acc);  // NaN never wins, as in the reference
        llvm::FastMathFlags fm;
        fm.setAllowReassoc();
        llvm::Value* v = b.CreateFAdd(acc, x);
        llvm::cast<llvm::Instruction>(v)->setFastMathFlags(fm);
        return v;
      };
      // Columns [lo, hi) folded into init, vf at a time (init a vector of vf then).
      auto fold = [&](int64_t lo, int64_t hi, llvm::Value* init, unsigned vf) {
        llvm::PHINode* acc = nullptr;
        llvm::Value* next_acc = nullptr;
        llvm::BasicBlock* pre_block = nullptr;
        llvm::BasicBlock* latch = nullptr;
        column_loop(b.getInt64(lo), b.getInt64(hi), "reduce", [&](llvm::Value* c, llvm::BasicBlock* pre, llvm::BasicBlock*, llvm::BasicBlock*) {
          pre_block = pre;
          acc = b.CreatePHI(init->getType(), 2, "acc");
          acc->addIncoming(init, pre);
          ColumnScope s{b, d, row, row_vals, in, r, c, std::vector<llvm::Value*>(d.code.size(), nullptr), vf, &kept};
          llvm::Value* x = s.get(i.a);
          keep(static_cast<size_t>(i.a), c, x);
          next_acc = combine(acc, x);
          latch = b.GetInsertBlock();
          acc->addIncoming(next_acc, latch);
        }, vf);
        llvm::PHINode* result = b.CreatePHI(init->getType(), 2, "reduced");
        result->addIncoming(init, pre_block);
        result->addIncoming(next_acc, latch);
        return static_cast<llvm::Value*>(result);
      };
      llvm::Value* init = sum ? llvm::ConstantFP::get(f32, 0.0) : llvm::ConstantFP::getInfinity(f32, true);
      // The loop vectoriser widens a reassociable sum itself. A max it leaves serial (a
      // compare and select per column, each waiting for the last): kMaxWidth columns at a
      // time, the lanes folded pairwise, then the last columns.
      constexpr unsigned kMaxWidth = 16;
      const int64_t whole = sum ? 0 : d.cols / kMaxWidth * kMaxWidth;
      llvm::Value* acc = init;
      if (whole > 0) {
        llvm::Value* v = fold(0, whole, b.CreateVectorSplat(kMaxWidth, init), kMaxWidth);
        for (unsigned w = kMaxWidth / 2; w >= 1; w /= 2) {
          std::vector<int> lo_lanes, hi_lanes;
          for (unsigned l = 0; l < w; ++l) lo_lanes.push_back(static_cast<int>(l)), hi_lanes.push_back(static_cast<int>(l + w));
          v = combine(b.CreateShuffleVector(v, lo_lanes), b.CreateShuffleVector(v, hi_lanes));
        }
        acc = b.CreateExtractElement(v, uint64_t{0});
      }
      row_vals[k] = whole < d.cols ? fold(whole, d.cols, acc, 1) : acc;
      kept[static_cast<size_t>(i.a)] = slot[static_cast<size_t>(i.a)];
      continue;
    }
    if (i.op == ScalarOp::constant) {
      row_vals[k] = llvm::ConstantFP::get(f32, i.imm);
    } else if (i.op == ScalarOp::arg) {
      const size_t a = static_cast<size_t>(i.index);
      llvm::Value* idx = d.inputs[a] == FusedInput::per_row ? r : b.getInt64(0);
      row_vals[k] = b.CreateAlignedLoad(f32, b.CreateInBoundsGEP(f32, in[a], idx), llvm::MaybeAlign(4));
    } else {
      auto op = [&](int32_t o) { return o >= 0 ? row_vals.at(static_cast<size_t>(o)) : nullptr; };
      row_vals[k] = apply(b, i.op, op(i.a), op(i.b), op(i.c));
    }
  }
  bool any_full = false;
  for (size_t o = 0; o < d.outputs.size(); ++o) {
    if (!d.outputs[o].row) {
      any_full = true;
      continue;
    }
    b.CreateAlignedStore(row_vals[static_cast<size_t>(d.outputs[o].instr)], b.CreateInBoundsGEP(f32, out[o], r),
                         llvm::MaybeAlign(4));
  }
  if (!any_full) return;
  // The per-element outputs over columns [lo, hi). Streaming: vectors of kStreamWidth
  // columns (hi - lo a multiple of it), each output's cache line written whole at once at a
  // 64-byte aligned address; past the caches when the kernel has one such output. These
  // loops are vectors already: the loop vectoriser does not widen non-temporal stores whose
  // alignment it cannot prove. Several non-temporal output streams ran at half the speed of
  // plain stores here (the AdamW update: parameter and both moments), one at 1.3x.
  constexpr unsigned kStreamWidth = 16;
  const bool nontemporal = streaming && streams_past_cache(d);
  auto outputs = [&](llvm::Value* lo, llvm::Value* hi, const char* name, bool stream) {
    column_loop(lo, hi, name, [&](llvm::Value* c, llvm::BasicBlock*, llvm::BasicBlock*, llvm::BasicBlock*) {
      ColumnScope s{b, d, row, row_vals, in, r, c, std::vector<llvm::Value*>(d.code.size(), nullptr), stream ? kStreamWidth : 1, &kept};
      llvm::Value* base = b.CreateAdd(b.CreateMul(r, b.getInt64(d.cols)), c);
      // Every value first, then the stores: an output written over an input (in place) must
      // not be stored before another output has read that input.
      std::vector<llvm::Value*> vals(d.outputs.size(), nullptr);
      for (size_t o = 0; o < d.outputs.size(); ++o)
        if (!d.outputs[o].row) vals[o] = s.get(d.outputs[o].instr);
      for (size_t o = 0; o < d.outputs.size(); ++o) {
        if (d.outputs[o].row) continue;
        llvm::Value* v = vals[o];
        llvm::Value* ptr = b.CreateInBoundsGEP(f32, out[o], base);
        if (!stream) {
          b.CreateAlignedStore(v, ptr, llvm::MaybeAlign(4));
          continue;
        }
        llvm::StoreInst* st = b.CreateAlignedStore(v, b.CreateBitCast(ptr, llvm::PointerType::getUnqual(v->getType())),
                                                   llvm::MaybeAlign(64));
        if (nontemporal)
          st->setMetadata(llvm::LLVMContext::MD_nontemporal,
                          llvm::MDNode::get(ctx, llvm::ConstantAsMetadata::get(b.getInt32(1))));
      }
    }, stream ? kStreamWidth : 1);
  };
  if (!streaming) {
    outputs(c0, c1, "cols", false);
    return;
  }
  // Streaming stores must be aligned (unaligned non-temporal ones become scalar stores):
  // columns up to the first at which every output is 64-byte aligned, then a multiple of
  // kStreamWidth columns streamed, then the rest. Outputs whose alignments differ are not
  // streamed.
  llvm::Value* row_base = b.CreateMul(r, b.getInt64(d.cols));
  llvm::Value* mis = nullptr;  // (64 - address % 64) / 4 of the first output, in columns
  llvm::Value* same = b.getTrue();
  llvm::Value* first_addr = nullptr;
  for (size_t o = 0; o < d.outputs.size(); ++o) {
    if (d.outputs[o].row) continue;
    llvm::Value* addr = b.CreatePtrToInt(b.CreateInBoundsGEP(f32, out[o], b.CreateAdd(row_base, c0)), i64);
    llvm::Value* low = b.CreateAnd(addr, b.getInt64(63));
    if (!first_addr) {
      first_addr = low;
      mis = b.CreateLShr(b.CreateAnd(b.CreateSub(b.getInt64(64), low), b.getInt64(63)), 2);
    } else {
      same = b.CreateAnd(same, b.CreateICmpEQ(low, first_addr));
    }
  }
  // Float buffers are 4-byte aligned, so the first aligned column is c0 + mis.
  same = b.CreateAnd(same, b.CreateICmpEQ(b.CreateAnd(first_addr, b.getInt64(3)), b.getInt64(0)));
  llvm::Value* span = b.CreateSub(c1, c0);
  llvm::Value* head = b.CreateSelect(same, b.CreateSelect(b.CreateICmpSLT(mis, span), mis, span), span);
  llvm::Value* ca = b.CreateAdd(c0, head);
  llvm::Value* cb = b.CreateAdd(ca, b.CreateAnd(b.CreateSub(c1, ca), b.getInt64(-int64_t{kStreamWidth})));
  outputs(c0, ca, "cols.head", false);
  outputs(ca, cb, "cols.stream", true);
  outputs(cb, c1, "cols.tail", false);
}

}  // namespace tessel::runtime
