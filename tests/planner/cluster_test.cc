// Cluster specs: preset figures against the datasheets, text round trips, the shipped example
// file, level_spanned, the local preset's formula, and an Error naming the bad part of every
// bad spec.
#include "planner/cluster.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <tuple>
#include <vector>

#include "graph/error.h"

namespace tessel::planner {
namespace {

// The message of the Error `f` throws ("" if it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("tessel_cluster_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++) +
              ".pbtxt"))
                .string();
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---- presets against the datasheets ------------------------------------------------------

TEST(ClusterPreset, A100MatchesDatasheet) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=1");
  EXPECT_EQ(c.name, "a100-80g:nodes=1");
  EXPECT_EQ(c.num_devices, 8);
  // NVIDIA A100 datasheet, A100 80GB SXM column; dense (no sparsity) Tensor Core rates.
  EXPECT_EQ(c.device.peak(DType::bf16), 312e12);
  EXPECT_EQ(c.device.peak(DType::f16), 312e12);
  EXPECT_EQ(c.device.peak(DType::f32), 19.5e12);
  EXPECT_EQ(c.device.peak(DType::f64), 19.5e12);   // FP64 Tensor Core
  EXPECT_EQ(c.device.memory_bandwidth, 2.039e12);  // HBM2e 2,039 GB/s
  EXPECT_EQ(c.device.memory_bytes, 80e9);
  ASSERT_EQ(c.levels.size(), 1u);  // one node: NVLink spans the cluster
  EXPECT_EQ(c.levels[0].name, "nvlink");
  EXPECT_EQ(c.levels[0].group_size, 8);
  EXPECT_EQ(c.levels[0].bandwidth, 600e9 / 2);  // NVLink 3: 600 GB/s both directions
  EXPECT_NE(c.source.find("A100"), std::string::npos);
  EXPECT_NO_THROW(validate(c));
}

TEST(ClusterPreset, A100NodesAndInfiniBand) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=4");
  EXPECT_EQ(c.name, "a100-80g:nodes=4,ib=200");
  EXPECT_EQ(c.num_devices, 32);
  ASSERT_EQ(c.levels.size(), 2u);
  EXPECT_EQ(c.levels[1].name, "infiniband");
  EXPECT_EQ(c.levels[1].group_size, 32);
  EXPECT_EQ(c.levels[1].bandwidth, 200e9 / 8);  // HDR 200 Gb/s per GPU
  EXPECT_GT(c.levels[1].latency_s, c.levels[0].latency_s);
  EXPECT_EQ(parse_cluster("a100-80g:nodes=4,ib=400").levels[1].bandwidth, 400e9 / 8);
  EXPECT_EQ(parse_cluster("a100-80g:ib=400,nodes=4").name, "a100-80g:nodes=4,ib=400");
  EXPECT_EQ(parse_cluster("a100-80g"), parse_cluster("a100-80g:nodes=1"));
}

TEST(ClusterPreset, H100MatchesDatasheet) {
  ClusterSpec c = parse_cluster("h100-80g:nodes=2");
  EXPECT_EQ(c.name, "h100-80g:nodes=2,ib=400");
  EXPECT_EQ(c.num_devices, 16);
  // NVIDIA H100 datasheet, H100 SXM: 1,979 TFLOPS BF16/FP16 with sparsity, half that dense.
  EXPECT_EQ(c.device.peak(DType::bf16), 989e12);
  EXPECT_EQ(c.device.peak(DType::f16), 989e12);
  EXPECT_EQ(c.device.peak(DType::f32), 67e12);
  EXPECT_EQ(c.device.peak(DType::f64), 67e12);    // FP64 Tensor Core
  EXPECT_EQ(c.device.memory_bandwidth, 3.35e12);  // HBM3
  EXPECT_EQ(c.device.memory_bytes, 80e9);
  ASSERT_EQ(c.levels.size(), 2u);
  EXPECT_EQ(c.levels[0].bandwidth, 900e9 / 2);  // NVLink 4: 900 GB/s both directions
  EXPECT_EQ(c.levels[1].bandwidth, 400e9 / 8);  // NDR 400 Gb/s per GPU
  EXPECT_EQ(parse_cluster("h100-80g:nodes=2,ib=200").levels[1].bandwidth, 200e9 / 8);
  EXPECT_NO_THROW(validate(c));
}

TEST(ClusterPreset, PeakNamesAMissingDtype) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=1");
  std::string e = error_of([&] { c.device.peak(DType::i32); });
  EXPECT_NE(e.find("i32"), std::string::npos) << e;
  EXPECT_NE(e.find("A100"), std::string::npos) << e;
}

TEST(ClusterPreset, Summary) {
  std::string s = parse_cluster("h100-80g:nodes=2").summary();
  for (const char* part : {"H100", "989 TFLOP/s", "nvlink", "infiniband", "50 GB/s", "80 GB"})
    EXPECT_NE(s.find(part), std::string::npos) << part << " not in\n" << s;
}

// ---- text round trips and the example file -----------------------------------------------

TEST(ClusterText, PresetsRoundTrip) {
  for (const char* spec : {"a100-80g:nodes=1", "a100-80g:nodes=3,ib=400", "h100-80g:nodes=2",
                           "h100-80g:nodes=16,ib=200", "local:1", "local:3"}) {
    SCOPED_TRACE(spec);
    ClusterSpec c = parse_cluster(spec);
    std::string text = cluster_to_text(c);
    TempFile f(text);
    ClusterSpec back = load_cluster_file(f.path());
    EXPECT_EQ(back, c);
    EXPECT_EQ(cluster_to_text(back), text);
    EXPECT_EQ(parse_cluster(f.path()), c);  // a path given where a preset could be
  }
}

TEST(ClusterText, ExampleFileIsTheOneNodePreset) {
  const std::string path = std::string(TESSEL_SOURCE_DIR) + "/planner/clusters/a100-80g-node.pbtxt";
  EXPECT_EQ(load_cluster_file(path), parse_cluster("a100-80g:nodes=1"));
  EXPECT_EQ(parse_cluster(path), parse_cluster("a100-80g:nodes=1"));
}

TEST(ClusterText, FileErrorsNameFileAndField) {
  const std::string good = cluster_to_text(parse_cluster("a100-80g:nodes=2"));
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  struct Case {
    std::string text, expect;
  };
  const std::vector<Case> cases = {
      {replaced("num_devices: 16", "num_devices: 16 gpus: 3"), "gpus"},  // unknown field
      {replaced("num_devices: 16", "num_devices: sixteen"), "Expected integer, got: sixteen"},
      {replaced("num_devices: 16\n", ""), "num_devices must be at least 1"},
      {replaced("key: \"bf16\"", "key: \"tf32\""), "unknown dtype 'tf32'"},
      {replaced("memory_bytes: 80000000000", "memory_bytes: 0"), "device.memory_bytes"},
      {replaced("bandwidth: 300000000000", "bandwidth: -3"), "levels[0] 'nvlink': bandwidth"},
      {replaced("latency_s: 2e-06", "latency_s: -1"), "levels[0] 'nvlink': latency_s"},
      {replaced("group_size: 8", "group_size: 12"), "levels[1] 'infiniband': group_size 16"},
      {replaced("group_size: 16", "group_size: 32"), "must equal num_devices 16"},
      {replaced("name: \"nvlink\"", "name: \"\""), "levels[0].name is empty"},
      {"", "name is empty"},
  };
  for (const Case& c : cases) {
    TempFile f(c.text);
    std::string e = error_of([&] { load_cluster_file(f.path()); });
    EXPECT_NE(e.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << e;
    EXPECT_EQ(e.rfind(f.path(), 0), 0u) << "should start with the path: " << e;
  }
  std::string e = error_of([] { load_cluster_file("/nonexistent/dir/c.pbtxt"); });
  EXPECT_NE(e.find("cannot read cluster file '/nonexistent/dir/c.pbtxt'"), std::string::npos) << e;
  e = error_of([] { parse_cluster("no-such-cluster.pbtxt"); });
  EXPECT_NE(e.find("cannot read cluster file"), std::string::npos) << e;
}

// ---- bad preset specs --------------------------------------------------------------------

TEST(ClusterSpecParse, BadSpecsNameTheBadPart) {
  struct Case {
    const char* spec;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"", {"empty cluster spec", "a100-80g:nodes=N", "h100-80g", "local:N", ".pbtxt"}},
      {"b200:nodes=1", {"unknown cluster preset 'b200'", "a100-80g:nodes=N", "local:N"}},
      {"A100-80G", {"unknown cluster preset 'A100-80G'"}},
      {"a100-80g:nodes=0", {"nodes must be at least 1 (got 0)"}},
      {"h100-80g:nodes=-2", {"nodes must be at least 1 (got -2)"}},
      {"a100-80g:nodes=two", {"nodes must be an integer (got 'two')"}},
      {"a100-80g:nodes=2x", {"nodes must be an integer (got '2x')"}},
      {"a100-80g:nodes=99999999999999999999", {"nodes must be an integer"}},
      {"a100-80g:nodes=2000000", {"nodes must be at most"}},
      {"a100-80g:gpus=8", {"unknown option 'gpus'", "valid: nodes, ib"}},
      {"a100-80g:ib=100", {"ib must be 200 (HDR) or 400 (NDR)", "got 100"}},
      {"h100-80g:nodes=2,ib=", {"ib must be an integer"}},
      {"a100-80g:nodes=1,nodes=2", {"option 'nodes' given twice"}},
      {"a100-80g:", {"option '' is not key=value"}},
      {"a100-80g:nodes", {"option 'nodes' is not key=value"}},
      {"a100-80g:nodes=2,", {"option '' is not key=value"}},
      {"local:0", {"local:N needs 1 <= N", "got 0"}},
      {"local:", {"device count N of local:N must be an integer"}},
      {"local:abc", {"must be an integer (got 'abc')"}},
      {"local:nodes=2", {"must be an integer (got 'nodes=2')"}},
  };
  for (const Case& c : cases) {
    std::string e = error_of([&] { parse_cluster(c.spec); });
    ASSERT_FALSE(e.empty()) << "'" << c.spec << "' was accepted";
    for (const std::string& part : c.expect)
      EXPECT_NE(e.find(part), std::string::npos) << "expected '" << part << "' in: " << e;
  }
}

TEST(ClusterValidate, ErrorsNameTheField) {
  const ClusterSpec good = parse_cluster("a100-80g:nodes=2");
  struct Case {
    std::function<void(ClusterSpec&)> edit;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {[](ClusterSpec& c) { c.name.clear(); }, "name is empty"},
      {[](ClusterSpec& c) { c.num_devices = 0; }, "num_devices must be at least 1 (got 0)"},
      {[](ClusterSpec& c) { c.device.name.clear(); }, "device.name is empty"},
      {[](ClusterSpec& c) { c.device.peak_flops.clear(); }, "device.peak_flops is empty"},
      {[](ClusterSpec& c) { c.device.peak_flops[DType::bf16] = 0; }, "device.peak_flops[bf16]"},
      {[](ClusterSpec& c) { c.device.peak_flops[DType::f32] = NAN; }, "device.peak_flops[f32]"},
      {[](ClusterSpec& c) { c.device.memory_bandwidth = INFINITY; }, "device.memory_bandwidth"},
      {[](ClusterSpec& c) { c.device.memory_bytes = -1; }, "device.memory_bytes"},
      {[](ClusterSpec& c) { c.device.launch_overhead_s = -1e-6; }, "device.launch_overhead_s"},
      {[](ClusterSpec& c) { c.levels.clear(); }, "levels is empty"},
      {[](ClusterSpec& c) { c.levels[1].name.clear(); }, "levels[1].name is empty"},
      {[](ClusterSpec& c) { c.levels[0].group_size = 0; }, "levels[0] 'nvlink': group_size must"},
      {[](ClusterSpec& c) { c.levels[1].bandwidth = 0; }, "levels[1] 'infiniband': bandwidth"},
      {[](ClusterSpec& c) { c.levels[0].latency_s = NAN; }, "levels[0] 'nvlink': latency_s"},
      {[](ClusterSpec& c) { c.levels[0].group_size = 16; },
       "levels[1] 'infiniband': group_size 16"},
      {[](ClusterSpec& c) { c.levels[0].group_size = 3; }, "larger multiple of levels[0]"},
      {[](ClusterSpec& c) { c.num_devices = 24; }, "must equal num_devices 24"},
  };
  for (const Case& c : cases) {
    ClusterSpec bad = good;
    c.edit(bad);
    std::string e = error_of([&] { validate(bad); });
    EXPECT_NE(e.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << e;
  }
}

// ---- level_spanned -----------------------------------------------------------------------

TEST(ClusterLevels, LevelSpanned) {
  ClusterSpec c = parse_cluster("a100-80g:nodes=2");
  std::vector<int64_t> node0 = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(c.level_spanned(node0), 0);
  EXPECT_EQ(c.level_spanned(std::vector<int64_t>{0, 8}), 1);
  EXPECT_EQ(c.level_spanned(std::vector<int64_t>{8, 15}), 0);
  EXPECT_EQ(c.level_spanned(std::vector<int64_t>{7, 8}), 1);
  EXPECT_EQ(c.level_spanned(std::vector<int64_t>{5}), -1);
  EXPECT_EQ(c.level_spanned(std::vector<int64_t>{5, 5}), -1);
  EXPECT_EQ(c.level_spanned({}), -1);
  std::string e = error_of([&] { c.level_spanned(std::vector<int64_t>{0, 16}); });
  EXPECT_NE(e.find("rank 16 is outside [0, 16)"), std::string::npos) << e;
  e = error_of([&] { c.level_spanned(std::vector<int64_t>{-1}); });
  EXPECT_NE(e.find("rank -1"), std::string::npos) << e;
}

// ---- local:N -----------------------------------------------------------------------------

HostInfo fake_host() {
  HostInfo h;
  h.logical_cpus = 8;
  h.threads_per_core = 2;
  h.clock_hz = 3e9;
  h.clock_measured = true;
  h.avx2 = true;
  h.fma = true;
  h.ram_bytes = 64e9;
  return h;
}

TEST(ClusterLocal, FormulaAndShares) {
  setenv("TESSEL_CALIBRATION", "off", 1);
  // 4 physical cores x (2 FMA pipes x 8 lanes x 2 FLOP) x 3 GHz = 384 GFLOP/s for the host.
  for (int64_t n : {1, 2, 3, 4, 7}) {
    SCOPED_TRACE(n);
    ClusterSpec c = local_cluster(n, fake_host());
    const double share = 1.0 / static_cast<double>(n);
    EXPECT_EQ(c.name, "local:" + std::to_string(n));
    EXPECT_EQ(c.num_devices, n);
    EXPECT_DOUBLE_EQ(c.device.peak(DType::f32), 384e9 * share);
    EXPECT_DOUBLE_EQ(c.device.peak(DType::bf16), 384e9 * share);
    EXPECT_DOUBLE_EQ(c.device.peak(DType::f64), 192e9 * share);
    EXPECT_DOUBLE_EQ(c.device.memory_bandwidth, 20e9 * share);
    EXPECT_DOUBLE_EQ(c.device.memory_bytes, 64e9 * share);
    ASSERT_EQ(c.levels.size(), 1u);
    EXPECT_EQ(c.levels[0].group_size, n);
    EXPECT_DOUBLE_EQ(c.levels[0].bandwidth, 20e9 / 2 * share);
    EXPECT_EQ(c.levels[0].latency_s, 5e-6);
    EXPECT_NE(c.source.find("3000 MHz"), std::string::npos) << c.source;
    EXPECT_NE(c.source.find("DEFAULT, not measured"), std::string::npos) << c.source;
    EXPECT_NO_THROW(validate(c));
  }
  HostInfo h = fake_host();
  h.avx512 = true;
  EXPECT_DOUBLE_EQ(local_cluster(1, h).device.peak(DType::f32), 768e9);
  h.avx512 = h.avx2 = h.fma = false;
  EXPECT_DOUBLE_EQ(local_cluster(1, h).device.peak(DType::f32), 4 * 8 * 3e9);
}

HostCalibration fake_calibration() {
  HostCalibration h;
  h.threads = 4;
  // One shape class at two sizes per thread count: 1 thread 50 / 100 GFLOP/s, 2 threads 90 /
  // 190, 4 threads 170 / 360.
  for (auto [t, small, big] : {std::tuple<int64_t, double, double>{1, 50e9, 100e9}, {2, 90e9, 190e9}, {4, 170e9, 360e9}}) {
    h.gemm.push_back({64, 64, 64, 1, t, small});
    h.gemm.push_back({1024, 1024, 1024, 1, t, big});
  }
  h.stream_bandwidth = {10e9, 18e9, 24e9, 26e9};
  h.memcpy_bandwidth = 8e9;
  h.dispatch_s = 2e-7;
  h.all_reduce = {{"inprocess", 2, 10e-6, 1 / 4e9}, {"inprocess", 4, 40e-6, 1 / 2e9}, {"gloo", 2, 100e-6, 1 / 1e9}};
  // A layer's other kernels: 1 thread 5 GB/s at 4 KB, 40 at 1 MB; 2 threads 8 and 60 (none at 4).
  h.layer_kernels = {{4096, 1, 5e9}, {1 << 20, 1, 40e9}, {4096, 2, 8e9}, {1 << 20, 2, 60e9}};
  h.when = "2026-12-07 12:00:00 UTC";
  h.seconds = 20;
  return h;
}

// local:N from a calibration: each rank gets max(1, T/N) kernel threads; its products run at the
// rates measured at that thread count; oversubscribed, T / threads of the devices compute at
// full speed at once (the simulator shares the cores between more), and each streams its
// threads' part of the busy threads' bandwidth (not 1/N of it: the sharing is the simulator's).
TEST(ClusterLocal, CalibratedDevicesAreTheMeasuredOnes) {
  const HostCalibration cal = fake_calibration();
  const double small = 2.0 * 64 * 64 * 64, big = 2.0 * 1024 * 1024 * 1024;
  struct Want {
    int64_t n;
    double share, small_rate, big_rate, stream, kernel_small, kernel_big;
  };
  for (const Want& w : {Want{1, 1, 170e9, 360e9, 26e9, 8e9, 60e9}, Want{2, 1, 90e9, 190e9, 26e9 / 2, 8e9, 60e9},
                        Want{4, 1, 50e9, 100e9, 26e9 / 4, 5e9, 40e9}, Want{8, 0.5, 50e9, 100e9, 26e9 / 4, 5e9, 40e9}}) {
    SCOPED_TRACE(w.n);
    const ClusterSpec c = local_cluster(w.n, fake_host(), cal);
    EXPECT_NO_THROW(validate(c));
    ASSERT_EQ(c.device.gemm_rates.size(), 2u);
    EXPECT_DOUBLE_EQ(c.device.gemm_rate(small), w.small_rate);
    EXPECT_DOUBLE_EQ(c.device.gemm_rate(big), w.big_rate);
    EXPECT_DOUBLE_EQ(c.device.gemm_rate(small / 10), w.small_rate);  // clamped at the ends
    EXPECT_DOUBLE_EQ(c.device.gemm_rate(big * 10), w.big_rate);
    // Halfway in log FLOPs, halfway in rate.
    EXPECT_NEAR(c.device.gemm_rate(std::sqrt(small * big)), (w.small_rate + w.big_rate) / 2, 1e-3 * w.big_rate);
    EXPECT_DOUBLE_EQ(c.device.peak(DType::f32), w.big_rate);
    // By shape: the nearest measured (in log m + log n + log k).
    ASSERT_EQ(c.device.gemm_shapes.size(), 2u);
    EXPECT_DOUBLE_EQ(c.device.gemm_rate(1000, 1100, 900), w.big_rate);
    EXPECT_DOUBLE_EQ(c.device.gemm_rate(70, 60, 64), w.small_rate);
    EXPECT_DOUBLE_EQ(c.device.gemm_rate(1024, 1024, 64), w.big_rate);  // nearer the large square than 64^3
    EXPECT_DOUBLE_EQ(c.device.memory_bandwidth, w.stream);
    // A layer's other kernels: the rates at the measured thread count closest from below (4
    // threads per device: the 2 threads' figures), by bytes per call, clamped at the ends.
    EXPECT_DOUBLE_EQ(c.device.kernel_rate(4096), w.kernel_small);
    EXPECT_DOUBLE_EQ(c.device.kernel_rate(1 << 20), w.kernel_big);
    EXPECT_DOUBLE_EQ(c.device.kernel_rate(1 << 30), w.kernel_big);
    EXPECT_NEAR(c.device.kernel_rate(65536), (w.kernel_small + w.kernel_big) / 2, 1e-6 * w.kernel_big);
    EXPECT_DOUBLE_EQ(c.device.launch_overhead_s, 2e-7);
    EXPECT_DOUBLE_EQ(c.concurrent_devices, w.share < 1 ? 4.0 : 0.0);
    EXPECT_NE(c.source.find("calibrated 2026-12-07"), std::string::npos) << c.source;
    EXPECT_EQ(c.calibration, cal);
    // The ring of the nearest measured in-process all-reduce reproduces it: 2(k-1) lat + 2(k-1)/k S / bw.
    if (w.n > 1) {
      const auto& ar = w.n == 2 ? cal.all_reduce[0] : cal.all_reduce[1];
      const double k = static_cast<double>(ar.ranks), S = 1e6;
      const LinkLevel& l = c.levels.at(0);
      EXPECT_NEAR(2 * (k - 1) * l.latency_s + 2 * (k - 1) / k * S / l.bandwidth, ar.alpha_s + ar.beta_s_per_byte * S, 1e-12);
    }
  }
  // The spec round-trips through its text with the calibration in it.
  const ClusterSpec c = local_cluster(2, fake_host(), cal);
  TempFile f(cluster_to_text(c));
  EXPECT_EQ(load_cluster_file(f.path()), c);
}

TEST(ClusterLocal, CalibrationErrorsNameTheField) {
  ClusterSpec c = local_cluster(2, fake_host(), fake_calibration());
  auto expect_error = [](ClusterSpec bad, const std::string& field) {
    try {
      validate(bad);
      ADD_FAILURE() << "no error for " << field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  ClusterSpec bad = c;
  bad.calibration.gemm[0].flops_per_s = 0;
  expect_error(bad, "calibration.gemm[0].flops_per_s");
  bad = c;
  bad.calibration.gemm[1].threads = 9;
  expect_error(bad, "calibration.gemm[1]");
  bad = c;
  bad.calibration.stream_bandwidth.clear();
  expect_error(bad, "calibration.stream_bandwidth");
  bad = c;
  bad.calibration.all_reduce[0].ranks = 1;
  expect_error(bad, "calibration.all_reduce[0].ranks");
  bad = c;
  bad.calibration.layer_kernels[2].threads = 5;
  expect_error(bad, "calibration.layer_kernels[2]");
  bad = c;
  bad.calibration.layer_kernels[1].bytes_per_s = -1;
  expect_error(bad, "calibration.layer_kernels[1].bytes_per_s");
  bad = c;
  std::swap(bad.device.kernel_rates[0], bad.device.kernel_rates[1]);
  expect_error(bad, "device.kernel_rates[1].bytes");
  bad = c;
  std::swap(bad.device.gemm_rates[0], bad.device.gemm_rates[1]);
  expect_error(bad, "device.gemm_rates[1].flops");
  // A calibration file that is not one names the file.
  const std::string path = std::filesystem::temp_directory_path() / ("tessel_cal_" + std::to_string(getpid()) + ".pbtxt");
  { std::ofstream(path) << cluster_to_text(local_cluster(2, fake_host())); }
  setenv("TESSEL_CALIBRATION", path.c_str(), 1);
  try {
    load_host_calibration();
    ADD_FAILURE() << "no error for a spec without calibration";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  { std::ofstream(path) << cluster_to_text(c); }
  EXPECT_EQ(load_host_calibration(), c.calibration);
  EXPECT_NE(parse_cluster("local:4").device.name.find("calibrated"), std::string::npos);
  setenv("TESSEL_CALIBRATION", "off", 1);
  EXPECT_TRUE(load_host_calibration().empty());
  std::filesystem::remove(path);
}

TEST(ClusterLocal, CpuInfo) {
  const std::string text =
      "processor\t: 0\ncpu MHz\t\t: 2445.406\nsiblings\t: 4\ncpu cores\t: 2\n"
      "flags\t\t: fpu sse2 avx avx2 fma avx512f\n\n"
      "processor\t: 1\ncpu MHz\t\t: 3000.000\nsiblings\t: 4\ncpu cores\t: 2\n"
      "flags\t\t: fpu sse2 avx avx2 fma avx512f\n";
  HostInfo h = host_info_from_cpuinfo(text, 4, 8e9);
  EXPECT_EQ(h.logical_cpus, 4);
  EXPECT_EQ(h.threads_per_core, 2);
  EXPECT_EQ(h.clock_hz, 3e9);
  EXPECT_TRUE(h.clock_measured);
  EXPECT_TRUE(h.avx2 && h.fma && h.avx512);
  EXPECT_EQ(h.ram_bytes, 8e9);

  // No clock (e.g. aarch64): the 2.5 GHz fallback, labelled as such in the source.
  HostInfo arm = host_info_from_cpuinfo("processor\t: 0\nFeatures\t: fp asimd\n", 0, 8e9);
  EXPECT_EQ(arm.logical_cpus, 1);
  EXPECT_FALSE(arm.clock_measured);
  EXPECT_EQ(arm.clock_hz, 2.5e9);
  EXPECT_FALSE(arm.avx2 || arm.fma || arm.avx512);
  ClusterSpec c = local_cluster(2, arm);
  EXPECT_NE(c.source.find("2.5 GHz ASSUMED"), std::string::npos) << c.source;
  EXPECT_NO_THROW(validate(c));
}

TEST(ClusterLocal, ThisMachine) {
  setenv("TESSEL_CALIBRATION", "off", 1);  // the estimated devices, whatever this machine has calibrated
  HostInfo h = detect_host();
  EXPECT_GE(h.logical_cpus, 1);
  EXPECT_GT(h.clock_hz, 0);
  EXPECT_GT(h.ram_bytes, 0);
  ClusterSpec one = parse_cluster("local:1"), four = parse_cluster("local:4");
  EXPECT_EQ(parse_cluster("local"), one);
  EXPECT_EQ(four.num_devices, 4);
  for (const ClusterSpec* c : {&one, &four}) {
    for (auto& [t, v] : c->device.peak_flops) EXPECT_GT(v, 0) << dtype_name(t);
    EXPECT_GT(c->device.memory_bytes, 0);
    EXPECT_GT(c->levels[0].bandwidth, 0);
  }
  // Fixed shares of fixed host figures (the clock may move between reads; RAM does not).
  EXPECT_DOUBLE_EQ(four.device.memory_bandwidth, one.device.memory_bandwidth / 4);
  EXPECT_DOUBLE_EQ(four.device.memory_bytes, one.device.memory_bytes / 4);
  EXPECT_DOUBLE_EQ(four.levels[0].bandwidth, one.levels[0].bandwidth / 4);
  EXPECT_LT(four.device.peak(DType::f32), one.device.peak(DType::f32));
}

}  // namespace
}  // namespace tessel::planner
