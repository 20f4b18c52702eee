#include "runtime/ptx.h"

#include <mutex>

#include <llvm/ADT/SmallVector.h>
#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/IntrinsicsNVPTX.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/LegacyPassManager.h>
#include <llvm/IR/Module.h>
#include <llvm/IR/Verifier.h>
#include <llvm/MC/TargetRegistry.h>
#include <llvm/Passes/PassBuilder.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Target/TargetMachine.h>
#include <llvm/Target/TargetOptions.h>

#include "graph/error.h"
#include "runtime/kernel_ir.h"

namespace tessel::runtime {

bool ptx_thread_per_row(const ops::FusedKernelDesc& d) {
  bool row = d.has_reduction();
  for (const ops::FusedOutput& o : d.outputs) row = row || o.row;
  return row;
}

std::string emit_ptx(const ops::FusedKernelDesc& d, const std::string& name, const std::string& arch) {
  d.validate();
  static std::once_flag init;
  std::call_once(init, [] {
    LLVMInitializeNVPTXTargetInfo();
    LLVMInitializeNVPTXTarget();
    LLVMInitializeNVPTXTargetMC();
    LLVMInitializeNVPTXAsmPrinter();
  });
  const std::string triple = "nvptx64-nvidia-cuda";
  std::string err;
  const llvm::Target* target = llvm::TargetRegistry::lookupTarget(triple, err);
  if (!target) throw Error("LLVM has no NVPTX target: " + err);
  std::unique_ptr<llvm::TargetMachine> tm(
      target->createTargetMachine(triple, arch, "+ptx70", llvm::TargetOptions(), llvm::None, llvm::None,
                                  llvm::CodeGenOpt::Aggressive));
  if (!tm) throw Error("LLVM cannot target " + arch);

  llvm::LLVMContext ctx;
  auto m = std::make_unique<llvm::Module>(name, ctx);
  m->setDataLayout(tm->createDataLayout());
  m->setTargetTriple(triple);
  llvm::IRBuilder<> b(ctx);
  llvm::FastMathFlags fm;
  fm.setAllowContract();
  b.setFastMathFlags(fm);
  llvm::Type* f32 = b.getFloatTy();
  llvm::PointerType* fptr = llvm::PointerType::getUnqual(f32);
  std::vector<llvm::Type*> params(d.inputs.size() + d.outputs.size(), fptr);
  auto* f = llvm::Function::Create(llvm::FunctionType::get(b.getVoidTy(), params, false),
                                   llvm::Function::ExternalLinkage, name, m.get());
  f->addFnAttr(llvm::Attribute::NoUnwind);
  std::vector<llvm::Value*> in, out;
  for (size_t k = 0; k < params.size(); ++k) {
    f->addParamAttr(static_cast<unsigned>(k), llvm::Attribute::NoAlias);
    (k < d.inputs.size() ? in : out).push_back(f->getArg(static_cast<unsigned>(k)));
  }
  auto* entry = llvm::BasicBlock::Create(ctx, "entry", f);
  auto* body = llvm::BasicBlock::Create(ctx, "body", f);
  auto* exit = llvm::BasicBlock::Create(ctx, "exit", f);
  b.SetInsertPoint(entry);
  auto sreg = [&](llvm::Intrinsic::ID id) {
    return b.CreateZExt(b.CreateIntrinsic(id, {}, {}), b.getInt64Ty());
  };
  llvm::Value* gid = b.CreateAdd(b.CreateMul(sreg(llvm::Intrinsic::nvvm_read_ptx_sreg_ctaid_x),
                                             sreg(llvm::Intrinsic::nvvm_read_ptx_sreg_ntid_x)),
                                 sreg(llvm::Intrinsic::nvvm_read_ptx_sreg_tid_x), "gid");
  const bool per_row = ptx_thread_per_row(d);
  const int64_t threads = per_row ? d.rows : d.rows * d.cols;
  b.CreateCondBr(b.CreateICmpSLT(gid, b.getInt64(threads)), body, exit);
  b.SetInsertPoint(body);
  if (per_row) {
    emit_row_body(b, f, d, gid, b.getInt64(0), b.getInt64(d.cols), in, out);
  } else {
    llvm::Value* cols = b.getInt64(std::max<int64_t>(d.cols, 1));
    llvm::Value* c = b.CreateSRem(gid, cols);
    emit_row_body(b, f, d, b.CreateSDiv(gid, cols), c, b.CreateAdd(c, b.getInt64(1)), in, out);
  }
  b.CreateBr(exit);
  b.SetInsertPoint(exit);
  b.CreateRetVoid();
  llvm::Metadata* md[] = {llvm::ValueAsMetadata::get(f), llvm::MDString::get(ctx, "kernel"),
                          llvm::ValueAsMetadata::get(b.getInt32(1))};
  m->getOrInsertNamedMetadata("nvvm.annotations")->addOperand(llvm::MDNode::get(ctx, md));
  llvm::raw_string_ostream es(err);
  if (llvm::verifyModule(*m, &es)) throw Error("fused kernel " + name + ": invalid IR: " + es.str());

  {
    llvm::LoopAnalysisManager lam;
    llvm::FunctionAnalysisManager fam;
    llvm::CGSCCAnalysisManager cgam;
    llvm::ModuleAnalysisManager mam;
    llvm::PassBuilder pb(tm.get());
    pb.registerModuleAnalyses(mam);
    pb.registerCGSCCAnalyses(cgam);
    pb.registerFunctionAnalyses(fam);
    pb.registerLoopAnalyses(lam);
    pb.crossRegisterProxies(lam, fam, cgam, mam);
    pb.buildPerModuleDefaultPipeline(llvm::OptimizationLevel::O3).run(*m, mam);
  }
  llvm::SmallVector<char, 0> buf;
  llvm::raw_svector_ostream os(buf);
  llvm::legacy::PassManager pm;
  if (tm->addPassesToEmitFile(pm, os, nullptr, llvm::CGFT_AssemblyFile))
    throw Error("LLVM: the NVPTX target cannot emit assembly");
  pm.run(*m);
  return std::string(buf.begin(), buf.end());
}

}  // namespace tessel::runtime
