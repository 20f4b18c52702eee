// Times tessel training steps (forward + backward + optimizer update) on synthetic inputs,
// for side-by-side comparison with a peer framework (bench/compare_step_time.py).
//   step_bench --model SPEC --batch N --optimizer sgd|adamw [--threads T] [--steps N]
// Prints one JSON line: {"model":..., "step_ms_median":..., "step_ms_min":..., ...}.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <random>
#include <string>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "runtime/executor.h"
#include "runtime/thread_pool.h"

using namespace tessel;

int main(int argc, char** argv) {
  std::string spec = "mlp:784-1024-1024-10", opt = "sgd";
  int64_t batch = 256, steps = 20, warmup = 3;
  int threads = 0;
  bool profile = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") spec = v;
    else if (k == "--batch") batch = std::stoll(v);
    else if (k == "--optimizer") opt = v;
    else if (k == "--threads") threads = std::stoi(v);
    else if (k == "--steps") steps = std::stoll(v);
    else if (k == "--warmup") warmup = std::stoll(v);
    else if (k == "--profile") profile = v == "1";
    else {
      std::cerr << "unknown option " << k << "\n";
      return 2;
    }
  }
  try {
    auto b = models::from_spec(spec, batch);
    OptimizerConfig c;
    c.kind = opt;
    c.lr = opt == "sgd" ? 0.05 : 3e-4;
    c.momentum = opt == "sgd" ? 0.9 : 0;
    add_training(b.model->graph(), "loss", c);
    runtime::ThreadPool pool(threads);
    runtime::ExecutorOptions eo;
    eo.parallel = &pool;
    eo.profile = profile;
    runtime::Executor ex(planner::one_device(b.model->graph()), eo);
    ex.initialize();
    std::mt19937 rng(1);
    for (auto& name : b.inputs) {
      TensorRef t = ex.input(name);
      if (t.dtype == DType::f32) {
        std::uniform_real_distribution<float> u(0, 1);
        for (int64_t i = 0; i < t.numel; ++i) t.as<float>()[i] = u(rng);
      } else {
        int64_t classes = name == "labels" ? b.logits.shape().back() : 256;
        for (int64_t i = 0; i < t.numel; ++i) t.as<int32_t>()[i] = static_cast<int32_t>(rng() % classes);
      }
    }
    std::vector<double> ms;
    for (int64_t s = 0; s < warmup + steps; ++s) {
      auto t0 = std::chrono::steady_clock::now();
      ex.step();
      auto t1 = std::chrono::steady_clock::now();
      if (s >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::cout << "{\"framework\":\"tessel\",\"model\":\"" << spec << "\",\"batch\":" << batch
              << ",\"threads\":" << pool.num_threads() << ",\"step_ms_median\":" << ms[ms.size() / 2]
              << ",\"step_ms_min\":" << ms.front() << ",\"loss\":" << ex.output("loss").as<float>()[0] << "}\n";
    if (profile) {
      const double n = static_cast<double>(warmup + steps);
      for (auto& t : ex.profile()) std::cerr << t.op << "  " << t.calls << " calls  " << t.ms / n << " ms/step\n";
      std::cerr << "largest nodes:\n";
      const auto nodes = ex.node_profile();
      for (size_t i = 0; i < std::min<size_t>(nodes.size(), 400); ++i)
        std::cerr << "  " << nodes[i].ms / n << " ms/step  " << nodes[i].op << " " << nodes[i].node << "  "
                  << nodes[i].shapes << "\n";
    }
  } catch (const Error& e) {
    std::cerr << "step_bench: " << e.what() << "\n";
    return 1;
  }
}
