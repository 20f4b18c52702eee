#include "planner/cluster.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "graph/error.h"
#include "planner/cluster.pb.h"

namespace tessel::planner {

namespace pb = google::protobuf;

namespace {

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// "312 TFLOP/s", "2.04 TB/s", "80 GB", "2 us": three significant digits, SI prefixes.
std::string si(double v, std::string_view unit) {
  static constexpr std::pair<double, const char*> kPrefixes[] = {
      {1e15, "P"}, {1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "k"}, {1, ""}};
  for (auto [scale, prefix] : kPrefixes) {
    if (std::abs(v) >= scale) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "%.3g %s%.*s", v / scale, prefix,
                    static_cast<int>(unit.size()), unit.data());
      return buf;
    }
  }
  return num(v) + " " + std::string(unit);
}

std::string seconds_str(double s) {
  char buf[32];
  if (s >= 1e-3 || s == 0)
    std::snprintf(buf, sizeof buf, "%.3g s", s);
  else if (s >= 1e-6)
    std::snprintf(buf, sizeof buf, "%.3g us", s * 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.3g ns", s * 1e9);
  return buf;
}

std::string known_dtypes() {
  std::string s;
  for (int i = 0; i < kNumDTypes; ++i) {
    if (i) s += ", ";
    s += dtype_name(static_cast<DType>(i));
  }
  return s;
}

// ---- presets ------------------------------------------------------------------------------
//
// Datasheet figures. "Dense" peaks: NVIDIA's tables list Tensor Core rates with 2:4 structured
// sparsity and note the dense rate is one half; tessel never runs sparse kernels.
//
// f32 uses the plain FP32 (CUDA core) rate, not TF32: TF32 rounds matmul inputs to a 10-bit
// mantissa, which changes results, so it is not what an f32 op means in tessel. f64 uses the
// FP64 Tensor Core rate: it is IEEE double and cuBLAS DGEMM uses it on both GPUs.

constexpr double kA100Bf16 = 312e12;   // A100 datasheet: BF16/FP16 Tensor Core 312 TFLOPS dense
constexpr double kA100F32 = 19.5e12;   // FP32 19.5 TFLOPS (TF32 Tensor Core: 156 dense)
constexpr double kA100F64 = 19.5e12;   // FP64 Tensor Core 19.5 TFLOPS (FP64 CUDA cores: 9.7)
constexpr double kA100Hbm = 2.039e12;  // A100 80GB SXM: HBM2e 2,039 GB/s
constexpr double kA100NvLink = 300e9;  // NVLink 3: 600 GB/s per GPU both directions together

constexpr double kH100Bf16 = 989e12;   // H100 SXM datasheet: 1,979 TFLOPS with sparsity
constexpr double kH100F32 = 67e12;     // FP32 67 TFLOPS (TF32 Tensor Core: 495 dense)
constexpr double kH100F64 = 67e12;     // FP64 Tensor Core 67 TFLOPS (FP64 CUDA cores: 34)
constexpr double kH100Hbm = 3.35e12;   // H100 SXM: HBM3 3.35 TB/s
constexpr double kH100NvLink = 450e9;  // NVLink 4: 900 GB/s per GPU both directions together

// Both SXM parts: "80GB". Decimal bytes: CUDA reports 85.2e9 usable on an A100-SXM4-80GB, so
// this leaves some room for the CUDA context and allocator fragmentation.
constexpr double kGpuMemory = 80e9;
// InfiniBand data rates per port, one HCA per GPU (DGX A100: 8 single-port ConnectX-6 for the
// compute fabric; DGX H100: 8 single-port ConnectX-7). Gb/s -> bytes/s per direction.
constexpr double kIbHdr = 200e9 / 8;  // HDR: 4 lanes x 50 Gb/s
constexpr double kIbNdr = 400e9 / 8;  // NDR: 4 lanes x 100 Gb/s
// Per-step latencies are not datasheet figures: they are of the order NCCL's own tuning model
// uses per ring step (src/graph/tuning.cc, hwLat: NVLink 0.5-3.4 us, network 2.7-9.6 us by
// protocol). Kernel launch overhead likewise an estimate. Calibration replaces all three.
constexpr double kNvLinkLatency = 2e-6;
constexpr double kIbLatency = 5e-6;
constexpr double kGpuLaunch = 5e-6;

constexpr int64_t kGpusPerNode = 8;
constexpr int64_t kMaxNodes = 1 << 20;
constexpr int64_t kMaxLocalDevices = 1 << 16;

// The local preset's memory bandwidth for the whole host, until calibration measures it:
// about what one DDR4-3200 channel (25.6 GB/s peak) sustains; low for a multi-channel server,
// which errs towards memory-bound estimates rather than optimistic ones.
constexpr double kLocalMemoryBandwidth = 20e9;
constexpr double kLocalLatency = 5e-6;  // a thread hand-off through a condition variable
constexpr double kLocalLaunch = 1e-6;   // the executor's per-op dispatch
constexpr double kFallbackClockHz = 2.5e9;

struct GpuPreset {
  const char* key;
  const char* device;
  double bf16, f32, f64, hbm, nvlink;
  int default_ib;
  const char* datasheet;
  double gemm_efficiency;  // measured large-GEMM fraction of the bf16 peak; 1 = not calibrated
};

constexpr GpuPreset kA100{
    "a100-80g",
    "NVIDIA A100-SXM4-80GB",
    kA100Bf16,
    kA100F32,
    kA100F64,
    kA100Hbm,
    kA100NvLink,
    200,
    "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), "
    "A100 80GB SXM: BF16/FP16 Tensor Core 312 TFLOP/s dense (624 sparse), FP32 19.5, TF32 156 "
    "dense (not used for f32), FP64 9.7 and FP64 Tensor Core 19.5 (used for f64), 80 GB HBM2e at "
    "2,039 GB/s, NVLink 600 GB/s = 300 GB/s per direction, any GPU pair through NVSwitch; "
    "figures checked against copies of the datasheet table (glennklockwood.com garden/A100, "
    "thundercompute.com A100 specs), not against the NVIDIA PDF itself; large-GEMM efficiency "
    "0.859: 267.9 of 312 TFLOP/s bf16 measured (maximum achievable matmul FLOPS table, "
    "stas00/ml-engineering compute/accelerator/README.md, CUDA 12.1)",
    0.859};
constexpr GpuPreset kH100{
    "h100-80g",
    "NVIDIA H100-SXM5-80GB",
    kH100Bf16,
    kH100F32,
    kH100F64,
    kH100Hbm,
    kH100NvLink,
    400,
    "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16/FP16 Tensor Core 1,979 TFLOP/s with "
    "sparsity = 989 dense (the datasheet: one-half lower without sparsity), FP32 67, TF32 989 "
    "sparse = 495 dense (not used for f32), FP64 34 and FP64 Tensor Core 67 (used for f64), 80 GB "
    "HBM3 at 3.35 TB/s, NVLink 900 GB/s = 450 GB/s per direction through NVSwitch; figures checked "
    "against copies of the datasheet table (hpctech.co.jp H100 page; glennklockwood.com "
    "garden/h100 gives the Hopper whitepaper figures 989.4 / 66.9 / 33.5), not against the NVIDIA "
    "PDF; large-GEMM efficiency not calibrated (1)",
    1.0};

ClusterSpec gpu_cluster(const GpuPreset& p, int64_t nodes, int ib_gbps) {
  ClusterSpec c;
  c.name = std::string(p.key) + ":nodes=" + std::to_string(nodes);
  if (nodes > 1) c.name += ",ib=" + std::to_string(ib_gbps);
  c.num_devices = nodes * kGpusPerNode;
  c.device.name = p.device;
  c.device.peak_flops = {
      {DType::bf16, p.bf16}, {DType::f16, p.bf16}, {DType::f32, p.f32}, {DType::f64, p.f64}};
  c.device.memory_bandwidth = p.hbm;
  c.device.memory_bytes = kGpuMemory;
  c.device.launch_overhead_s = kGpuLaunch;
  c.device.gemm_efficiency = p.gemm_efficiency;
  c.levels.push_back({"nvlink", kGpusPerNode, p.nvlink, kNvLinkLatency});
  // One node has no InfiniBand traffic: the NVLink level already spans the cluster.
  if (nodes > 1)
    c.levels.push_back({"infiniband", c.num_devices, ib_gbps == 400 ? kIbNdr : kIbHdr, kIbLatency});
  c.source =
      std::string(p.datasheet) +
      "; InfiniBand: one HCA per GPU as in DGX A100 / DGX H100 (eight single-port ConnectX-6 / "
      "ConnectX-7, docs.nvidia.com DGX BasePOD reference architecture for H100), HDR 200 Gb/s = "
      "25 GB/s or NDR 400 Gb/s = 50 GB/s per direction (InfiniBand Trade Association data rates: "
      "4 lanes of 50 / 100 Gb/s); per-step latencies (NVLink 2 us, InfiniBand 5 us) and the 5 us "
      "launch overhead are estimates of the order the NCCL tuning model uses, not datasheet "
      "figures; memory 80e9 bytes: the datasheet 80 GB, below the 85.2e9 CUDA reports";
  return c;
}

int64_t parse_int(std::string_view text, std::string_view what, const std::string& spec) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size())
    throw Error("cluster spec '" + spec + "': " + std::string(what) + " must be an integer (got '" +
                std::string(text) + "')");
  return v;
}

constexpr const char* kPresetHelp =
    "valid presets: a100-80g:nodes=N[,ib=200|400], h100-80g:nodes=N[,ib=400|200], local:N, or "
    "the path of a .pbtxt cluster file";

ClusterSpec parse_gpu_preset(const GpuPreset& p, std::string_view opts, bool has_opts,
                             const std::string& spec) {
  int64_t nodes = 1;
  int ib = p.default_ib;
  std::set<std::string> seen;
  if (has_opts) {
    size_t pos = 0;
    while (true) {
      size_t comma = opts.find(',', pos);
      std::string_view item =
          opts.substr(pos, comma == std::string_view::npos ? opts.npos : comma - pos);
      size_t eq = item.find('=');
      if (eq == std::string_view::npos)
        throw Error("cluster spec '" + spec + "': option '" + std::string(item) +
                    "' is not key=value (" + p.key + " takes nodes=N and ib=200|400)");
      std::string key(item.substr(0, eq));
      std::string_view value = item.substr(eq + 1);
      if (!seen.insert(key).second)
        throw Error("cluster spec '" + spec + "': option '" + key + "' given twice");
      if (key == "nodes") {
        nodes = parse_int(value, "nodes", spec);
        if (nodes < 1)
          throw Error("cluster spec '" + spec + "': nodes must be at least 1 (got " +
                      std::to_string(nodes) + ")");
        if (nodes > kMaxNodes)
          throw Error("cluster spec '" + spec + "': nodes must be at most " +
                      std::to_string(kMaxNodes) + " (got " + std::to_string(nodes) + ")");
      } else if (key == "ib") {
        int64_t v = parse_int(value, "ib", spec);
        if (v != 200 && v != 400)
          throw Error("cluster spec '" + spec + "': ib must be 200 (HDR) or 400 (NDR) Gb/s per " +
                      "GPU (got " + std::string(value) + ")");
        ib = static_cast<int>(v);
      } else {
        throw Error("cluster spec '" + spec + "': unknown option '" + key + "' for " + p.key +
                    " (valid: nodes, ib)");
      }
      if (comma == std::string_view::npos) break;
      pos = comma + 1;
    }
  }
  return gpu_cluster(p, nodes, ib);
}

bool looks_like_path(const std::string& spec) {
  if (spec.find('/') != std::string::npos) return true;
  if (spec.size() >= 6 && spec.ends_with(".pbtxt")) return true;
  std::error_code ec;
  return std::filesystem::is_regular_file(spec, ec);
}

// ---- proto conversion ---------------------------------------------------------------------

class FirstError : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!first.empty()) return;
    first = line < 0 ? message
                     : std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + message;
  }
  std::string first;
};

proto::ClusterSpecProto to_proto(const ClusterSpec& c) {
  proto::ClusterSpecProto p;
  p.set_name(c.name);
  p.set_num_devices(c.num_devices);
  auto* d = p.mutable_device();
  d->set_name(c.device.name);
  for (auto& [t, v] : c.device.peak_flops)
    (*d->mutable_peak_flops())[std::string(dtype_name(t))] = v;
  d->set_memory_bandwidth(c.device.memory_bandwidth);
  d->set_memory_bytes(c.device.memory_bytes);
  d->set_launch_overhead_s(c.device.launch_overhead_s);
  d->set_gemm_efficiency(c.device.gemm_efficiency);
  for (auto [f, r] : c.device.gemm_rates) {
    auto* g = d->add_gemm_rates();
    g->set_flops(f);
    g->set_flops_per_s(r);
  }
  for (const auto& g : c.device.gemm_shapes) {
    auto* s = d->add_gemm_shapes();
    s->set_m(g.m), s->set_n(g.n), s->set_k(g.k), s->set_flops_per_s(g.flops_per_s);
  }
  for (auto [b, r] : c.device.stream_rates) {
    auto* s = d->add_stream_rates();
    s->set_bytes(b);
    s->set_bytes_per_s(r);
  }
  for (auto [b, r] : c.device.kernel_rates) {
    auto* s = d->add_kernel_rates();
    s->set_bytes(b);
    s->set_bytes_per_s(r);
  }
  if (!c.calibration.empty()) {
    const HostCalibration& h = c.calibration;
    auto* pc = p.mutable_calibration();
    pc->set_threads(h.threads);
    for (const auto& g : h.gemm) {
      auto* pg = pc->add_gemm();
      pg->set_m(g.m), pg->set_n(g.n), pg->set_k(g.k), pg->set_batch(g.batch), pg->set_threads(g.threads);
      pg->set_flops_per_s(g.flops_per_s);
    }
    for (double b : h.stream_bandwidth) pc->add_stream_bandwidth(b);
    pc->set_memcpy_bandwidth(h.memcpy_bandwidth);
    pc->set_dispatch_s(h.dispatch_s);
    for (const auto& a : h.all_reduce) {
      auto* pa = pc->add_all_reduce();
      pa->set_engine(a.engine), pa->set_ranks(a.ranks), pa->set_alpha_s(a.alpha_s), pa->set_beta_s_per_byte(a.beta_s_per_byte);
    }
    pc->set_when(h.when);
    pc->set_seconds(h.seconds);
    for (double r : h.openblas_sgemm) pc->add_openblas_sgemm(r);
    for (const auto& s : h.streams) {
      auto* ps = pc->add_streams();
      ps->set_bytes(s.bytes), ps->set_threads(s.threads), ps->set_bytes_per_s(s.bytes_per_s);
    }
    for (const auto& s : h.layer_kernels) {
      auto* ps = pc->add_layer_kernels();
      ps->set_bytes(s.bytes), ps->set_threads(s.threads), ps->set_bytes_per_s(s.bytes_per_s);
    }
  }
  for (const LinkLevel& l : c.levels) {
    auto* pl = p.add_levels();
    pl->set_name(l.name);
    pl->set_group_size(l.group_size);
    pl->set_bandwidth(l.bandwidth);
    pl->set_latency_s(l.latency_s);
  }
  p.set_source(c.source);
  p.set_concurrent_devices(c.concurrent_devices);
  p.set_comm_wake_s(c.comm_wake_s);
  return p;
}

ClusterSpec from_proto(const proto::ClusterSpecProto& p) {
  ClusterSpec c;
  c.name = p.name();
  c.num_devices = p.num_devices();
  c.device.name = p.device().name();
  for (auto& [k, v] : p.device().peak_flops()) {
    auto t = parse_dtype(k);
    if (!t)
      throw Error("device.peak_flops: unknown dtype '" + k + "' (known: " + known_dtypes() + ")");
    c.device.peak_flops[*t] = v;
  }
  c.device.memory_bandwidth = p.device().memory_bandwidth();
  c.device.memory_bytes = p.device().memory_bytes();
  c.device.launch_overhead_s = p.device().launch_overhead_s();
  c.device.gemm_efficiency = p.device().gemm_efficiency() > 0 ? p.device().gemm_efficiency() : 1.0;
  for (auto& g : p.device().gemm_rates()) c.device.gemm_rates.push_back({g.flops(), g.flops_per_s()});
  for (auto& s : p.device().stream_rates()) c.device.stream_rates.push_back({s.bytes(), s.bytes_per_s()});
  for (auto& g : p.device().gemm_shapes()) c.device.gemm_shapes.push_back({g.m(), g.n(), g.k(), g.flops_per_s()});
  for (auto& s : p.device().kernel_rates()) c.device.kernel_rates.push_back({s.bytes(), s.bytes_per_s()});
  if (p.has_calibration()) {
    const auto& pc = p.calibration();
    HostCalibration& h = c.calibration;
    h.threads = pc.threads();
    for (auto& g : pc.gemm()) h.gemm.push_back({g.m(), g.n(), g.k(), g.batch(), g.threads(), g.flops_per_s()});
    h.stream_bandwidth.assign(pc.stream_bandwidth().begin(), pc.stream_bandwidth().end());
    h.memcpy_bandwidth = pc.memcpy_bandwidth();
    h.dispatch_s = pc.dispatch_s();
    for (auto& a : pc.all_reduce()) h.all_reduce.push_back({a.engine(), a.ranks(), a.alpha_s(), a.beta_s_per_byte()});
    h.when = pc.when();
    h.seconds = pc.seconds();
    h.openblas_sgemm.assign(pc.openblas_sgemm().begin(), pc.openblas_sgemm().end());
    for (auto& s : pc.streams()) h.streams.push_back({s.bytes(), s.threads(), s.bytes_per_s()});
    for (auto& s : pc.layer_kernels()) h.layer_kernels.push_back({s.bytes(), s.threads(), s.bytes_per_s()});
  }
  for (auto& l : p.levels())
    c.levels.push_back({l.name(), l.group_size(), l.bandwidth(), l.latency_s()});
  c.source = p.source();
  c.concurrent_devices = p.concurrent_devices();
  c.comm_wake_s = p.comm_wake_s();
  return c;
}

void check_positive(double v, const std::string& field, const std::string& where) {
  if (!(v > 0) || !std::isfinite(v))
    throw Error(where + field + " must be a positive finite number (got " + num(v) + ")");
}
void check_non_negative(double v, const std::string& field, const std::string& where) {
  if (!(v >= 0) || !std::isfinite(v))
    throw Error(where + field + " must be a finite number >= 0 (got " + num(v) + ")");
}
// (x, rate) points: both positive, x strictly ascending.
void check_rate_table(const std::vector<std::pair<double, double>>& pts, const std::string& field, const std::string& x,
                      const std::string& rate, const std::string& where) {
  for (size_t i = 0; i < pts.size(); ++i) {
    const std::string f = field + "[" + std::to_string(i) + "]";
    check_positive(pts[i].first, f + "." + x, where);
    check_positive(pts[i].second, f + "." + rate, where);
    if (i > 0 && !(pts[i].first > pts[i - 1].first))
      throw Error(where + f + "." + x + " must be larger than the one before (ascending)");
  }
}

}  // namespace

// ---- ClusterSpec --------------------------------------------------------------------------

double DeviceSpec::peak(DType t) const {
  auto it = peak_flops.find(t);
  if (it == peak_flops.end()) {
    std::string have;
    for (auto& [k, v] : peak_flops) have += (have.empty() ? "" : ", ") + std::string(dtype_name(k));
    throw Error("device '" + name + "' has no peak FLOP/s for dtype " + std::string(dtype_name(t)) +
                " (it has: " + (have.empty() ? "none" : have) + ")");
  }
  return it->second;
}

namespace {

// The rate at x from (x, rate) points ascending in x: linear in log x between them, clamped.
double log_interpolate(const std::vector<std::pair<double, double>>& pts, double x) {
  if (pts.empty()) return 0;
  if (x <= pts.front().first) return pts.front().second;
  if (x >= pts.back().first) return pts.back().second;
  for (size_t i = 1; i < pts.size(); ++i) {
    const auto [x1, r1] = pts[i];
    if (x > x1) continue;
    const auto [x0, r0] = pts[i - 1];
    const double t = x1 > x0 ? std::log(x / x0) / std::log(x1 / x0) : 1.0;
    return r0 + t * (r1 - r0);
  }
  return pts.back().second;
}

}  // namespace

double DeviceSpec::gemm_rate(double flops) const { return log_interpolate(gemm_rates, flops); }

double DeviceSpec::kernel_rate(double bytes) const {
  return kernel_rates.empty() ? stream_rate(bytes) : log_interpolate(kernel_rates, bytes);
}

double DeviceSpec::gemm_rate(double m, double n, double k) const {
  if (gemm_shapes.empty()) return gemm_rate(2 * m * n * k);
  double best = std::numeric_limits<double>::infinity(), rate = 0;
  for (const GemmShape& s : gemm_shapes) {
    const double d = std::fabs(std::log(std::max(m, 1.0) / static_cast<double>(s.m))) +
                     std::fabs(std::log(std::max(n, 1.0) / static_cast<double>(s.n))) +
                     std::fabs(std::log(std::max(k, 1.0) / static_cast<double>(s.k)));
    if (d < best) best = d, rate = s.flops_per_s;
  }
  return rate;
}

double DeviceSpec::stream_rate(double bytes) const {
  return stream_rates.empty() ? memory_bandwidth : log_interpolate(stream_rates, bytes);
}

int ClusterSpec::level_spanned(std::span<const int64_t> ranks) const {
  for (int64_t r : ranks)
    if (r < 0 || r >= num_devices)
      throw Error("cluster '" + name + "': rank " + std::to_string(r) + " is outside [0, " +
                  std::to_string(num_devices) + ")");
  if (levels.empty()) throw Error("cluster '" + name + "' has no link levels");
  bool distinct = false;
  for (int64_t r : ranks) distinct = distinct || r != ranks[0];
  if (!distinct) return -1;
  for (size_t l = 0; l < levels.size(); ++l) {
    const int64_t g = levels[l].group_size;
    bool same = true;
    for (int64_t r : ranks) same = same && r / g == ranks[0] / g;
    if (same) return static_cast<int>(l);
  }
  return static_cast<int>(levels.size()) - 1;  // only an invalid spec gets here
}

std::string ClusterSpec::summary() const {
  std::ostringstream o;
  o << name << ": " << num_devices << " x " << device.name << "\n  peak:";
  bool first = true;
  for (auto& [t, v] : device.peak_flops) {
    o << (first ? " " : ", ") << dtype_name(t) << " " << si(v, "FLOP/s");
    first = false;
  }
  o << "\n  device memory: " << si(device.memory_bytes, "B") << " at "
    << si(device.memory_bandwidth, "B/s") << "; launch overhead "
    << seconds_str(device.launch_overhead_s) << "\n";
  for (const LinkLevel& l : levels)
    o << "  link " << l.name << ": groups of " << l.group_size << ", " << si(l.bandwidth, "B/s")
      << " per device per direction, latency " << seconds_str(l.latency_s) << "\n";
  return o.str();
}

void validate(const ClusterSpec& c) {
  const std::string where = "cluster '" + c.name + "': ";
  if (c.name.empty()) throw Error("cluster spec: name is empty");
  if (c.num_devices < 1)
    throw Error(where + "num_devices must be at least 1 (got " + std::to_string(c.num_devices) +
                ")");
  if (c.device.name.empty()) throw Error(where + "device.name is empty");
  if (c.device.peak_flops.empty())
    throw Error(where + "device.peak_flops is empty: give at least one dtype's peak FLOP/s");
  for (auto& [t, v] : c.device.peak_flops)
    check_positive(v, "device.peak_flops[" + std::string(dtype_name(t)) + "]", where);
  check_positive(c.device.memory_bandwidth, "device.memory_bandwidth", where);
  check_non_negative(c.concurrent_devices, "concurrent_devices", where);
  check_non_negative(c.comm_wake_s, "comm_wake_s", where);
  check_rate_table(c.device.gemm_rates, "device.gemm_rates", "flops", "flops_per_s", where);
  for (size_t i = 0; i < c.device.gemm_shapes.size(); ++i) {
    const auto& g = c.device.gemm_shapes[i];
    const std::string f = "device.gemm_shapes[" + std::to_string(i) + "]";
    if (g.m < 1 || g.n < 1 || g.k < 1) throw Error(where + f + ": m, n and k must be >= 1");
    check_positive(g.flops_per_s, f + ".flops_per_s", where);
  }
  check_rate_table(c.device.stream_rates, "device.stream_rates", "bytes", "bytes_per_s", where);
  if (!c.calibration.empty()) {
    const HostCalibration& h = c.calibration;
    if (h.threads < 1) throw Error(where + "calibration.threads must be at least 1");
    for (size_t i = 0; i < h.gemm.size(); ++i) {
      const auto& g = h.gemm[i];
      const std::string f = "calibration.gemm[" + std::to_string(i) + "]";
      if (g.m < 1 || g.n < 1 || g.k < 1 || g.batch < 1 || g.threads < 1 || g.threads > h.threads)
        throw Error(where + f + ": m, n, k, batch must be >= 1 and threads in [1, " + std::to_string(h.threads) + "]");
      check_positive(g.flops_per_s, f + ".flops_per_s", where);
    }
    if (h.stream_bandwidth.empty()) throw Error(where + "calibration.stream_bandwidth is empty");
    for (size_t i = 0; i < h.stream_bandwidth.size(); ++i)
      check_positive(h.stream_bandwidth[i], "calibration.stream_bandwidth[" + std::to_string(i) + "]", where);
    check_positive(h.memcpy_bandwidth, "calibration.memcpy_bandwidth", where);
    // Rates by bytes per call and thread count (the update kernel's, a layer's other kernels').
    auto check_streams = [&](const std::vector<HostCalibration::Stream>& v, const std::string& field) {
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string f = "calibration." + field + "[" + std::to_string(i) + "]";
        if (v[i].bytes < 1 || v[i].threads < 1 || v[i].threads > h.threads)
          throw Error(where + f + ": bytes must be >= 1 and threads in [1, " + std::to_string(h.threads) + "]");
        check_positive(v[i].bytes_per_s, f + ".bytes_per_s", where);
      }
    };
    check_streams(h.streams, "streams");
    check_streams(h.layer_kernels, "layer_kernels");
    check_positive(h.dispatch_s, "calibration.dispatch_s", where);
    for (size_t i = 0; i < h.all_reduce.size(); ++i) {
      const auto& a = h.all_reduce[i];
      const std::string f = "calibration.all_reduce[" + std::to_string(i) + "]";
      if (a.ranks < 2) throw Error(where + f + ".ranks must be at least 2");
      check_non_negative(a.alpha_s, f + ".alpha_s", where);
      check_positive(a.beta_s_per_byte, f + ".beta_s_per_byte", where);
    }
  }
  check_positive(c.device.memory_bytes, "device.memory_bytes", where);
  check_non_negative(c.device.launch_overhead_s, "device.launch_overhead_s", where);
  if (!(c.device.gemm_efficiency > 0 && c.device.gemm_efficiency <= 1))
    throw Error(where + "device.gemm_efficiency must be in (0, 1] (got " + std::to_string(c.device.gemm_efficiency) + ")");
  check_rate_table(c.device.kernel_rates, "device.kernel_rates", "bytes", "bytes_per_s", where);
  if (c.levels.empty()) throw Error(where + "levels is empty: give at least one link level");
  for (size_t i = 0; i < c.levels.size(); ++i) {
    const LinkLevel& l = c.levels[i];
    const std::string f = "levels[" + std::to_string(i) + "]";
    if (l.name.empty()) throw Error(where + f + ".name is empty");
    const std::string fl = f + " '" + l.name + "'";
    if (l.group_size < 1)
      throw Error(where + fl + ": group_size must be at least 1 (got " +
                  std::to_string(l.group_size) + ")");
    check_positive(l.bandwidth, fl + ": bandwidth", where);
    check_non_negative(l.latency_s, fl + ": latency_s", where);
    if (i > 0) {
      const int64_t prev = c.levels[i - 1].group_size;
      if (l.group_size <= prev || l.group_size % prev != 0)
        throw Error(where + fl + ": group_size " + std::to_string(l.group_size) +
                    " must be a larger multiple of levels[" + std::to_string(i - 1) +
                    "].group_size " + std::to_string(prev) + " (levels go innermost first)");
    }
  }
  const LinkLevel& outer = c.levels.back();
  if (outer.group_size != c.num_devices)
    throw Error(where + "levels[" + std::to_string(c.levels.size() - 1) + "] '" + outer.name +
                "': the outermost group_size " + std::to_string(outer.group_size) +
                " must equal num_devices " + std::to_string(c.num_devices));
}

std::string cluster_to_text(const ClusterSpec& c) {
  std::string out;
  pb::TextFormat::Printer printer;
  if (!printer.PrintToString(to_proto(c), &out))
    throw Error("cluster '" + c.name + "': cannot print as protobuf text");
  return out;
}

ClusterSpec load_cluster_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read cluster file '" + path + "'");
  std::ostringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  proto::ClusterSpecProto p;
  pb::io::ArrayInputStream stream(text.data(), static_cast<int>(text.size()));
  FirstError errors;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.Parse(&stream, &p))
    throw Error(path + ":" + (errors.first.empty() ? " not a valid cluster spec" : errors.first));
  try {
    ClusterSpec c = from_proto(p);
    validate(c);
    return c;
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

// ---- the local preset ---------------------------------------------------------------------

HostInfo host_info_from_cpuinfo(std::string_view text, int64_t logical_cpus, double ram_bytes) {
  HostInfo h;
  h.logical_cpus = std::max<int64_t>(logical_cpus, 1);
  h.ram_bytes = ram_bytes;
  double mhz = 0;
  int64_t siblings = 0, cores = 0;
  bool flags_seen = false;
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
      s.remove_suffix(1);
    return s;
  };
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == text.npos ? text.npos : nl - pos);
    pos = nl == text.npos ? text.size() : nl + 1;
    size_t colon = line.find(':');
    if (colon == line.npos) continue;
    std::string_view key = trim(line.substr(0, colon)), value = trim(line.substr(colon + 1));
    if (key == "cpu MHz") {
      double v = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
      if (ec == std::errc() && v > 0) mhz = std::max(mhz, v);
    } else if (key == "siblings" && siblings == 0) {
      std::from_chars(value.data(), value.data() + value.size(), siblings);
    } else if (key == "cpu cores" && cores == 0) {
      std::from_chars(value.data(), value.data() + value.size(), cores);
    } else if (key == "flags" && !flags_seen) {
      flags_seen = true;
      std::istringstream words{std::string(value)};
      for (std::string w; words >> w;) {
        h.avx2 = h.avx2 || w == "avx2";
        h.avx512 = h.avx512 || w == "avx512f";
        h.fma = h.fma || w == "fma";
      }
    }
  }
  if (siblings > 0 && cores > 0 && siblings >= cores) h.threads_per_core = siblings / cores;
  h.clock_measured = mhz > 0;
  h.clock_hz = h.clock_measured ? mhz * 1e6 : kFallbackClockHz;
  return h;
}

HostInfo detect_host() {
  std::ifstream in("/proc/cpuinfo");
  std::ostringstream buf;
  if (in) buf << in.rdbuf();
  long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0)
    throw Error("local cluster: cannot read this machine's physical memory size (sysconf)");
  unsigned cpus = std::thread::hardware_concurrency();
  return host_info_from_cpuinfo(buf.str(), cpus == 0 ? 1 : cpus,
                                static_cast<double>(pages) * static_cast<double>(page_size));
}

namespace {

// local:N from measured figures (see local_cluster in cluster.h).
ClusterSpec calibrated_local_cluster(int64_t n, const HostInfo& h, const HostCalibration& cal) {
  const int64_t T = cal.threads;
  const int64_t t = std::max<int64_t>(1, T / n);                    // kernel threads per rank
  const double share = std::min(1.0, static_cast<double>(T) / static_cast<double>(n * t));
  ClusterSpec c;
  // Oversubscribed devices run at full speed alone and share the cores when several compute
  // at once (the simulator's processor sharing), so their own figures are unshared.
  if (share < 1) c.concurrent_devices = static_cast<double>(T) / static_cast<double>(t);
  c.name = "local:" + std::to_string(n);
  c.num_devices = n;
  c.device.name = "cpu (" + std::to_string(t) + (t == 1 ? " thread" : " threads") + " of this host's " +
                  std::to_string(T) + ", calibrated)";
  // Products at the thread count closest to t from below, by the FLOPs of one product.
  int64_t use = 0;
  for (const auto& g : cal.gemm)
    if (g.threads <= t) use = std::max(use, g.threads);
  if (use == 0) use = cal.gemm.front().threads;
  std::map<double, std::vector<double>> by_flops;
  for (const auto& g : cal.gemm)
    if (g.threads == use)
      by_flops[2.0 * static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k)].push_back(
          g.flops_per_s * static_cast<double>(t) / static_cast<double>(use));
  for (const auto& g : cal.gemm)
    if (g.threads == use)
      c.device.gemm_shapes.push_back({g.m, g.n, g.k, g.flops_per_s * static_cast<double>(t) / static_cast<double>(use)});
  double best = 0;
  for (auto& [f, rates] : by_flops) {
    double mean = 0;
    for (double r : rates) mean += r / static_cast<double>(rates.size());
    c.device.gemm_rates.push_back({f, mean});
    best = std::max(best, mean);
  }
  c.device.peak_flops = {{DType::f32, best}, {DType::bf16, best}, {DType::f16, best}, {DType::f64, best / 2}};
  c.device.gemm_efficiency = 1;
  // The streams of the devices computing at once share the host's memory bandwidth: each gets
  // its threads' part of what the busy threads stream together. Devices beyond those the cores
  // run at once are not counted here: the simulator's processor sharing already slows every
  // device when more compute (dividing by all N here too counted the sharing twice: an
  // optimizer's update on 4 devices of a 2-core host was priced at an eighth of the stream).
  const size_t busy = static_cast<size_t>(std::min<int64_t>(n * t, T));
  const double stream = cal.stream_bandwidth[std::min(busy, cal.stream_bandwidth.size()) - 1];
  c.device.memory_bandwidth = stream * static_cast<double>(t) / static_cast<double>(busy);
  // By working set: a device's t threads alone, or its part of the busy threads' total when
  // that is less (out of the caches, the devices share the memory bus).
  {
    std::map<int64_t, std::map<int64_t, double>> by;  // bytes -> threads -> rate
    for (const auto& s : cal.streams) by[s.bytes][s.threads] = s.bytes_per_s;
    for (auto& [bytes, rates] : by) {
      auto at = [&](int64_t threads) {  // the measured count closest from below
        auto it = rates.upper_bound(threads);
        return it == rates.begin() ? rates.begin()->second : std::prev(it)->second;
      };
      const double own = at(t), part = at(static_cast<int64_t>(busy)) * static_cast<double>(t) / static_cast<double>(busy);
      c.device.stream_rates.push_back({static_cast<double>(bytes), std::min(own, part)});
    }
  }
  c.device.memory_bytes = h.ram_bytes / static_cast<double>(n);
  c.device.launch_overhead_s = cal.dispatch_s;
  // The reference layers' kernels at the thread count closest to t from below (each device's
  // own: they are limited by their own work more than by the shared memory bus).
  {
    int64_t at = 0;
    for (const auto& k : cal.layer_kernels)
      if (k.threads <= t) at = std::max(at, k.threads);
    for (const auto& k : cal.layer_kernels)
      if (k.threads == at) c.device.kernel_rates.push_back({static_cast<double>(k.bytes), k.bytes_per_s});
    std::sort(c.device.kernel_rates.begin(), c.device.kernel_rates.end());
  }
  // The link: the in-process all-reduce measured on n ranks (or the nearest count) while the
  // cores are busy computing, as in a step (measured on idle cores when that is all there is),
  // as the ring's per-step latency and bandwidth: 2(n-1) lat + 2(n-1)/n S / bw = alpha + beta S.
  // Measured both ways, the latency is the idle cores' and what the busy cores add is the wait
  // to be woken, paid by a transfer that finds its stream idle (comm_wake_s).
  auto nearest = [&](const std::string& engine) {
    const HostCalibration::Collective* best = nullptr;
    for (const auto& a : cal.all_reduce)
      if (a.engine == engine && (!best || std::llabs(a.ranks - n) < std::llabs(best->ranks - n))) best = &a;
    return best;
  };
  const HostCalibration::Collective* idle = nearest("inprocess");
  const HostCalibration::Collective* busy_ar = nearest("inprocess-loaded");
  const HostCalibration::Collective* ar = busy_ar ? busy_ar : idle;
  const bool loaded = busy_ar != nullptr;
  double bw = kLocalMemoryBandwidth / 2 / static_cast<double>(n), lat = kLocalLatency;
  if (ar && n > 1) {
    const double k = static_cast<double>(ar->ranks);
    const double alpha = idle && idle->ranks == ar->ranks ? std::min(idle->alpha_s, ar->alpha_s) : ar->alpha_s;
    lat = std::max(alpha / (2 * (k - 1)), 1e-7);
    bw = 2 * (k - 1) / (k * ar->beta_s_per_byte);
    c.comm_wake_s = ar->alpha_s - alpha;
  }
  c.levels.push_back({"memory", n, bw, lat});
  std::ostringstream src;
  src << "this host, calibrated " << cal.when << " by `tessel calibrate` (" << calibration_file() << "): " << T
      << " hardware threads; each of the " << n << " devices runs " << t << " kernel thread(s)"
      << (share < 1 ? "; they outnumber what the cores run at once: " + num(c.concurrent_devices) +
                          " compute at full speed, more share the cores"
                    : "")
      << "; matrix products at "
      << use << " thread(s) by size, " << si(best, "FLOP/s") << " at best; fused elementwise "
      << si(stream, "B/s") << " for the host's " << busy << " busy thread(s), split between the devices"
      << (c.device.kernel_rates.empty() ? std::string() : ", a layer's other kernels as measured on reference layers")
      << "; dispatch "
      << num(cal.dispatch_s * 1e6) << " us per op; link from the in-process all-reduce"
      << (ar ? " on " + std::to_string(ar->ranks) + " ranks" + (loaded ? ", the cores busy computing" : "")
             : " (not measured: defaults)");
  c.source = src.str();
  c.calibration = cal;
  return c;
}

}  // namespace

ClusterSpec local_cluster(int64_t n, const HostInfo& h, const HostCalibration& calibration) {
  if (n < 1)
    throw Error("local cluster: the device count must be at least 1 (got " + std::to_string(n) +
                ")");
  if (!calibration.empty()) return calibrated_local_cluster(n, h, calibration);
  // Peak f32 per core = FMA pipes x f32 lanes x 2 FLOP per FMA x clock. Two 256-bit FMA pipes
  // per core is Haswell..Alder Lake and Zen 2..4; with AVX-512 this assumes two 512-bit pipes
  // (Xeon Gold/Platinum), an upper bound on parts with one. SMT siblings share the pipes, so
  // count physical cores, not hardware_concurrency's logical CPUs.
  const int64_t cores =
      std::max<int64_t>(h.logical_cpus / std::max<int64_t>(h.threads_per_core, 1), 1);
  const int lanes = h.avx512 ? 16 : h.avx2 ? 8 : 4;
  const double flop_per_cycle = 2.0 * lanes * (h.fma ? 2 : 1);
  const double host_f32 = static_cast<double>(cores) * flop_per_cycle * h.clock_hz;
  const double share = 1.0 / static_cast<double>(n);

  ClusterSpec c;
  c.name = "local:" + std::to_string(n);
  c.num_devices = n;
  c.device.name = "cpu (1/" + std::to_string(n) + " of this host)";
  // bf16 and f16 run as f32 after conversion on CPUs without native half-precision FMA;
  // f64 has half the lanes.
  c.device.peak_flops = {{DType::f32, host_f32 * share},
                         {DType::bf16, host_f32 * share},
                         {DType::f16, host_f32 * share},
                         {DType::f64, host_f32 * share / 2}};
  c.device.memory_bandwidth = kLocalMemoryBandwidth * share;
  c.device.memory_bytes = h.ram_bytes * share;
  c.device.launch_overhead_s = kLocalLaunch;
  // A transfer between two in-process devices is a memory copy: each byte is read once and
  // written once, so it costs 2 bytes of the host's memory bandwidth. Collectives keep all n
  // devices sending at once, so each device's share is B / 2 / n. A lone send_recv between two
  // devices could go faster; this errs on the slow side rather than oversell overlap.
  c.levels.push_back({"memory", n, kLocalMemoryBandwidth / 2 * share, kLocalLatency});

  std::ostringstream src;
  src << "this host, measured or estimated: " << h.logical_cpus << " logical CPUs "
      << "(std::thread::hardware_concurrency), " << cores << " cores at " << h.threads_per_core
      << " thread(s) per core (/proc/cpuinfo siblings / cpu cores); clock "
      << (h.clock_measured ? num(h.clock_hz / 1e6) + " MHz from the cpu MHz field of /proc/cpuinfo"
                           : "2.5 GHz ASSUMED: /proc/cpuinfo has no cpu MHz field")
      << "; "
      << (h.avx512 ? "AVX-512"
          : h.avx2 ? "AVX2"
                   : "no AVX2/AVX-512: 128-bit SIMD")
      << (h.fma ? "+FMA" : " without FMA") << ": 2 pipes x " << lanes << " f32 lanes x "
      << (h.fma ? 2 : 1) << " FLOP = " << flop_per_cycle << " FLOP/cycle/core (an assumption "
      << "about the core, not measured); host peak f32 " << si(host_f32, "FLOP/s")
      << ", f64 half of it, bf16/f16 equal to it (computed in f32); memory bandwidth "
      << si(kLocalMemoryBandwidth, "B/s")
      << " for the host is a DEFAULT, not measured (calibration measures it); RAM "
      << si(h.ram_bytes, "B") << " (sysconf); each of the " << n << " devices gets 1/" << n
      << " of peak, bandwidth and RAM; link = memory copy at bandwidth / 2 (read + write) / " << n
      << ", latency 5 us, launch overhead 1 us: estimates";
  c.source = src.str();
  return c;
}

std::string calibration_file() {
  if (const char* e = std::getenv("TESSEL_CALIBRATION")) return std::string(e) == "off" ? "" : e;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/tessel/calibration.pbtxt";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/tessel/calibration.pbtxt";
  return {};
}

HostCalibration load_host_calibration() {
  const std::string path = calibration_file();
  if (path.empty() || !std::filesystem::exists(path)) return {};
  ClusterSpec c = load_cluster_file(path);
  if (c.calibration.empty())
    throw Error(path + ": a cluster spec without a calibration section (rerun `tessel calibrate`, or remove the file)");
  return c.calibration;
}

// ---- parse_cluster ------------------------------------------------------------------------

ClusterSpec parse_cluster(const std::string& spec) {
  if (spec.empty()) throw Error(std::string("empty cluster spec; ") + kPresetHelp);
  if (looks_like_path(spec)) return load_cluster_file(spec);
  const size_t colon = spec.find(':');
  const std::string preset = spec.substr(0, colon);
  const bool has_opts = colon != std::string::npos;
  const std::string_view opts =
      has_opts ? std::string_view(spec).substr(colon + 1) : std::string_view();
  ClusterSpec c;
  if (preset == kA100.key) {
    c = parse_gpu_preset(kA100, opts, has_opts, spec);
  } else if (preset == kH100.key) {
    c = parse_gpu_preset(kH100, opts, has_opts, spec);
  } else if (preset == "local") {
    int64_t n = has_opts ? parse_int(opts, "the device count N of local:N", spec) : 1;
    if (n < 1 || n > kMaxLocalDevices)
      throw Error("cluster spec '" + spec + "': local:N needs 1 <= N <= " +
                  std::to_string(kMaxLocalDevices) + " (got " + std::to_string(n) + ")");
    c = local_cluster(n, detect_host(), load_host_calibration());
  } else {
    throw Error("unknown cluster preset '" + preset + "' in '" + spec + "'; " + kPresetHelp);
  }
  validate(c);
  return c;
}

}  // namespace tessel::planner
