#include "runtime/cpu_jit.h"

#include <chrono>
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
  llvm::FunctionCallee tanhf = m->getOrInsertFunction("tanhf", llvm::FunctionType::get(f32, {f32}, false));
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
      case ScalarOp::exp: v = b.CreateUnaryIntrinsic(llvm::Intrinsic::exp, A()); break;
      case ScalarOp::log: v = b.CreateUnaryIntrinsic(llvm::Intrinsic::log, A()); break;
      case ScalarOp::sqrt: v = b.CreateUnaryIntrinsic(llvm::Intrinsic::sqrt, A()); break;
      case ScalarOp::rsqrt: v = b.CreateFDiv(one, b.CreateUnaryIntrinsic(llvm::Intrinsic::sqrt, A())); break;
      case ScalarOp::tanh: v = b.CreateCall(tanhf, {A()}); break;
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
        tsm.withModuleDo([tm](llvm::Module& m) { optimize(m, tm); });
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
