// The CPU JIT against the reference interpreter of the same kernel description (and the
// scalar expressions against their f64 meaning): every elementwise op of the registry with
// its arguments whole, per column, per row and scalar; row reductions (softmax, layer norm)
// on odd shapes, sizes 0 and 1; split ranges; the memory and disk caches, a corrupt entry
// and concurrent writers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "graph/error.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "runtime/cpu_jit.h"
#include "runtime/thread_pool.h"

namespace tessel::runtime {
namespace {

using ops::FusedInput;
using ops::FusedKernelDesc;

bool uses(const FusedKernelDesc& d, std::initializer_list<ScalarOp> ops) {
  for (auto& i : d.code)
    for (ScalarOp o : ops)
      if (i.op == o && i.reduce == ops::FusedReduce::none) return true;
  return false;
}

struct Buffers {
  std::vector<std::vector<float>> in, out;
  std::vector<const float*> in_ptrs;
  std::vector<float*> out_ptrs;
};

// Inputs drawn for the description (positive where it takes logs or roots), one guard
// element past every buffer.
Buffers make_buffers(const FusedKernelDesc& d, uint32_t seed) {
  std::mt19937 rng(seed);
  const bool positive = uses(d, {ScalarOp::log, ScalarOp::sqrt, ScalarOp::rsqrt});
  Buffers b;
  for (size_t i = 0; i < d.inputs.size(); ++i) {
    b.in.emplace_back(static_cast<size_t>(d.input_numel(i)) + 1);
    for (float& x : b.in.back())
      x = positive ? std::uniform_real_distribution<float>(0.05f, 5.f)(rng)
                   : std::round(std::uniform_real_distribution<float>(-12.f, 12.f)(rng) * 4) / 4 + (rng() % 3 ? 0.37f : 0.f);
  }
  for (size_t o = 0; o < d.outputs.size(); ++o) b.out.emplace_back(static_cast<size_t>(d.output_numel(o)) + 1, -7.f);
  for (auto& v : b.in) b.in_ptrs.push_back(v.data());
  for (auto& v : b.out) b.out_ptrs.push_back(v.data());
  return b;
}

// JIT (whole domain on two threads, and again in pieces) against the reference interpreter.
void check(const FusedKernelDesc& d, uint32_t seed, const std::string& what, CpuJit& compiler = CpuJit::shared()) {
  Buffers jit = make_buffers(d, seed), ref = make_buffers(d, seed), pieces = make_buffers(d, seed);
  const FusedFn fn = compiler.compile(d);
  ThreadPool pool(2);
  run_fused(fn, d, jit.in_ptrs.data(), jit.out_ptrs.data(), pool);
  ops::run_fused_reference(d, ref.in_ptrs.data(), ref.out_ptrs.data(), 0, d.rows);
  bool whole_rows = d.has_reduction();
  for (auto& o : d.outputs) whole_rows = whole_rows || o.row;
  if (whole_rows) {
    fn(pieces.in_ptrs.data(), pieces.out_ptrs.data(), 0, d.rows / 2, 0, d.cols);
    fn(pieces.in_ptrs.data(), pieces.out_ptrs.data(), d.rows / 2, d.rows, 0, d.cols);
  } else {
    for (int64_t r = 0; r < d.rows; ++r) {
      fn(pieces.in_ptrs.data(), pieces.out_ptrs.data(), r, r + 1, 0, d.cols / 3);
      fn(pieces.in_ptrs.data(), pieces.out_ptrs.data(), r, r + 1, d.cols / 3, d.cols);
    }
  }
  const double tol = uses(d, {ScalarOp::exp, ScalarOp::log, ScalarOp::tanh}) || d.has_reduction() ? 1e-5 : 1e-6;
  for (size_t o = 0; o < d.outputs.size(); ++o) {
    const int64_t n = d.output_numel(o);
    // Error is relative to the output's scale: with FMA contraction and another summation
    // order, a small result of large terms (xc * rstd * gamma + beta) differs in its last
    // bits of those terms.
    double scale = 0;
    for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(double(ref.out[o][static_cast<size_t>(i)])));
    for (const Buffers* got : {&jit, &pieces}) {
      for (int64_t i = 0; i < n; ++i) {
        const double want = ref.out[o][static_cast<size_t>(i)], g = got->out[o][static_cast<size_t>(i)];
        if (g == want || (std::isnan(g) && std::isnan(want))) continue;
        ASSERT_NEAR(g, want, tol * std::max(std::fabs(want), 0.05 * scale) + 1e-6)
            << what << " [" << d.rows << ", " << d.cols << "] output " << o << " [" << i << "]\n" << d.str();
      }
      EXPECT_EQ(got->out[o][static_cast<size_t>(n)], -7.f) << what << ": wrote past the end";
    }
  }
}

TEST(CpuJit, EveryElementwiseOpMatchesTheReference) {
  int checked = 0;
  for (const OpDef* def : ops::registry().all()) {
    if (!def->elementwise()) continue;
    Graph g(ops::registry());
    ops::Emitter e(g, Origin::here());
    std::vector<Value> in;
    for (int i = 0; i < def->min_inputs; ++i)
      in.push_back(e.input("in" + std::to_string(i), def->name == "where" && i == 0 ? DType::boolean : DType::f32, {4}));
    Attrs attrs;
    if (def->name == "cast") attrs = Attrs{{"dtype", std::string("f32")}};
    const ScalarExpr expr = def->scalar(g.node(g.add(def->name, in, attrs).node));
    const size_t nargs = static_cast<size_t>(def->min_inputs);
    // The expression against its f64 meaning, through the interpreter.
    {
      const FusedKernelDesc d = ops::elementwise_desc(expr, std::vector<FusedInput>(nargs, FusedInput::full), 1, 257);
      Buffers b = make_buffers(d, 2);
      ops::run_fused_reference(d, b.in_ptrs.data(), b.out_ptrs.data(), 0, 1);
      for (size_t i = 0; i < 257; ++i) {
        std::vector<double> args;
        for (auto& v : b.in) args.push_back(v[i]);
        const double want = static_cast<float>(expr.eval(args)), got = b.out[0][i];
        if (got == want || (std::isnan(got) && std::isnan(want))) continue;
        ASSERT_NEAR(got, want, 4e-6 * std::fabs(want) + 1e-6) << def->name << " [" << i << "]";
      }
    }
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 0}, {1, 1}, {1, 7}, {3, 1031}, {0, 4}})
      check(ops::elementwise_desc(expr, std::vector<FusedInput>(nargs, FusedInput::full), rows, cols), 3, def->name);
    if (nargs >= 2)  // the second argument broadcast: a bias, a statistic, a scalar
      for (FusedInput k : {FusedInput::per_col, FusedInput::per_row, FusedInput::scalar}) {
        std::vector<FusedInput> kinds(nargs, FusedInput::full);
        kinds[1] = k;
        check(ops::elementwise_desc(expr, kinds, 5, 67), 4, def->name + " (broadcast second argument)");
      }
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

// softmax over rows: max, exp(x - max), sum, divide; and layer norm with gamma and beta.
FusedKernelDesc softmax_desc(int64_t rows, int64_t cols) {
  using ops::FusedInstr;
  using ops::FusedReduce;
  FusedKernelDesc d;
  d.rows = rows;
  d.cols = cols;
  d.inputs = {FusedInput::full};
  d.code = {FusedInstr{ScalarOp::arg},                                // %0 x
            FusedInstr{ScalarOp::arg, FusedReduce::max, 0},           // %1 max
            FusedInstr{ScalarOp::sub, FusedReduce::none, 0, 1},       // %2 x - max
            FusedInstr{ScalarOp::exp, FusedReduce::none, 2},          // %3
            FusedInstr{ScalarOp::arg, FusedReduce::sum, 3},           // %4 sum
            FusedInstr{ScalarOp::div, FusedReduce::none, 3, 4}};      // %5
  d.outputs = {{5, false}, {4, true}};
  return d;
}

FusedKernelDesc layer_norm_desc(int64_t rows, int64_t cols) {
  using ops::FusedInstr;
  using ops::FusedReduce;
  FusedKernelDesc d;
  d.rows = rows;
  d.cols = cols;
  d.inputs = {FusedInput::full, FusedInput::per_col, FusedInput::per_col};
  auto I = [](ScalarOp op, int a = -1, int b = -1, double imm = 0, int index = 0) {
    return FusedInstr{op, FusedReduce::none, a, b, -1, index, imm};
  };
  d.code = {I(ScalarOp::arg),                                         // %0 x
            FusedInstr{ScalarOp::arg, FusedReduce::sum, 0},           // %1 sum x
            I(ScalarOp::constant, -1, -1, 1.0 / static_cast<double>(cols)),  // %2
            I(ScalarOp::mul, 1, 2),                                   // %3 mean
            I(ScalarOp::sub, 0, 3),                                   // %4 xc
            I(ScalarOp::mul, 4, 4),                                   // %5
            FusedInstr{ScalarOp::arg, FusedReduce::sum, 5},           // %6
            I(ScalarOp::mul, 6, 2),                                   // %7 var
            I(ScalarOp::constant, -1, -1, 1e-5),                      // %8
            I(ScalarOp::add, 7, 8),                                   // %9
            I(ScalarOp::rsqrt, 9),                                    // %10
            I(ScalarOp::mul, 4, 10),                                  // %11
            I(ScalarOp::arg, -1, -1, 0, 1),                           // %12 gamma
            I(ScalarOp::mul, 11, 12),                                 // %13
            I(ScalarOp::arg, -1, -1, 0, 2),                           // %14 beta
            I(ScalarOp::add, 13, 14)};                                // %15
  d.outputs = {{15, false}, {10, true}, {3, true}};
  return d;
}

TEST(CpuJit, RowReductionsMatchTheReference) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {5, 1031}, {0, 5}, {64, 33}, {2, 16}, {3, 48}, {4, 0}}) {
    check(softmax_desc(rows, cols), 7, "softmax");
    check(layer_norm_desc(rows, cols), 8, "layer norm");
  }
  // softmax's exp is folded by the sum and used again by the division: kept for the row, not
  // computed twice; layer norm folds nothing it uses again.
  EXPECT_NE(CpuJit::shared().ir(softmax_desc(3, 48)).find("row.kept"), std::string::npos);
  EXPECT_EQ(CpuJit::shared().ir(layer_norm_desc(3, 48)).find("row.kept"), std::string::npos);
  constexpr int64_t too_long = 4097;  // kRowCacheColumns + 1 (runtime/kernel_ir.h)
  EXPECT_EQ(CpuJit::shared().ir(softmax_desc(3, too_long)).find("row.kept"), std::string::npos);
  check(softmax_desc(2, too_long), 9, "softmax, rows too long to keep");
}

// Kernels over more data than the cache holds write whole aligned lines, a single output
// past the cache: the head (up to the first aligned column), the streamed middle and the
// tail, on buffers of every alignment the pieces give, with one and with several outputs.
TEST(CpuJit, StreamingKernelsMatchTheReference) {
  CpuJit streaming("", 0);  // every kernel streams
  ScalarExpr gelu;
  {
    Graph g(ops::registry());
    ops::Emitter e(g, Origin::here());
    gelu = ops::registry().get("gelu").scalar(g.node(e.gelu(e.input("x", DType::f32, {4})).node));
  }
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {1, 15}, {1, 16}, {3, 1031}, {2, 4099}, {7, 64}}) {
    const FusedKernelDesc d = ops::elementwise_desc(gelu, {FusedInput::full}, rows, cols);
    EXPECT_NE(streaming.ir(d).find("!nontemporal"), std::string::npos);
    EXPECT_EQ(CpuJit::shared().ir(d).find("!nontemporal"), std::string::npos) << "small kernels store plainly";
    check(d, 5, "streamed gelu", streaming);
  }
  check(softmax_desc(5, 1031), 6, "streamed softmax", streaming);
  check(layer_norm_desc(64, 33), 7, "streamed layer norm", streaming);
  // Two per-element outputs: whole lines, plain stores.
  FusedKernelDesc two;
  two.rows = 3;
  two.cols = 1031;
  two.inputs = {FusedInput::full, FusedInput::per_col};
  two.code = {ops::FusedInstr{ScalarOp::arg}, ops::FusedInstr{ScalarOp::arg, ops::FusedReduce::none, -1, -1, -1, 1},
              ops::FusedInstr{ScalarOp::add, ops::FusedReduce::none, 0, 1},
              ops::FusedInstr{ScalarOp::mul, ops::FusedReduce::none, 0, 1}};
  two.outputs = {{2, false}, {3, false}};
  const std::string ir = streaming.ir(two);
  EXPECT_NE(ir.find("cols.stream"), std::string::npos);
  EXPECT_EQ(ir.find("!nontemporal"), std::string::npos);
  check(two, 8, "two streamed outputs", streaming);
}

// Outputs written over inputs (an optimizer's update written into its variable): every
// element is read before it is written, whichever output overwrites which input, next to a
// row reduction of an overwritten input and an output of its own, whole and in pieces,
// streamed or not. Against the reference on separate buffers.
TEST(CpuJit, OutputsWrittenOverTheirInputsMatchTheReference) {
  using ops::FusedInstr;
  using ops::FusedReduce;
  auto desc = [](int64_t rows, int64_t cols) {
    FusedKernelDesc d;
    d.rows = rows;
    d.cols = cols;
    d.inputs = {FusedInput::full, FusedInput::full, FusedInput::per_col, FusedInput::full};  // p, m, c, g
    d.code = {FusedInstr{ScalarOp::arg},
              FusedInstr{ScalarOp::arg, FusedReduce::none, -1, -1, -1, 1},
              FusedInstr{ScalarOp::arg, FusedReduce::none, -1, -1, -1, 2},
              FusedInstr{ScalarOp::arg, FusedReduce::none, -1, -1, -1, 3},
              FusedInstr{ScalarOp::mul, FusedReduce::none, 3, 2},  // %4 = g * c: over m (which it does not read)
              FusedInstr{ScalarOp::mul, FusedReduce::none, 0, 2},
              FusedInstr{ScalarOp::sub, FusedReduce::none, 5, 1},  // %6 = p * c - m (the old m, read first here): over p
              FusedInstr{ScalarOp::constant, FusedReduce::sum, 0},  // %7 = row_sum(p), the old p
              FusedInstr{ScalarOp::mul, FusedReduce::none, 1, 7}};  // %8 = m * %7: an output of its own
    d.outputs = {{4, false, 1}, {6, false, 0}, {8, false}, {7, true}};
    return d;
  };
  ThreadPool pool(2);
  CpuJit streaming("", 0);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 1031}, {0, 5}, {4, 0}, {64, 33}}) {
    const FusedKernelDesc d = desc(rows, cols);
    Buffers ref = make_buffers(d, 3);
    ops::run_fused_reference(d, ref.in_ptrs.data(), ref.out_ptrs.data(), 0, rows);
    for (CpuJit* compiler : {&CpuJit::shared(), &streaming}) {
      EXPECT_EQ(compiler->ir(d).find("!nontemporal"), std::string::npos) << "an output over its input stores plainly";
      const FusedFn fn = compiler->compile(d);
      for (bool pieces : {false, true}) {
        Buffers got = make_buffers(d, 3);
        for (size_t o = 0; o < d.outputs.size(); ++o)
          if (d.outputs[o].over >= 0) got.out_ptrs[o] = got.in[static_cast<size_t>(d.outputs[o].over)].data();
        if (!pieces) {
          run_fused(fn, d, got.in_ptrs.data(), got.out_ptrs.data(), pool);
        } else {
          fn(got.in_ptrs.data(), got.out_ptrs.data(), 0, rows / 2, 0, cols);
          fn(got.in_ptrs.data(), got.out_ptrs.data(), rows / 2, rows, 0, cols);
        }
        const std::string what = "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]" +
                                 (compiler == &streaming ? " streamed" : "") + (pieces ? " in pieces" : "");
        for (size_t o = 0; o < d.outputs.size(); ++o) {
          const float* g = got.out_ptrs[o];
          double scale = 0;  // as in check(): a row sum's rounding is relative to its terms
          for (int64_t i = 0; i < d.output_numel(o); ++i) scale = std::max(scale, std::fabs(double(ref.out[o][static_cast<size_t>(i)])));
          for (int64_t i = 0; i < d.output_numel(o); ++i) {
            const double want = ref.out[o][static_cast<size_t>(i)];
            ASSERT_NEAR(g[i], want, 1e-5 * std::max(std::fabs(want), 0.05 * scale) + 1e-6)
                << what << " output " << o << " [" << i << "]";
          }
        }
        // What no output overwrites is left alone.
        EXPECT_EQ(got.in[2], ref.in[2]) << what;
        EXPECT_EQ(got.in[3], ref.in[3]) << what;
      }
    }
  }
  // Only a whole input of a per-element output can be written over, once.
  FusedKernelDesc bad = desc(2, 3);
  bad.outputs[2].over = 2;
  EXPECT_THROW(bad.validate(), Error);
  bad = desc(2, 3);
  bad.outputs[3].over = 3;
  EXPECT_THROW(bad.validate(), Error);
  bad = desc(2, 3);
  bad.outputs[2].over = 1;
  EXPECT_THROW(bad.validate(), Error);
}

TEST(CpuJit, TheMemoryCacheServesAnIdenticalKernel) {
  const FusedKernelDesc d = softmax_desc(4, 9);
  const FusedFn a = CpuJit::shared().compile(d);
  const auto before = CpuJit::shared().stats();
  EXPECT_EQ(CpuJit::shared().compile(d), a);
  EXPECT_EQ(CpuJit::shared().stats().compiled, before.compiled);
  EXPECT_EQ(CpuJit::shared().stats().memory_hits, before.memory_hits + 1);
  EXPECT_NE(CpuJit::shared().compile(softmax_desc(4, 10)), a);  // another shape: another kernel
  EXPECT_THAT(CpuJit::shared().ir(d), ::testing::HasSubstr("define void @tessel_fused"));
  EXPECT_FALSE(CpuJit::shared().host_cpu().empty());
}

std::filesystem::path fresh_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("tessel_cpu_jit_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(CpuJit, TheDiskCacheSurvivesTheProcessAndACorruptEntry) {
  const auto dir = fresh_dir("disk");
  const FusedKernelDesc d = layer_norm_desc(6, 37);
  {
    CpuJit jit(dir.string());
    jit.compile(d);
    EXPECT_EQ(jit.stats().compiled, 1);
    EXPECT_EQ(jit.stats().disk_hits, 0);
  }
  std::vector<std::filesystem::path> entries;
  for (auto& e : std::filesystem::directory_iterator(dir)) entries.push_back(e.path());
  ASSERT_EQ(entries.size(), 1u) << "one entry, no temporary files";
  {
    CpuJit jit(dir.string());  // a new process, as far as caches go
    const FusedFn fn = jit.compile(d);
    EXPECT_EQ(jit.stats().compiled, 0);
    EXPECT_EQ(jit.stats().disk_hits, 1);
    Buffers got = make_buffers(d, 9), ref = make_buffers(d, 9);
    fn(got.in_ptrs.data(), got.out_ptrs.data(), 0, d.rows, 0, d.cols);
    ops::run_fused_reference(d, ref.in_ptrs.data(), ref.out_ptrs.data(), 0, d.rows);
    for (size_t i = 0; i < ref.out[0].size(); ++i) EXPECT_NEAR(got.out[0][i], ref.out[0][i], 1e-5);
  }
  // Flip a byte in the middle of the object: the checksum catches it and the kernel is
  // compiled again (and the entry rewritten).
  {
    std::fstream f(entries[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(200);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(200);
    f.write(&c, 1);
  }
  {
    CpuJit jit(dir.string());
    jit.compile(d);
    EXPECT_EQ(jit.stats().compiled, 1);
    EXPECT_EQ(jit.stats().disk_hits, 0);
  }
  std::filesystem::resize_file(entries[0], 30);  // truncated
  {
    CpuJit jit(dir.string());
    jit.compile(d);
    EXPECT_EQ(jit.stats().compiled, 1);
  }
  {
    CpuJit jit(dir.string());
    jit.compile(d);
    EXPECT_EQ(jit.stats().disk_hits, 1) << "the rewritten entry is good";
  }
  std::filesystem::remove_all(dir);
}

TEST(CpuJit, ConcurrentWritersLeaveWholeEntries) {
  const auto dir = fresh_dir("concurrent");
  std::vector<std::thread> ts;
  std::atomic<int> failures{0};
  std::mutex mu;
  std::string errors;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      try {
        CpuJit jit(dir.string());  // four JITs made at once, one directory: as four processes would
        for (int64_t cols : {3, 5, 8, 13}) {
          const FusedKernelDesc d = softmax_desc(2, cols);
          const FusedFn fn = jit.compile(d);
          Buffers got = make_buffers(d, 1), ref = make_buffers(d, 1);
          fn(got.in_ptrs.data(), got.out_ptrs.data(), 0, d.rows, 0, d.cols);
          ops::run_fused_reference(d, ref.in_ptrs.data(), ref.out_ptrs.data(), 0, d.rows);
          for (size_t i = 0; i < ref.out[0].size(); ++i)
            if (std::fabs(got.out[0][i] - ref.out[0][i]) > 1e-5) ++failures;
        }
      } catch (const std::exception& e) {
        std::lock_guard lk(mu);
        errors += "thread " + std::to_string(t) + ": " + e.what() + "\n";
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors, "");
  EXPECT_EQ(failures.load(), 0);
  int entries = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(e.path().extension(), ".o") << e.path();
    ++entries;
  }
  EXPECT_EQ(entries, 4);
  CpuJit reader(dir.string());
  for (int64_t cols : {3, 5, 8, 13}) reader.compile(softmax_desc(2, cols));
  EXPECT_EQ(reader.stats().disk_hits, 4);
  std::filesystem::remove_all(dir);
}

TEST(CpuJit, AMalformedDescriptionIsAnError) {
  FusedKernelDesc d = softmax_desc(2, 3);
  d.code[2].b = 7;  // a later instruction
  EXPECT_THROW(CpuJit::shared().compile(d), Error);
  d = softmax_desc(2, 3);
  d.outputs[0].row = true;  // a per-element value written per row
  EXPECT_THROW(CpuJit::shared().compile(d), Error);
}

}  // namespace
}  // namespace tessel::runtime
