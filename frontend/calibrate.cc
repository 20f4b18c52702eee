#include "frontend/calibrate.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "frontend/tensor.h"
#include "graph/error.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "planner/partition.h"
#include "runtime/cpu_kernels.h"
#include "runtime/executor.h"
#include "runtime/gloo_comm.h"
#include "runtime/inprocess_comm.h"
#include "runtime/thread_pool.h"

namespace tessel {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The median time of fn over at least 3 runs and min_time_s, after one run not counted.
template <class F>
double median_time(double min_time_s, F&& fn) {
  fn();
  std::vector<double> t;
  const auto start = Clock::now();
  while (t.size() < 3 || (seconds_since(start) < min_time_s && t.size() < 1000)) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(seconds_since(t0));
  }
  std::nth_element(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(t.size() / 2), t.end());
  return t[t.size() / 2];
}

// The thread counts measured: 1, 2, 4, ... and all of them.
std::vector<int> thread_counts(int all) {
  std::vector<int> v;
  for (int t = 1; t < all; t *= 2) v.push_back(t);
  v.push_back(all);
  return v;
}

struct Shape4 {
  int64_t m, n, k, batch;
};

// The shape classes of the models tessel builds, at the sizes its examples and benchmarks run.
const Shape4 kGemms[] = {
    {1024, 1024, 1024, 1},  // large square
    {256, 1024, 784, 1},    // an MLP's first layer at batch 256
    {256, 1024, 1024, 1},   // its hidden layer
    {1024, 1024, 256, 1},   // that layer's weight gradient (k = the batch)
    {256, 10, 1024, 1},     // a classifier head: few columns
    {128, 1024, 1024, 1},   // the hidden layer's data-parallel slice on 2
    {64, 1024, 1024, 1},    // ... on 4
    {256, 256, 1024, 1},    // its tensor-parallel slice on 4
    {4096, 256, 256, 1},    // a transformer's projection: 32 x 128 tokens, d_model 256
    {4096, 1024, 256, 1},   // its MLP up-projection
    {4096, 256, 1024, 1},   // and down-projection
    {128, 128, 64, 128},    // attention scores: 32 sequences x 4 heads of 128 x 64
    {128, 64, 128, 128},    // attention times values
    {64, 64, 64, 1},        // tiny
    {64, 1024, 784, 1},     // a microbatch of 64 through the MLP's first layer
    {784, 1024, 64, 1},     // and its weight gradient: a short k
    {1024, 1024, 64, 1},    // the hidden layer's
    {32, 1024, 1024, 1},    // a pipeline's microbatch of 32 through the hidden layer
    {1024, 1024, 32, 1},    // and its weight gradient: k = 32
};

// Every shape class's product on `threads` threads, the classes taken in turn (each call
// finds the caches as another product left them, as in a step, not warm from its own last
// call), until each has run min_time_s and at least 3 times; the median rate of each.
std::vector<double> gemm_rates(int threads, double min_time_s) {
  struct Product {
    std::unique_ptr<Model> model;
    const Node* node = nullptr;
    KernelFn fn = nullptr;
    std::vector<float> a, b, c;
    Shape sa, sb, sc;
    double flops = 0;
    std::vector<double> t;
    double spent = 0;
  };
  std::vector<Product> ps;
  for (const Shape4& s : kGemms) {
    Product p;
    p.model = std::make_unique<Model>();
    ops::Emitter e = p.model->emit(SourceLoc::current());
    p.sa = s.batch > 1 ? Shape{s.batch, s.m, s.k} : Shape{s.m, s.k};
    p.sb = s.batch > 1 ? Shape{s.batch, s.k, s.n} : Shape{s.k, s.n};
    const Value a = e.input("a", DType::f32, p.sa), b = e.input("b", DType::f32, p.sb, {}, -1);
    const Value c = e.matmul(a, b);
    p.node = &p.model->graph().node(c.node);
    p.fn = runtime::cpu_kernel_for(*p.node, true);
    p.sc = p.node->outputs[0].shape;
    p.a.assign(static_cast<size_t>(s.batch * s.m * s.k), 0.5f);
    p.b.assign(static_cast<size_t>(s.batch * s.k * s.n), 0.25f);
    p.c.assign(static_cast<size_t>(s.batch * s.m * s.n), 0.0f);
    p.flops = 2.0 * static_cast<double>(s.batch * s.m * s.n * s.k);
    ps.push_back(std::move(p));
  }
  runtime::ThreadPool pool(threads);
  const KernelCtx ctx{&pool, 0, {}};
  auto call = [&](Product& p) {
    const TensorRef in[2] = {TensorRef{p.a.data(), DType::f32, p.sa, static_cast<int64_t>(p.a.size())},
                             TensorRef{p.b.data(), DType::f32, p.sb, static_cast<int64_t>(p.b.size())}};
    const TensorRef out[1] = {TensorRef{p.c.data(), DType::f32, p.sc, static_cast<int64_t>(p.c.size())}};
    const auto t0 = Clock::now();
    p.fn(*p.node, std::span<const TensorRef>(in, 2), std::span<const TensorRef>(out, 1), ctx);
    return seconds_since(t0);
  };
  for (Product& p : ps) call(p);  // not counted
  for (bool more = true; more;) {
    more = false;
    for (Product& p : ps) {
      if (p.t.size() >= 3 && (p.spent >= min_time_s || p.t.size() >= 1000)) continue;
      more = true;
      p.t.push_back(call(p));
      p.spent += p.t.back();
    }
  }
  std::vector<double> rates;
  for (Product& p : ps) {
    std::nth_element(p.t.begin(), p.t.begin() + static_cast<std::ptrdiff_t>(p.t.size() / 2), p.t.end());
    rates.push_back(p.flops / p.t[p.t.size() / 2]);
  }
  return rates;
}

// A fused elementwise update written over its variable (w = 0.999 w + x), as the optimizers'
// are: it reads w and x and writes w, n floats each (the default: 32 MiB, well past the caches).
double stream_bandwidth(int threads, double min_time_s, int64_t n = int64_t{8} << 20) {
  Model model;
  ops::Emitter e = model.emit(SourceLoc::current());
  const Value w = e.state("w", {n}, DType::f32, 1.0);
  const Value x = e.input("x", DType::f32, {n}, {}, -1);
  model.graph().add_update(w.node, e.add(e.mul(w, 0.999), x), "train");
  runtime::ThreadPool pool(threads);
  runtime::ExecutorOptions eo;
  eo.parallel = &pool;
  runtime::Executor ex(planner::one_device(model.graph(), {}, "train"), eo);
  ex.initialize();
  std::fill_n(ex.input("x").as<float>(), n, 1e-3f);
  const double t = median_time(min_time_s, [&] { ex.step(); });
  const double passes = ex.jit_report().updates_in_place == 1 ? 3 : 5;  // + a copy back when not in place
  return passes * 4.0 * static_cast<double>(n) / t;
}

// The runtime's kernels other than matrix products (norms, softmax, activations, transposes,
// bias and residual adds, reductions, gathers, as the JIT fuses them) in the training step of
// reference transformer layers, on `threads` threads: by size class (bytes one call reads and
// writes, in factors of 4), the bytes of the class's calls over their time. The fused update
// above runs alone over and over on its own buffers; a layer's kernels find their inputs where
// the ops before left them, and many are not limited by memory at all (tanh, exp, strided
// transposes, column sums). Two layers: one of the step-time benchmark's transformer and a small
// one, so that the classes span both. The optimizer's update is left out (the planner prices
// it from memory bandwidth), and so are views.
std::vector<std::pair<double, double>> layer_kernel_rates(int threads, double min_time_s) {
  struct Class {
    double moved = 0, seconds = 0, log_bytes = 0, calls = 0;  // bytes moved, their time; sum of log bytes per call
  };
  std::map<int, Class> by_class;  // by floor(log4(bytes per call))
  for (const char* spec : {"gpt:layers=1,d_model=256,heads=4,seq=128,vocab=256", "gpt:layers=1,d_model=64,heads=2,seq=64,vocab=256"}) {
    models::Built b = models::from_spec(spec, 8, true);
    OptimizerConfig oc;
    oc.kind = "adamw";
    add_training(b.model->graph(), "loss", oc);
    runtime::ThreadPool pool(threads);
    runtime::ExecutorOptions eo;
    eo.parallel = &pool;
    eo.profile = true;
    runtime::Executor ex(planner::one_device(b.model->graph()), eo);
    ex.initialize();
    for (const std::string& name : b.inputs) {
      const TensorRef t = ex.input(name);
      std::memset(t.data, 0, static_cast<size_t>(t.bytes()));  // token 0, label 0: valid everywhere
    }
    ex.step();  // not counted: the first step touches every buffer for the first time
    std::map<std::string, runtime::Executor::NodeTime> before;
    for (auto& n : ex.node_profile()) before[n.node] = n;
    const auto t0 = Clock::now();
    for (int i = 0; i < 3 || seconds_since(t0) < min_time_s / 2; ++i) ex.step();
    for (const auto& n : ex.node_profile()) {
      const OpDef* def = ops::registry().find(n.op);
      if (n.op == "matmul" || n.node.rfind("optimizer/", 0) == 0 || (def && def->view) || n.bytes <= 0) continue;
      const auto was = before.find(n.node);
      const double calls = static_cast<double>(n.calls - (was == before.end() ? 0 : was->second.calls));
      const double s = (n.ms - (was == before.end() ? 0 : was->second.ms)) / 1e3;
      if (calls <= 0 || s <= 0) continue;
      Class& c = by_class[static_cast<int>(std::floor(std::log(n.bytes) / std::log(4.0)))];
      c.moved += calls * n.bytes;
      c.seconds += s;
      c.log_bytes += calls * std::log(n.bytes);
      c.calls += calls;
    }
  }
  std::vector<std::pair<double, double>> rates;
  for (const auto& [k, c] : by_class) rates.push_back({std::exp(c.log_bytes / c.calls), c.moved / c.seconds});
  if (rates.empty()) throw Error("calibrating a layer's kernels: the reference layers ran none");
  return rates;
}

double openblas_rate(int threads, double min_time_s) {
  constexpr int64_t n = 1024;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  const double t = median_time(min_time_s, [&] { runtime::reference_sgemm(threads, n, a.data(), b.data(), c.data()); });
  return 2.0 * n * n * n / t;
}

double memcpy_bandwidth(double min_time_s) {
  constexpr size_t bytes = size_t{128} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  const double t = median_time(min_time_s, [&] { std::memcpy(b.data(), a.data(), bytes); });
  return static_cast<double>(bytes) / t;
}

// A chain of tiny ops on reference kernels: what remains per op is the executor's own work.
double dispatch_cost(double min_time_s) {
  constexpr int ops = 256;
  Model model;
  ops::Emitter e = model.emit(SourceLoc::current());
  Value v = e.input("x", DType::f32, {16}, {}, -1);
  for (int i = 0; i < ops; ++i) v = e.relu(v);
  model.graph().set_output("y", v);
  runtime::ExecutorOptions eo;
  eo.jit = false;
  runtime::Executor ex(planner::one_device(model.graph(), {"y"}, ""), eo);
  ex.initialize();
  return median_time(min_time_s, [&] { ex.step(); }) / ops;
}

// Every rank all-reduces `bytes` in place `reps` times; the seconds per call (the slowest rank).
double all_reduce_time(std::vector<runtime::Communicator*> comms, int64_t bytes, int reps) {
  const int64_t k = static_cast<int64_t>(comms.size());
  std::vector<int64_t> group(static_cast<size_t>(k));
  for (int64_t r = 0; r < k; ++r) group[static_cast<size_t>(r)] = r;
  std::vector<double> took(static_cast<size_t>(k));
  std::vector<std::string> err(static_cast<size_t>(k));
  std::vector<std::thread> threads;
  for (int64_t r = 0; r < k; ++r)
    threads.emplace_back([&, r] {
      try {
        const int64_t n = bytes / 4;
        std::vector<float> buf(static_cast<size_t>(n), 1.0f);
        const TensorRef t{buf.data(), DType::f32, std::span<const int64_t>(&n, 1), n};
        comms[static_cast<size_t>(r)]->all_reduce(t, t, runtime::ReduceOp::sum, group);  // not counted
        comms[static_cast<size_t>(r)]->barrier(group);
        const auto t0 = Clock::now();
        for (int i = 0; i < reps; ++i) comms[static_cast<size_t>(r)]->all_reduce(t, t, runtime::ReduceOp::sum, group);
        took[static_cast<size_t>(r)] = seconds_since(t0) / reps;
      } catch (const std::exception& e) {
        err[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : err)
    if (!e.empty()) throw Error("calibrating the all-reduce: " + e);
  return *std::max_element(took.begin(), took.end());
}

// Threads that keep `n` cores computing (small products, over and over) until destroyed: the
// load a training step puts on the cores while its collectives run.
class Load {
 public:
  explicit Load(int n) {
    for (int i = 0; i < n; ++i)
      threads_.emplace_back([this] {
        std::vector<float> a(64 * 64, 0.5f), c(64 * 64);
        while (!stop_.load(std::memory_order_relaxed))
          for (int r = 0; r < 64; ++r)
            for (int k = 0; k < 64; ++k)
              for (int j = 0; j < 64; ++j) c[r * 64 + j] += a[r * 64 + k] * a[k * 64 + j];
        sink_.fetch_add(static_cast<int64_t>(c[0]), std::memory_order_relaxed);
      });
  }
  ~Load() {
    stop_.store(true);
    for (auto& t : threads_) t.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> sink_{0};
  std::vector<std::thread> threads_;
};

// beta from the two large sizes' difference (where bandwidth rules), alpha what a small one
// costs beyond that: a least-squares intercept is at the mercy of the large sizes' noise.
// Each figure is the median of 5 runs of `reps` calls.
planner::HostCalibration::Collective fit_all_reduce(const std::string& engine, std::vector<runtime::Communicator*> comms) {
  auto time = [&](int64_t bytes, int reps) {
    std::vector<double> t;
    for (int i = 0; i < 5; ++i) t.push_back(all_reduce_time(comms, bytes, reps));
    std::nth_element(t.begin(), t.begin() + 2, t.end());
    return t[2];
  };
  const double small = time(4 << 10, 50), mid = time(4 << 20, 4), large = time(32 << 20, 2);
  const double beta = std::max((large - mid) / static_cast<double>((32 << 20) - (4 << 20)), 1e-15);
  const double alpha = std::max(small - beta * (4 << 10), 0.0);
  return {engine, static_cast<int64_t>(comms.size()), alpha, beta};
}

}  // namespace

planner::HostCalibration calibrate_host(const CalibrateOptions& opt) {
  const auto started = Clock::now();
  auto say = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };
  planner::HostCalibration h;
  const int all = opt.threads > 0 ? opt.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  h.threads = all;
  const std::vector<int> counts = thread_counts(all);

  for (int t : counts) {
    say("matrix products on " + std::to_string(t) + (t == 1 ? " thread" : " threads"));
    const std::vector<double> rates = gemm_rates(t, 2 * opt.min_time_s);
    for (size_t i = 0; i < std::size(kGemms); ++i) {
      const Shape4& s = kGemms[i];
      h.gemm.push_back({s.m, s.n, s.k, s.batch, t, rates[i]});
    }
  }
  say("OpenBLAS's own SGEMM, for reference");
  for (int t = 1; t <= all; ++t) h.openblas_sgemm.push_back(openblas_rate(t, opt.min_time_s));
  say("fused elementwise kernels and memcpy");
  for (int t = 1; t <= all; ++t) h.stream_bandwidth.push_back(stream_bandwidth(t, opt.min_time_s));
  // By working set, from the caches out: 64 KiB, 512 KiB, 4 MiB, 32 MiB per tensor.
  for (int t : counts)
    for (int64_t n : {int64_t{16} << 10, int64_t{128} << 10, int64_t{1} << 20, int64_t{8} << 20})
      h.streams.push_back({3 * 4 * n, t, n == (int64_t{8} << 20) ? h.stream_bandwidth[static_cast<size_t>(t - 1)]
                                                                  : stream_bandwidth(t, opt.min_time_s / 2, n)});
  h.memcpy_bandwidth = memcpy_bandwidth(opt.min_time_s);
  say("a transformer layer's kernels other than products");
  for (int t : counts)
    for (auto [bytes, rate] : layer_kernel_rates(t, opt.min_time_s))
      h.layer_kernels.push_back({std::max<int64_t>(1, std::llround(bytes)), t, rate});
  say("the executor's dispatch cost");
  h.dispatch_s = dispatch_cost(opt.min_time_s);

  std::vector<int64_t> ranks;
  for (int64_t k = 2; k <= std::max(2, 2 * all) && k <= 8; k *= 2) ranks.push_back(k);
  for (int64_t k : ranks) {
    say("the in-process all-reduce on " + std::to_string(k) + " ranks, idle cores and busy ones");
    runtime::InProcessWorld world(k);
    std::vector<runtime::Communicator*> comms;
    for (int64_t r = 0; r < k; ++r) comms.push_back(&world.rank(r));
    h.all_reduce.push_back(fit_all_reduce("inprocess", comms));
    // As in a training step: while the collective runs, the other ranks' kernels hold the cores
    // (one compute thread per core), and its threads wait their turn to be woken.
    Load load(all);
    auto busy = fit_all_reduce("inprocess-loaded", comms);
    h.all_reduce.push_back(busy);
  }
  if (opt.gloo) {
    say("Gloo's all-reduce over loopback on 2 ranks");
    auto rdv = runtime::gloo_memory_rendezvous();
    runtime::GlooOptions go;
    go.timeout_s = 60;
    std::vector<std::unique_ptr<runtime::Communicator>> owned(2);
    std::vector<std::string> err(2);
    std::vector<std::thread> makers;
    for (int64_t r = 0; r < 2; ++r)
      makers.emplace_back([&, r] {
        try {
          owned[static_cast<size_t>(r)] = runtime::gloo_communicator(r, 2, rdv, go);
        } catch (const std::exception& e) {
          err[static_cast<size_t>(r)] = e.what();
        }
      });
    for (auto& t : makers) t.join();
    for (auto& e : err)
      if (!e.empty()) throw Error("connecting 2 Gloo ranks over loopback: " + e);
    h.all_reduce.push_back(fit_all_reduce("gloo", {owned[0].get(), owned[1].get()}));
  }
  const std::time_t now = std::time(nullptr);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  h.when = when;
  h.seconds = seconds_since(started);
  return h;
}

}  // namespace tessel
