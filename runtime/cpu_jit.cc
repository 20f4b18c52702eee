#include "runtime/cpu_jit.h"

#include <chrono>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <unordered_map>

#include <llvm/ExecutionEngine/Orc/ExecutionUtils.h>
#include <llvm/ExecutionEngine/Orc/JITTargetMachineBuilder.h>
#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/ExecutionEngine/Orc/ThreadSafeModule.h>
#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/Module.h>
#include <llvm/IR/Verifier.h>
#include <llvm/Passes/PassBuilder.h>
#include <llvm/Support/FileSystem.h>
#include <llvm/Support/Host.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Target/TargetMachine.h>

#include "graph/error.h"

namespace tessel::runtime {

namespace {

std::string llvm_message(llvm::Error e) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << e;
  return os.str();
}

template <class T>
T take(llvm::Expected<T> v, const char* what) {
  if (!v) throw Error(std::string("LLVM: ") + what + ": " + llvm_message(v.takeError()));
  return std::move(*v);
}

// exp and tanh as straight-line IR the loop vectoriser can widen (libm's are scalar calls):
// the same algorithm as the reference kernels' ops/fast_math.h, within 2 ulp.
llvm::Value* emit_exp(llvm::IRBuilder<>& b, llvm::Value* x) {
  llvm::Type* f32 = b.getFloatTy();
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
  llvm::Value* ni = b.CreateFPToSI(n, b.getInt32Ty());
  llvm::Value* pos = b.CreateICmpSGT(ni, b.getInt32(0));
  llvm::Value* n1 = b.CreateSelect(pos, b.CreateSub(ni, b.getInt32(1)), ni);
  llvm::Value* scale = b.CreateBitCast(b.CreateShl(b.CreateAdd(n1, b.getInt32(127)), 23), f32);
  llvm::Value* y = b.CreateFMul(b.CreateFMul(p, scale), b.CreateSelect(pos, c(2.0), c(1.0)));
  y = b.CreateSelect(b.CreateFCmpOLT(x, lo), c(0.0), y);
  y = b.CreateSelect(b.CreateFCmpOGT(x, hi), llvm::ConstantFP::getInfinity(f32), y);
  return b.CreateSelect(b.CreateFCmpUNO(x, x), x, y);
}

llvm::Value* emit_tanh(llvm::IRBuilder<>& b, llvm::Value* x) {
  llvm::Type* f32 = b.getFloatTy();
  auto c = [&](double v) { return llvm::ConstantFP::get(f32, v); };
  llvm::Value* a = b.CreateUnaryIntrinsic(llvm::Intrinsic::fabs, x);
  llvm::Value* z = b.CreateFMul(x, x);
  llvm::Value* p = c(-5.70498872745e-3);
  for (double k : {2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1})
    p = b.CreateFAdd(b.CreateFMul(p, z), c(k));
  llvm::Value* small = b.CreateFAdd(x, b.CreateFMul(b.CreateFMul(x, z), p));
  llvm::Value* e = emit_exp(b, b.CreateFMul(c(2.0), b.CreateSelect(b.CreateFCmpOGT(a, c(9.0)), c(9.0), a)));
  llvm::Value* big = b.CreateFSub(c(1.0), b.CreateFDiv(c(2.0), b.CreateFAdd(e, c(1.0))));
  big = b.CreateSelect(b.CreateFCmpOGT(a, c(9.0)), c(1.0), big);
  big = b.CreateSelect(b.CreateFCmpOLT(x, c(0.0)), b.CreateFNeg(big), big);
  llvm::Value* v = b.CreateSelect(b.CreateFCmpOLT(a, c(0.625)), small, big);
  return b.CreateBinaryIntrinsic(llvm::Intrinsic::copysign, v, x);
}

// The kernel as LLVM IR: a loop over [begin, end), one load per non-scalar argument, the
// expression's instructions in order, one store. `out` does not overlap the inputs.
std::unique_ptr<llvm::Module> build_module(const ElementwiseKernel& k, const std::string& symbol, llvm::LLVMContext& ctx,
                                           const llvm::TargetMachine* tm) {
  auto m = std::make_unique<llvm::Module>(symbol, ctx);
  if (tm) {
    m->setDataLayout(tm->createDataLayout());
    m->setTargetTriple(tm->getTargetTriple().str());
  }
  llvm::IRBuilder<> b(ctx);
  llvm::Type* f32 = b.getFloatTy();
  llvm::Type* i64 = b.getInt64Ty();
  llvm::PointerType* fptr = llvm::PointerType::getUnqual(f32);
  llvm::PointerType* fptrptr = llvm::PointerType::getUnqual(fptr);
  auto* fty = llvm::FunctionType::get(b.getVoidTy(), {fptrptr, fptr, i64, i64}, false);
  auto* f = llvm::Function::Create(fty, llvm::Function::ExternalLinkage, symbol, m.get());
  if (tm) {
    f->addFnAttr("target-cpu", tm->getTargetCPU());
    f->addFnAttr("target-features", tm->getTargetFeatureString());
  }
  f->addFnAttr(llvm::Attribute::NoUnwind);
  f->addParamAttr(1, llvm::Attribute::NoAlias);
  llvm::Argument* in = f->getArg(0);
  llvm::Argument* out = f->getArg(1);
  llvm::Argument* begin = f->getArg(2);
  llvm::Argument* end = f->getArg(3);

  auto* entry = llvm::BasicBlock::Create(ctx, "entry", f);
  auto* loop = llvm::BasicBlock::Create(ctx, "loop", f);
  auto* exit = llvm::BasicBlock::Create(ctx, "exit", f);
  b.SetInsertPoint(entry);
  const int nargs = static_cast<int>(k.scalar_args.size());
  if (k.expr.num_args() > nargs)
    throw Error("kernel " + k.name + ": the expression reads " + std::to_string(k.expr.num_args()) + " arguments, " +
                std::to_string(nargs) + " given");
  std::vector<llvm::Value*> ptr(static_cast<size_t>(nargs)), scalar(static_cast<size_t>(nargs), nullptr);
  for (int a = 0; a < nargs; ++a) {
    llvm::Value* slot = b.CreateInBoundsGEP(fptr, in, b.getInt64(a));
    ptr[static_cast<size_t>(a)] = b.CreateAlignedLoad(fptr, slot, llvm::MaybeAlign(8), "arg" + std::to_string(a));
    if (k.scalar_args[static_cast<size_t>(a)])
      scalar[static_cast<size_t>(a)] = b.CreateAlignedLoad(f32, ptr[static_cast<size_t>(a)], llvm::MaybeAlign(4));
  }
  b.CreateCondBr(b.CreateICmpSLT(begin, end), loop, exit);

  b.SetInsertPoint(loop);
  llvm::PHINode* i = b.CreatePHI(i64, 2, "i");
  i->addIncoming(begin, entry);
  std::vector<llvm::Value*> arg(static_cast<size_t>(nargs));
  for (int a = 0; a < nargs; ++a)
    arg[static_cast<size_t>(a)] =
        scalar[static_cast<size_t>(a)]
            ? scalar[static_cast<size_t>(a)]
            : b.CreateAlignedLoad(f32, b.CreateInBoundsGEP(f32, ptr[static_cast<size_t>(a)], i), llvm::MaybeAlign(4));
  llvm::Value* zero = llvm::ConstantFP::get(f32, 0.0);
  llvm::Value* one = llvm::ConstantFP::get(f32, 1.0);
  std::vector<llvm::Value*> r;
  for (const ScalarInstr& s : k.expr.code()) {
    auto A = [&] { return r.at(static_cast<size_t>(s.a)); };
    auto B = [&] { return r.at(static_cast<size_t>(s.b)); };
    llvm::Value* v = nullptr;
    switch (s.op) {
      case ScalarOp::arg: v = arg.at(static_cast<size_t>(s.index)); break;
      case ScalarOp::constant: v = llvm::ConstantFP::get(f32, s.imm); break;
      case ScalarOp::neg: v = b.CreateFNeg(A()); break;
      case ScalarOp::exp: v = emit_exp(b, A()); break;
      case ScalarOp::log: v = b.CreateUnaryIntrinsic(llvm::Intrinsic::log, A()); break;
      case ScalarOp::sqrt: v = b.CreateUnaryIntrinsic(llvm::Intrinsic::sqrt, A()); break;
      case ScalarOp::rsqrt: v = b.CreateFDiv(one, b.CreateUnaryIntrinsic(llvm::Intrinsic::sqrt, A())); break;
      case ScalarOp::tanh: v = emit_tanh(b, A()); break;
      case ScalarOp::abs: v = b.CreateUnaryIntrinsic(llvm::Intrinsic::fabs, A()); break;
      case ScalarOp::add: v = b.CreateFAdd(A(), B()); break;
      case ScalarOp::sub: v = b.CreateFSub(A(), B()); break;
      case ScalarOp::mul: v = b.CreateFMul(A(), B()); break;
      case ScalarOp::div: v = b.CreateFDiv(A(), B()); break;
      // As std::max / std::min: the first operand unless the second is strictly larger (smaller).
      case ScalarOp::max: v = b.CreateSelect(b.CreateFCmpOLT(A(), B()), B(), A()); break;
      case ScalarOp::min: v = b.CreateSelect(b.CreateFCmpOLT(B(), A()), B(), A()); break;
      case ScalarOp::gt: v = b.CreateSelect(b.CreateFCmpOGT(A(), B()), one, zero); break;
      case ScalarOp::ge: v = b.CreateSelect(b.CreateFCmpOGE(A(), B()), one, zero); break;
      case ScalarOp::eq: v = b.CreateSelect(b.CreateFCmpOEQ(A(), B()), one, zero); break;
      case ScalarOp::select:
        v = b.CreateSelect(b.CreateFCmpUNE(A(), zero), B(), r.at(static_cast<size_t>(s.c)));
        break;
    }
    r.push_back(v);
  }
  if (r.empty()) throw Error("kernel " + k.name + ": empty expression");
  b.CreateAlignedStore(r.back(), b.CreateInBoundsGEP(f32, out, i), llvm::MaybeAlign(4));
  llvm::Value* next = b.CreateAdd(i, b.getInt64(1), "next", true, true);
  i->addIncoming(next, loop);
  b.CreateCondBr(b.CreateICmpSLT(next, end), loop, exit);
  b.SetInsertPoint(exit);
  b.CreateRetVoid();

  std::string err;
  llvm::raw_string_ostream es(err);
  if (llvm::verifyModule(*m, &es)) throw Error("kernel " + k.name + ": invalid IR: " + es.str());
  return m;
}

std::string module_text(const llvm::Module& m) {
  std::string s;
  llvm::raw_string_ostream os(s);
  m.print(os, nullptr);
  return os.str();
}

void optimize(llvm::Module& m, llvm::TargetMachine* tm) {
  llvm::LoopAnalysisManager lam;
  llvm::FunctionAnalysisManager fam;
  llvm::CGSCCAnalysisManager cgam;
  llvm::ModuleAnalysisManager mam;
  llvm::PipelineTuningOptions pto;
  pto.LoopVectorization = true;
  pto.SLPVectorization = true;
  llvm::PassBuilder pb(tm, pto);
  pb.registerModuleAnalyses(mam);
  pb.registerCGSCCAnalyses(cgam);
  pb.registerFunctionAnalyses(fam);
  pb.registerLoopAnalyses(lam);
  pb.crossRegisterProxies(lam, fam, cgam, mam);
  llvm::ModulePassManager mpm = pb.buildPerModuleDefaultPipeline(llvm::OptimizationLevel::O3);
  mpm.run(m, mam);
}

}  // namespace

struct CpuJit::Impl {
  std::mutex mu;
  std::unique_ptr<llvm::orc::LLJIT> jit;
  std::unique_ptr<llvm::TargetMachine> tm;  // for the IR's layout and the optimiser
  std::unordered_map<size_t, std::vector<std::pair<std::string, ElementwiseFn>>> cache;  // IR hash -> (IR, fn)
  Stats stats;
  int64_t next_id = 0;
};

CpuJit::CpuJit() : impl_(std::make_unique<Impl>()) {
  llvm::InitializeNativeTarget();
  llvm::InitializeNativeTargetAsmPrinter();
  llvm::InitializeNativeTargetAsmParser();
  auto jtmb = take(llvm::orc::JITTargetMachineBuilder::detectHost(), "detecting the host CPU");
  jtmb.setCodeGenOptLevel(llvm::CodeGenOpt::Aggressive);
  impl_->tm = take(jtmb.createTargetMachine(), "creating the target machine");
  impl_->jit = take(llvm::orc::LLJITBuilder().setJITTargetMachineBuilder(jtmb).create(), "creating the JIT");
  const char prefix = impl_->jit->getDataLayout().getGlobalPrefix();
  impl_->jit->getMainJITDylib().addGenerator(
      take(llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(prefix), "finding libm's symbols"));
  llvm::TargetMachine* tm = impl_->tm.get();
  impl_->jit->getIRTransformLayer().setTransform(
      [tm](llvm::orc::ThreadSafeModule tsm, const llvm::orc::MaterializationResponsibility&)
          -> llvm::Expected<llvm::orc::ThreadSafeModule> {
        tsm.withModuleDo([tm](llvm::Module& m) {
          optimize(m, tm);
          if (const char* dump = std::getenv("TESSEL_JIT_DUMP")) {  // the optimised IR, appended to a file
            std::error_code ec;
            llvm::raw_fd_ostream os(dump, ec, llvm::sys::fs::OF_Append);
            if (!ec) m.print(os, nullptr);
          }
        });
        return tsm;
      });
}

CpuJit::~CpuJit() = default;

CpuJit& CpuJit::shared() {
  static CpuJit jit;
  return jit;
}

std::string CpuJit::ir(const ElementwiseKernel& k) const {
  llvm::LLVMContext ctx;
  return module_text(*build_module(k, "tessel_" + k.name, ctx, impl_->tm.get()));
}

std::string CpuJit::host_cpu() const {
  return impl_->tm->getTargetCPU().str() + " " + impl_->tm->getTargetFeatureString().str();
}

ElementwiseFn CpuJit::compile(const ElementwiseKernel& k) {
  // The cache key is the IR under a fixed symbol (the symbol differs per compiled kernel).
  const std::string text = ir(ElementwiseKernel{"k", k.expr, k.scalar_args});
  const size_t key = std::hash<std::string>{}(text);
  std::lock_guard lk(impl_->mu);
  for (auto& [t, fn] : impl_->cache[key])
    if (t == text) {
      ++impl_->stats.cache_hits;
      return fn;
    }
  const auto t0 = std::chrono::steady_clock::now();
  const std::string symbol = "tessel_" + k.name + "_" + std::to_string(impl_->next_id++);
  auto ctx = std::make_unique<llvm::LLVMContext>();
  std::unique_ptr<llvm::Module> m = build_module(k, symbol, *ctx, impl_->tm.get());
  if (auto e = impl_->jit->addIRModule(llvm::orc::ThreadSafeModule(std::move(m), std::move(ctx))))
    throw Error("kernel " + k.name + ": LLVM: " + llvm_message(std::move(e)));
  auto sym = take(impl_->jit->lookup(symbol), "compiling the kernel");
  auto fn = reinterpret_cast<ElementwiseFn>(sym.getAddress());
  impl_->cache[key].push_back({text, fn});
  ++impl_->stats.compiled;
  impl_->stats.compile_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return fn;
}

CpuJit::Stats CpuJit::stats() const {
  std::lock_guard lk(impl_->mu);
  return impl_->stats;
}

}  // namespace tessel::runtime
