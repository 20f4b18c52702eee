#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "frontend/calibrate.h"
#include "frontend/cli/args.h"
#include "frontend/cli/commands.h"
#include "graph/error.h"
#include "graph/text.h"
#include "planner/cluster.h"

namespace tessel::cli {

namespace {

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

}  // namespace

int cmd_calibrate(int argc, char** argv) {
  Args args("calibrate",
            "Measure this host as tessel runs on it, in under a minute: matrix products of the shapes the\n"
            "models use (and their data- and tensor-parallel slices) at 1, 2, 4, ... and all threads, fused\n"
            "elementwise kernels by working set and thread count, the other kernels of two reference\n"
            "transformer layers' training steps (norms, softmax, activations, transposes, reductions) by\n"
            "size and thread count, memcpy, the executor's cost per op, the\n"
            "all-reduce of the in-process engine (2, 4, ... up to 8 ranks, on idle and on busy cores) and of\n"
            "Gloo over loopback. Writes a cluster spec (the whole host as one device, with the\n"
            "measurements) that `local:N` then derives its N simulated devices from, saying so in\n"
            "`tessel plan` and `tessel train`.",
            {{"--output", "FILE", "where to write the spec", "$TESSEL_CALIBRATION, else $XDG_CACHE_HOME/tessel/"
                                                              "calibration.pbtxt, else ~/.cache/tessel/calibration.pbtxt"},
             {"--threads", "N", "measure up to N threads", "all hardware threads", ints(1)},
             {"--no-gloo", "", "skip Gloo's all-reduce", ""},
             {"--format", "FMT", "text, or json: one line of JSON with every figure", "text"}});
  if (!args.parse(argc, argv)) return 0;
  const std::string format = args.str("--format", "text");
  if (format != "text" && format != "json") throw Error("tessel calibrate: --format must be text or json");
  const std::string path = args.has("--output") ? args.str("--output") : planner::calibration_file();
  if (path.empty())
    throw Error("tessel calibrate: no place for the calibration (TESSEL_CALIBRATION is off, or neither XDG_CACHE_HOME "
                "nor HOME is set): give --output FILE");

  CalibrateOptions o;
  o.threads = static_cast<int>(args.i64("--threads", 0));
  o.gloo = !args.has("--no-gloo");
  o.progress = [](const std::string& s) { std::cerr << "calibrate: " << s << "\n"; };
  const planner::HostCalibration h = calibrate_host(o);

  planner::ClusterSpec spec = planner::local_cluster(1, planner::detect_host(), h);
  spec.name = "local";
  planner::validate(spec);
  const std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  {
    const std::string tmp = path + ".partial";
    std::ofstream f(tmp);
    if (!(f << planner::cluster_to_text(spec)) || !f.flush()) throw Error("cannot write " + tmp);
    f.close();
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Error("cannot rename " + tmp + " to " + path);
  }

  if (format == "json") {
    std::ostringstream os;
    os << "{\"file\":" << json_quote(path) << ",\"seconds\":" << json_number(h.seconds) << ",\"threads\":" << h.threads
       << ",\"gemm\":[";
    for (size_t i = 0; i < h.gemm.size(); ++i) {
      const auto& g = h.gemm[i];
      os << (i ? "," : "") << "{\"m\":" << g.m << ",\"n\":" << g.n << ",\"k\":" << g.k << ",\"batch\":" << g.batch
         << ",\"threads\":" << g.threads << ",\"flops_per_s\":" << json_number(g.flops_per_s) << "}";
    }
    os << "],\"stream_bandwidth\":[";
    for (size_t i = 0; i < h.stream_bandwidth.size(); ++i) os << (i ? "," : "") << json_number(h.stream_bandwidth[i]);
    os << "],\"openblas_sgemm\":[";
    for (size_t i = 0; i < h.openblas_sgemm.size(); ++i) os << (i ? "," : "") << json_number(h.openblas_sgemm[i]);
    os << "],\"layer_kernels\":[";
    for (size_t i = 0; i < h.layer_kernels.size(); ++i)
      os << (i ? "," : "") << "{\"bytes\":" << h.layer_kernels[i].bytes << ",\"threads\":" << h.layer_kernels[i].threads
         << ",\"bytes_per_s\":" << json_number(h.layer_kernels[i].bytes_per_s) << "}";
    os << "],\"memcpy_bandwidth\":" << json_number(h.memcpy_bandwidth) << ",\"dispatch_s\":" << json_number(h.dispatch_s)
       << ",\"all_reduce\":[";
    for (size_t i = 0; i < h.all_reduce.size(); ++i) {
      const auto& a = h.all_reduce[i];
      os << (i ? "," : "") << "{\"engine\":" << json_quote(a.engine) << ",\"ranks\":" << a.ranks
         << ",\"alpha_s\":" << json_number(a.alpha_s) << ",\"beta_s_per_byte\":" << json_number(a.beta_s_per_byte) << "}";
    }
    os << "]}";
    std::cout << os.str() << std::endl;
    return 0;
  }
  std::cout << "matrix products (f32, GFLOP/s):\n  shape (m x n x k, batch)";
  std::vector<int64_t> counts;
  for (const auto& g : h.gemm)
    if (std::find(counts.begin(), counts.end(), g.threads) == counts.end()) counts.push_back(g.threads);
  for (int64_t t : counts) std::cout << fmt("%10.0f", static_cast<double>(t)) << (t == 1 ? " thread " : " threads");
  std::cout << "\n";
  const size_t per = h.gemm.size() / counts.size();
  for (size_t i = 0; i < per; ++i) {
    const auto& g = h.gemm[i];
    char b[64];
    std::snprintf(b, sizeof b, "  %lld x %lld x %lld%s", static_cast<long long>(g.m), static_cast<long long>(g.n),
                  static_cast<long long>(g.k), g.batch > 1 ? (", " + std::to_string(g.batch)).c_str() : "");
    std::cout << b << std::string(std::max<size_t>(2, 26 - std::string(b).size()), ' ');
    for (size_t c = 0; c < counts.size(); ++c) std::cout << fmt("%17.1f", h.gemm[c * per + i].flops_per_s / 1e9);
    std::cout << "\n";
  }
  std::cout << "OpenBLAS's own SGEMM 1024^3 (reference, GFLOP/s):";
  for (size_t t = 0; t < h.openblas_sgemm.size(); ++t)
    std::cout << " " << t + 1 << (t ? " threads " : " thread ") << fmt("%.1f", h.openblas_sgemm[t] / 1e9);
  std::cout << "\n";
  std::cout << "fused elementwise kernels (GB/s read + written):";
  for (size_t t = 0; t < h.stream_bandwidth.size(); ++t)
    std::cout << " " << t + 1 << (t ? " threads " : " thread ") << fmt("%.1f", h.stream_bandwidth[t] / 1e9) << (t + 1 < h.stream_bandwidth.size() ? "," : "");
  std::cout << "\na transformer layer's other kernels (norms, softmax, activations, transposes; GB/s read + written by "
               "bytes per call):";
  for (size_t i = 0; i < h.layer_kernels.size(); ++i) {
    const auto& k = h.layer_kernels[i];
    if (i == 0 || k.threads != h.layer_kernels[i - 1].threads)
      std::cout << "\n  " << k.threads << (k.threads > 1 ? " threads:" : " thread:");
    std::cout << " " << (k.bytes >= (1 << 20) ? fmt("%.1f MB", static_cast<double>(k.bytes) / (1 << 20)) : fmt("%.0f KB", static_cast<double>(k.bytes) / 1024))
              << " " << fmt("%.1f", k.bytes_per_s / 1e9);
  }
  std::cout << "\nmemcpy, one thread: " << fmt("%.2f", h.memcpy_bandwidth / 1e9) << " GB/s\n";
  std::cout << "the executor's cost per op: " << fmt("%.2f", h.dispatch_s * 1e6) << " us\n";
  for (const auto& a : h.all_reduce)
    std::cout << "all-reduce, " << a.engine << ", " << a.ranks << " ranks: " << fmt("%.1f", a.alpha_s * 1e6) << " us + "
              << fmt("%.2f", 1e-9 / a.beta_s_per_byte) << " GB/s\n";
  std::cout << "took " << fmt("%.1f", h.seconds) << " s; wrote " << path
            << (path == planner::calibration_file() ? " (local:N uses it from now on)\n"
                                                     : " (give it as --cluster FILE, or set TESSEL_CALIBRATION to it for local:N)\n");
  return 0;
}

}  // namespace tessel::cli
