#include "runtime/cpu_jit.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include <llvm/Config/llvm-config.h>
#include <llvm/ExecutionEngine/Orc/ExecutionUtils.h>
#include <llvm/ExecutionEngine/Orc/JITTargetMachineBuilder.h>
#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/IntrinsicsX86.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/LegacyPassManager.h>
#include <llvm/IR/Module.h>
#include <llvm/IR/Verifier.h>
#include <llvm/Passes/PassBuilder.h>
#include <llvm/Support/FileSystem.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Target/TargetMachine.h>

#include "graph/error.h"
#include "runtime/kernel_ir.h"

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

uint64_t fnv1a(std::string_view s, uint64_t h = 14695981039346656037ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Kernels that touch more bytes than a few cores' private caches hold write their
// per-element outputs with streaming stores (emit_row_body): plain stores would first read
// every line in. The threshold is 4x the L2 cache (2 MiB on this machine's 512 KiB L2s):
// measured here on bias + GELU, streaming ran at 0.86-0.88 of plain stores' time from 2 MB
// of kernel data up to 32 MB (the size of the last-level cache, which other cores and
// tenants share), and broke even at 1 MB. Sizes as the kernel (sysfs) reports them to this
// machine.
int64_t cache_bytes(int level, int64_t fallback) {
  std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(level) + "/size");
  int64_t n = 0;
  char unit = 0;
  if (f >> n) {
    f >> unit;
    n <<= unit == 'K' ? 10 : unit == 'M' ? 20 : 0;
  }
  return n > 0 ? n : fallback;
}

int64_t streaming_threshold() {
  static const int64_t bytes = 4 * cache_bytes(2, int64_t{512} << 10);
  return bytes;
}

bool streams(const ops::FusedKernelDesc& d, const llvm::TargetMachine* tm, int64_t threshold) {
  if (!tm || !tm->getTargetTriple().isX86()) return false;
  int64_t bytes = 0, streamed = 0;
  for (size_t k = 0; k < d.inputs.size(); ++k)
    bytes += d.inputs[k] == ops::FusedInput::full ? d.rows * d.cols * 4 : 0;
  for (size_t o = 0; o < d.outputs.size(); ++o)
    if (!d.outputs[o].row) streamed += d.rows * d.cols * 4;
  return streamed > 0 && bytes + streamed > threshold;
}

// The kernel as a function (float** in, float** out, i64 r0, i64 r1, i64 c0, i64 c1) looping
// over rows [r0, r1).
std::unique_ptr<llvm::Module> build_module(const ops::FusedKernelDesc& d, const std::string& symbol,
                                           llvm::LLVMContext& ctx, const llvm::TargetMachine* tm,
                                           int64_t streaming_bytes) {
  d.validate();
  const bool stream = streams(d, tm, streaming_bytes);
  auto m = std::make_unique<llvm::Module>(symbol, ctx);
  if (tm) {
    m->setDataLayout(tm->createDataLayout());
    m->setTargetTriple(tm->getTargetTriple().str());
  }
  llvm::IRBuilder<> b(ctx);
  llvm::FastMathFlags fm;
  fm.setAllowContract();  // a * b + c may become one fma (one rounding instead of two)
  b.setFastMathFlags(fm);
  llvm::Type* f32 = b.getFloatTy();
  llvm::Type* i64 = b.getInt64Ty();
  llvm::PointerType* fptr = llvm::PointerType::getUnqual(f32);
  llvm::PointerType* fptrptr = llvm::PointerType::getUnqual(fptr);
  // The body takes every buffer as its own noalias pointer (outputs never overlap inputs or
  // each other: the memory plan gives values live at once distinct bytes, and an output
  // written over an input goes through the input's pointer, emit_row_body), so the loop
  // vectoriser needs no run-time overlap checks; the entry point unpacks the pointer arrays
  // and calls it, and the inliner turns noalias into alias scopes.
  auto set_target = [&](llvm::Function* fn) {
    if (tm) {
      fn->addFnAttr("target-cpu", tm->getTargetCPU());
      fn->addFnAttr("target-features", tm->getTargetFeatureString());
    }
    fn->addFnAttr(llvm::Attribute::NoUnwind);
  };
  std::vector<llvm::Type*> body_params(d.inputs.size() + d.outputs.size(), fptr);
  body_params.insert(body_params.end(), {i64, i64, i64, i64});
  auto* body = llvm::Function::Create(llvm::FunctionType::get(b.getVoidTy(), body_params, false),
                                      llvm::Function::InternalLinkage, symbol + ".body", m.get());
  set_target(body);
  body->addFnAttr(llvm::Attribute::AlwaysInline);
  const size_t nbuf = d.inputs.size() + d.outputs.size();
  for (size_t k = 0; k < nbuf; ++k) body->addParamAttr(static_cast<unsigned>(k), llvm::Attribute::NoAlias);
  {
    auto* entry = llvm::BasicBlock::Create(ctx, "entry", body);
    b.SetInsertPoint(entry);
    std::vector<llvm::Value*> in, out;
    for (size_t k = 0; k < nbuf; ++k) (k < d.inputs.size() ? in : out).push_back(body->getArg(static_cast<unsigned>(k)));
    llvm::Value* r0 = body->getArg(static_cast<unsigned>(nbuf));
    llvm::Value* r1 = body->getArg(static_cast<unsigned>(nbuf + 1));
    auto* loop = llvm::BasicBlock::Create(ctx, "rows", body);
    auto* exit = llvm::BasicBlock::Create(ctx, "exit", body);
    b.CreateCondBr(b.CreateICmpSLT(r0, r1), loop, exit);
    b.SetInsertPoint(loop);
    llvm::PHINode* r = b.CreatePHI(i64, 2, "r");
    r->addIncoming(r0, entry);
    emit_row_body(b, body, d, r, body->getArg(static_cast<unsigned>(nbuf + 2)), body->getArg(static_cast<unsigned>(nbuf + 3)),
                  in, out, stream, /*row_cache=*/true);
    llvm::Value* next = b.CreateAdd(r, b.getInt64(1), "r.next", true, true);
    r->addIncoming(next, b.GetInsertBlock());
    b.CreateCondBr(b.CreateICmpSLT(next, r1), loop, exit);
    b.SetInsertPoint(exit);
    b.CreateRetVoid();
  }
  auto* fty = llvm::FunctionType::get(b.getVoidTy(), {fptrptr, fptrptr, i64, i64, i64, i64}, false);
  auto* f = llvm::Function::Create(fty, llvm::Function::ExternalLinkage, symbol, m.get());
  set_target(f);
  auto* entry = llvm::BasicBlock::Create(ctx, "entry", f);
  b.SetInsertPoint(entry);
  std::vector<llvm::Value*> args;
  auto pointers = [&](llvm::Value* array, size_t n, const char* name) {
    for (size_t k = 0; k < n; ++k)
      args.push_back(b.CreateAlignedLoad(fptr, b.CreateInBoundsGEP(fptr, array, b.getInt64(static_cast<int64_t>(k))),
                                         llvm::MaybeAlign(8), name + std::to_string(k)));
  };
  pointers(f->getArg(0), d.inputs.size(), "in");
  pointers(f->getArg(1), d.outputs.size(), "out");
  for (unsigned k = 2; k < 6; ++k) args.push_back(f->getArg(k));
  b.CreateCall(body, args);
  // Streaming stores are weakly ordered: fence them before the caller signals another thread.
  if (stream && streams_past_cache(d)) b.CreateCall(llvm::Intrinsic::getDeclaration(m.get(), llvm::Intrinsic::x86_sse_sfence));
  b.CreateRetVoid();
  std::string err;
  llvm::raw_string_ostream es(err);
  if (llvm::verifyModule(*m, &es)) throw Error("fused kernel: invalid IR: " + es.str());
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

// Disk entries: a header line, the payload's size and checksum, then the object file.
constexpr char kMagic[8] = {'T', 'S', 'L', 'K', 'O', 'B', 'J', '1'};

std::string read_entry(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return {};
  char magic[8];
  uint64_t size = 0, sum = 0;
  if (!f.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0) return {};
  if (!f.read(reinterpret_cast<char*>(&size), 8) || !f.read(reinterpret_cast<char*>(&sum), 8)) return {};
  if (size == 0 || size > (uint64_t{1} << 30)) return {};
  std::string payload(size, '\0');
  if (!f.read(payload.data(), static_cast<std::streamsize>(size))) return {};
  if (f.peek() != std::char_traits<char>::eof()) return {};
  if (fnv1a(payload) != sum) return {};
  return payload;
}

void write_entry(const std::string& dir, const std::string& path, std::string_view payload) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = dir + "/." + std::to_string(::getpid()) + "." + std::to_string(counter++) + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return;
    const uint64_t size = payload.size(), sum = fnv1a(payload);
    f.write(kMagic, 8);
    f.write(reinterpret_cast<const char*>(&size), 8);
    f.write(reinterpret_cast<const char*>(&sum), 8);
    f.write(payload.data(), static_cast<std::streamsize>(payload.size()));
    if (!f) {
      f.close();
      std::remove(tmp.c_str());
      return;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) std::remove(tmp.c_str());
}

}  // namespace

std::string default_kernel_cache_dir() {
  if (const char* e = std::getenv("TESSEL_KERNEL_CACHE")) return std::string(e) == "off" ? "" : e;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/tessel/kernels";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/tessel/kernels";
  return {};
}

struct CpuJit::Impl {
  std::mutex mu;
  std::unique_ptr<llvm::orc::LLJIT> jit;
  std::unique_ptr<llvm::TargetMachine> tm;
  std::string target;     // cpu and features, part of every key
  std::string cache_dir;  // "" : none
  bool cache_ok = false;  // the directory exists (or was made)
  int64_t streaming_bytes = 0;
  std::unordered_map<std::string, FusedFn> loaded;  // key -> kernel
  Stats stats;
};

CpuJit::CpuJit(std::string cache_dir, int64_t streaming_bytes) : impl_(std::make_unique<Impl>()) {
  impl_->streaming_bytes = streaming_bytes >= 0 ? streaming_bytes : streaming_threshold();
  // LLVM's target registry is a global list that registration appends to unlocked: two JITs
  // made at once on two threads could lose the target ("unable to find target").
  static std::once_flag registered;
  std::call_once(registered, [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
    llvm::InitializeNativeTargetAsmParser();
  });
  auto jtmb = take(llvm::orc::JITTargetMachineBuilder::detectHost(), "detecting the host CPU");
  jtmb.setCodeGenOptLevel(llvm::CodeGenOpt::Aggressive);
  impl_->tm = take(jtmb.createTargetMachine(), "creating the target machine");
  impl_->jit = take(llvm::orc::LLJITBuilder().setJITTargetMachineBuilder(jtmb).create(), "creating the JIT");
  // Code generation may call memset / memcpy: resolve them (and nothing of ours) from the process.
  const char prefix = impl_->jit->getDataLayout().getGlobalPrefix();
  impl_->jit->getMainJITDylib().addGenerator(
      take(llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(prefix), "finding the C library"));
  impl_->target = impl_->tm->getTargetTriple().str() + " " + impl_->tm->getTargetCPU().str() + " " +
                  impl_->tm->getTargetFeatureString().str() + " llvm " LLVM_VERSION_STRING;
  impl_->cache_dir = std::move(cache_dir);
  if (!impl_->cache_dir.empty()) impl_->cache_ok = !llvm::sys::fs::create_directories(impl_->cache_dir);
}

CpuJit::~CpuJit() = default;

CpuJit& CpuJit::shared() {
  static CpuJit jit;
  return jit;
}

const std::string& CpuJit::cache_dir() const { return impl_->cache_dir; }

std::string CpuJit::ir(const ops::FusedKernelDesc& d) const {
  llvm::LLVMContext ctx;
  return module_text(*build_module(d, "tessel_fused", ctx, impl_->tm.get(), impl_->streaming_bytes));
}

std::string CpuJit::host_cpu() const {
  return impl_->tm->getTargetCPU().str() + " " + impl_->tm->getTargetFeatureString().str();
}

FusedFn CpuJit::compile(const ops::FusedKernelDesc& d) {
  const auto t0 = std::chrono::steady_clock::now();
  // The key: the IR under a fixed symbol, and the target.
  const std::string text = ir(d) + "\n" + impl_->target + "\nformat 1";
  const std::string key = hex(fnv1a(text)) + hex(fnv1a(text, 0x84222325cbf29ce4ull));
  std::lock_guard lk(impl_->mu);
  auto done = [&](FusedFn fn) {
    impl_->stats.compile_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return fn;
  };
  if (auto it = impl_->loaded.find(key); it != impl_->loaded.end()) {
    ++impl_->stats.memory_hits;
    return done(it->second);
  }
  const std::string symbol = "tessel_fused_" + key;
  const std::string path = impl_->cache_ok ? impl_->cache_dir + "/" + key + ".o" : "";
  std::string object = path.empty() ? "" : read_entry(path);
  const bool from_disk = !object.empty();
  if (!from_disk) {
    llvm::LLVMContext ctx;
    std::unique_ptr<llvm::Module> m = build_module(d, symbol, ctx, impl_->tm.get(), impl_->streaming_bytes);
    optimize(*m, impl_->tm.get());
    if (const char* dump = std::getenv("TESSEL_JIT_DUMP")) {  // the optimised IR, appended to a file
      std::error_code ec;
      llvm::raw_fd_ostream os(dump, ec, llvm::sys::fs::OF_Append);
      if (!ec) m->print(os, nullptr);
    }
    llvm::SmallVector<char, 0> buf;
    llvm::raw_svector_ostream os(buf);
    llvm::legacy::PassManager pm;
    if (impl_->tm->addPassesToEmitFile(pm, os, nullptr, llvm::CGFT_ObjectFile))
      throw Error("LLVM: the host target cannot emit object files");
    pm.run(*m);
    object.assign(buf.begin(), buf.end());
    if (!path.empty()) write_entry(impl_->cache_dir, path, object);
  }
  if (auto e = impl_->jit->addObjectFile(llvm::MemoryBuffer::getMemBufferCopy(object, symbol)))
    throw Error("LLVM: loading kernel " + key + ": " + llvm_message(std::move(e)));
  auto sym = take(impl_->jit->lookup(symbol), "linking the kernel");
  auto fn = reinterpret_cast<FusedFn>(sym.getAddress());
  impl_->loaded.emplace(key, fn);
  ++(from_disk ? impl_->stats.disk_hits : impl_->stats.compiled);
  return done(fn);
}

CpuJit::Stats CpuJit::stats() const {
  std::lock_guard lk(impl_->mu);
  return impl_->stats;
}

FusedFn compile_and_count(const ops::FusedKernelDesc& d, int64_t& compiled, int64_t& disk_hits, double& seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  const CpuJit::Stats before = CpuJit::shared().stats();
  const FusedFn fn = CpuJit::shared().compile(d);
  const CpuJit::Stats after = CpuJit::shared().stats();
  compiled += after.compiled - before.compiled;
  disk_hits += after.disk_hits - before.disk_hits;
  seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return fn;
}

void run_fused(FusedFn fn, const ops::FusedKernelDesc& d, const float* const* in, float* const* out,
               Parallel& parallel) {
  constexpr int64_t kChunk = 1 << 14;  // elements per task: large enough to amortise a call
  const int64_t rows = d.rows, cols = d.cols;
  bool whole_rows = false;
  for (const ops::FusedOutput& o : d.outputs) whole_rows = whole_rows || o.row;
  whole_rows = whole_rows || d.has_reduction();
  if (rows == 0 || (cols == 0 && !whole_rows)) return;  // a reduction over no columns still writes
  if (whole_rows || cols <= kChunk) {
    parallel.for_range(rows, std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
      fn(in, out, r0, r1, 0, cols);
    });
    return;
  }
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  parallel.for_range(rows * chunks, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t r = w / chunks, c0 = (w % chunks) * kChunk;
      fn(in, out, r, r + 1, c0, std::min(cols, c0 + kChunk));
    }
  });
}

}  // namespace tessel::runtime
