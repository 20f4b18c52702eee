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

struct ClusterSpec {
  std::string name;
  int64_t num_devices = 0;
  DeviceSpec device;              // every device is identical
  std::vector<LinkLevel> levels;  // innermost first; the last one spans all devices
  std::string source;             // citations for the numbers

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
ClusterSpec local_cluster(int64_t n, const HostInfo& host);

}  // namespace tessel::planner
