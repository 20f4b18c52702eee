// Cluster specs: the devices a plan runs on (peak FLOP/s per dtype, memory bandwidth and
// capacity) and the link hierarchy between them (bandwidth and latency per level). The file
// format is planner/cluster.proto in protobuf text; these plain structs are what the cost
// model reads. Presets cover the local machine and A100 / H100 clusters with datasheet figures.
// All functions are pure or read only the named file and /proc; any thread may call them.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "graph/dtype.h"

namespace tessel::planner {

struct DeviceSpec {
  std::string name;
  std::map<DType, double> peak_flops;  // dense FLOP/s per dtype
  double memory_bandwidth = 0;         // bytes/s
  double memory_bytes = 0;
  double launch_overhead_s = 0;
  double gemm_efficiency = 1;          // large-GEMM fraction of peak (measured; 1 = roofline)
  // Measured rates of matrix products by the FLOPs of one product, ascending (calibration);
  // when given, a product's time is its FLOPs over the rate interpolated here (in log FLOPs,
  // clamped at the ends) instead of over peak x gemm_efficiency.
  std::vector<std::pair<double, double>> gemm_rates;
  double gemm_rate(double flops_per_product) const;  // the interpolated rate; 0 without gemm_rates
  // Measured rates by product shape (calibration); gemm_rate(m, n, k) is the nearest shape's
  // (in log m + log n + log k), or gemm_rate(2 m n k) without them.
  struct GemmShape {
    int64_t m = 0, n = 0, k = 0;
    double flops_per_s = 0;
    bool operator==(const GemmShape&) const = default;
  };
  std::vector<GemmShape> gemm_shapes;
  double gemm_rate(double m, double n, double k) const;
  // Measured elementwise bandwidth by the bytes one kernel moves, ascending (calibration);
  // stream_rate interpolates (in log bytes, clamped), memory_bandwidth without them.
  std::vector<std::pair<double, double>> stream_rates;
  double stream_rate(double bytes) const;
  // Measured rates of a model's kernels other than matrix products and the optimizer's update,
  // by the bytes one call reads and writes, ascending (calibration, on reference layers);
  // kernel_rate interpolates (in log bytes, clamped), stream_rate without them.
  std::vector<std::pair<double, double>> kernel_rates;
  double kernel_rate(double bytes) const;
  // Peak FLOP/s for `t`; throws Error naming the dtype and the device when it has none.
  double peak(DType t) const;
  bool operator==(const DeviceSpec&) const = default;
};

struct LinkLevel {
  std::string name;
  int64_t group_size = 1;  // devices per group at this level
  double bandwidth = 0;    // per device, per direction, bytes/s
  double latency_s = 0;    // per message step
  bool operator==(const LinkLevel&) const = default;
};

// What `tessel calibrate` measured on a host (planner/cluster.proto's CalibrationProto).
struct HostCalibration {
  int64_t threads = 0;
  struct Gemm {
    int64_t m = 0, n = 0, k = 0, batch = 1, threads = 1;
    double flops_per_s = 0;
    bool operator==(const Gemm&) const = default;
  };
  std::vector<Gemm> gemm;
  std::vector<double> stream_bandwidth;  // [t-1]: bytes/s of fused elementwise kernels on t threads
  double memcpy_bandwidth = 0;
  double dispatch_s = 0;
  struct Collective {
    std::string engine;
    int64_t ranks = 0;
    double alpha_s = 0, beta_s_per_byte = 0;
    bool operator==(const Collective&) const = default;
  };
  std::vector<Collective> all_reduce;
  std::string when;
  double seconds = 0;
  std::vector<double> openblas_sgemm;  // [t-1]: OpenBLAS's SGEMM 1024^3 on t of its threads (reference only)
  struct Stream {
    int64_t bytes = 0, threads = 1;  // read + written per call
    double bytes_per_s = 0;
    bool operator==(const Stream&) const = default;
  };
  std::vector<Stream> streams;  // fused elementwise kernels by working set and thread count
  // Reference transformer layers' kernels other than products and the optimizer's update
  // (norms, softmax, activations, transposes, adds, reductions, as the runtime fuses them) in a
  // training step: bytes read + written per call by size class and thread count, over their
  // time (DeviceSpec::kernel_rates).
  std::vector<Stream> layer_kernels;
  bool empty() const { return gemm.empty(); }
  bool operator==(const HostCalibration&) const = default;
};

struct ClusterSpec {
  std::string name;
  int64_t num_devices = 0;
  DeviceSpec device;              // every device is identical
  std::vector<LinkLevel> levels;  // innermost first; the last one spans all devices
  std::string source;             // citations for the numbers
  HostCalibration calibration;    // what local:N was derived from, when calibrated
  // Devices that share one host's cores: at most this many compute at full speed at once,
  // more share them (the simulator's processor sharing). 0: each device has its own.
  double concurrent_devices = 0;
  // A transfer that starts on an idle communication stream first waits this long: its threads
  // were asleep and are woken while the cores compute (the simulator's Task::wake_s). Transfers
  // queued behind one another do not. 0: no such wait.
  double comm_wake_s = 0;

  // Index of the outermost level a set of device ranks crosses: ranks r belong to the same
  // group at level L iff r / levels[L].group_size is equal. -1 for zero or one distinct rank.
  // Throws Error for a rank outside [0, num_devices).
  int level_spanned(std::span<const int64_t> ranks) const;
  // A few human-readable lines: devices, peaks, memory, each link level.
  std::string summary() const;
  bool operator==(const ClusterSpec&) const = default;
};

// `spec` is a preset or the path of a .pbtxt file (anything naming an existing file, containing
// '/', or ending in ".pbtxt" is read as a file). Presets:
//   a100-80g[:nodes=N][,ib=200|400]  N nodes x 8 A100-SXM4-80GB, NVSwitch; IB HDR by default
//   h100-80g[:nodes=N][,ib=400|200]  N nodes x 8 H100-SXM5-80GB, NVSwitch; IB NDR by default
//   local[:N]                         N simulated devices sharing this host
// nodes and N default to 1. The result is validated; errors name the bad part.
ClusterSpec parse_cluster(const std::string& spec);
ClusterSpec load_cluster_file(const std::string& path);
// Protobuf text that load_cluster_file reads back to an equal spec.
std::string cluster_to_text(const ClusterSpec& c);
// Throws Error naming the field: positive finite numbers, at least one peak, named levels,
// group sizes strictly increasing and each dividing the next, the last equal to num_devices.
void validate(const ClusterSpec& c);

// What `local:N` is built from. detect_host() reads this machine; tests pass their own.
struct HostInfo {
  int64_t logical_cpus = 1;      // std::thread::hardware_concurrency
  int64_t threads_per_core = 1;  // SMT: /proc/cpuinfo "siblings" / "cpu cores"
  double clock_hz = 0;           // /proc/cpuinfo "cpu MHz" (the highest listed)
  bool clock_measured = false;   // false: no "cpu MHz" line, clock_hz is the 2.5 GHz fallback
  bool avx2 = false, avx512 = false, fma = false;
  double ram_bytes = 0;  // physical memory (sysconf)
};
// Fills the clock, SMT and vector flags from the text of /proc/cpuinfo.
HostInfo host_info_from_cpuinfo(std::string_view cpuinfo, int64_t logical_cpus, double ram_bytes);
HostInfo detect_host();
// With a calibration (from calibration_file()), the devices' rates, bandwidths, dispatch cost
// and link are the measured ones for N ranks sharing the host as LocalRun runs them: each rank
// max(1, T / N) kernel threads of the T the host has, each device's share of the cores
// T / (N x threads) when they are oversubscribed.
ClusterSpec local_cluster(int64_t n, const HostInfo& host, const HostCalibration& calibration = {});
// Where `tessel calibrate` keeps this host's figures: $TESSEL_CALIBRATION (a file; "off": none),
// else $XDG_CACHE_HOME/tessel/calibration.pbtxt, else ~/.cache/tessel/calibration.pbtxt. "" when
// there is no such place or it is off.
std::string calibration_file();
// The calibration in calibration_file(), or an empty one when there is none. Throws Error
// naming the file when it exists but cannot be read.
HostCalibration load_host_calibration();

}  // namespace tessel::planner
