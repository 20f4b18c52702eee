// Fused kernels against this machine's memcpy bandwidth, side by side in one run: bias +
// GELU over 64 MB, the AdamW update of 100M parameters, layer norm over [8192, 1024]. Each
// kernel is what the fusion pass makes of the graph the frontend builds (the real gelu op,
// add_training's AdamW, the Emitter's layer norm), compiled by the CPU JIT and run on a
// 2-thread pool; memcpy copies the same number of bytes (read + written) on 2 threads.
// The AdamW update writes the parameter and its moments over their variables, as the
// executors run it ("in_place": outputs written over inputs), and again into buffers of
// their own for comparison.
// Prints one JSON line per kernel with medians of `iters` runs and the ratio.
//
//   build/bench/fused_kernel_bench [iters]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "frontend/optim.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "runtime/cpu_jit.h"
#include "runtime/fusion.h"
#include "runtime/thread_pool.h"

using Clock = std::chrono::steady_clock;
using namespace tessel;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// n floats, 64-byte aligned, filled with v.
class Buffer {
 public:
  Buffer(int64_t n, float v)
      : p_(static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>((n * 4 + 63) / 64 * 64)))) {
    std::fill(p_.get(), p_.get() + n, v);
  }
  float* data() const { return p_.get(); }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> p_;
};

// The fused node of g (after the pass) that writes the most bytes.
runtime::FusedGraph fused(const Graph& g, const Node*& largest) {
  runtime::FusedGraph f = runtime::fuse(g);
  largest = nullptr;
  int64_t best = -1;
  for (const Node& n : f.graph.nodes()) {
    if (n.op != "fused") continue;
    int64_t bytes = 0;
    for (auto& t : n.outputs) bytes += t.bytes();
    if (bytes > best) best = bytes, largest = &n;
  }
  return f;
}

// in_place: updates of variables are written over them, as the executors run them
// (FusedOutput::over); else into buffers of their own.
void bench(const char* name, const Graph& g, int iters, runtime::ThreadPool& pool, bool in_place = true) {
  const Node* node = nullptr;
  const runtime::FusedGraph f = fused(g, node);
  ops::FusedKernelDesc d = ops::FusedKernelDesc::from_attrs(node->attrs);
  int over = 0;
  for (const Update& u : f.graph.updates())
    if (in_place && u.value.node == node->id) {
      const int k = runtime::update_over_input(f.graph, *node, d, u.value.index, u.variable);
      if (k >= 0) d.outputs[static_cast<size_t>(u.value.index)].over = k, ++over;
    }
  const auto c0 = Clock::now();
  const runtime::FusedFn fn = runtime::CpuJit::shared().compile(d);
  const double compile_s = seconds(c0);
  // Buffers 64-byte aligned, as the executors allocate them.
  std::vector<Buffer> in, out;
  int64_t bytes = 0;
  for (const Value& v : node->inputs) {
    const TensorType& t = f.graph.type(v);
    in.emplace_back(t.numel(), 0.25f);
    bytes += t.bytes();
  }
  for (const TensorType& t : node->outputs) {
    out.emplace_back(d.outputs[out.size()].over >= 0 ? 1 : t.numel(), 0.0f);
    bytes += t.bytes();
  }
  std::vector<const float*> ip;
  std::vector<float*> op;
  for (auto& v : in) ip.push_back(v.data());
  for (size_t o = 0; o < out.size(); ++o)
    op.push_back(d.outputs[o].over >= 0 ? in[static_cast<size_t>(d.outputs[o].over)].data() : out[o].data());
  // memcpy of bytes / 2 (each byte read once and written once), split over 2 threads.
  const size_t half = static_cast<size_t>(bytes / 2);
  Buffer src_buf(static_cast<int64_t>(half / 4 + 1), 1.0f), dst_buf(static_cast<int64_t>(half / 4 + 1), 0.0f);
  char* src = reinterpret_cast<char*>(src_buf.data());
  char* dst = reinterpret_cast<char*>(dst_buf.data());
  auto copy = [&] {
    std::thread t([&] { std::memcpy(dst + half / 2, src + half / 2, half - half / 2); });
    std::memcpy(dst, src, half / 2);
    t.join();
  };
  std::vector<double> k, c;
  for (int i = 0; i < iters + 1; ++i) {  // the first round warms caches and page tables
    auto t0 = Clock::now();
    runtime::run_fused(fn, d, ip.data(), op.data(), pool);
    const double tk = seconds(t0);
    t0 = Clock::now();
    copy();
    const double tc = seconds(t0);
    if (i) k.push_back(tk), c.push_back(tc);
  }
  const double kg = static_cast<double>(bytes) / median(k) / 1e9, cg = static_cast<double>(bytes) / median(c) / 1e9;
  std::printf("{\"kernel\":\"%s\",\"domain\":[%lld,%lld],\"inputs\":%zu,\"outputs\":%zu,\"in_place\":%d,\"bytes\":%lld,"
              "\"kernel_ms\":%.3f,\"kernel_gbs\":%.2f,\"memcpy_ms\":%.3f,\"memcpy_gbs\":%.2f,\"ratio\":%.3f,"
              "\"compile_s\":%.3f}\n",
              name, static_cast<long long>(d.rows), static_cast<long long>(d.cols), in.size(), out.size(), over,
              static_cast<long long>(bytes), median(k) * 1e3, kg, median(c) * 1e3, cg, kg / cg, compile_s);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 10;
  runtime::ThreadPool pool(2);
  {
    Graph g(ops::registry());
    ops::Emitter e(g, Origin::here());
    Value x = e.input("x", DType::f32, {16384, 1024}), b = e.input("b", DType::f32, {1024});
    g.set_output("y", e.gelu(e.add(x, b)));
    bench("bias_gelu", g, iters, pool);
  }
  {
    Graph g(ops::registry());
    ops::Emitter e(g, Origin::here());
    Value x = e.input("x", DType::f32, {8192, 1024});
    Value gamma = e.input("gamma", DType::f32, {1024}), beta = e.input("beta", DType::f32, {1024});
    g.set_output("y", e.layer_norm(x, gamma, beta));
    bench("layer_norm", g, iters, pool);
  }
  {  // the GPT's attention probabilities: masked scores, softmax over the last axis
    Graph g(ops::registry());
    ops::Emitter e(g, Origin::here());
    Value x = e.input("x", DType::f32, {16, 4, 128, 128});
    g.set_output("y", e.softmax(x));
    bench("attention_softmax", g, iters, pool);
  }
  {
    const int64_t n = 100'000'000;
    Graph g(ops::registry());
    ops::Emitter e(g, Origin::here());
    Value w = e.parameter("w", {n}, ops::Init::zeros);
    Value x = e.input("x", DType::f32, {n});
    g.set_output("loss", e.sum(e.mul(w, x)));
    OptimizerConfig oc;
    oc.kind = "adamw";
    oc.weight_decay = 0.01;
    add_training(g, "loss", oc);
    bench("adamw_update", g, iters, pool);
    bench("adamw_update_separate_outputs", g, iters, pool, false);
  }
  std::printf("{\"cpu\":\"%s\"}\n", runtime::CpuJit::shared().host_cpu().substr(0, runtime::CpuJit::shared().host_cpu().find(' ')).c_str());
}
