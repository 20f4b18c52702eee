// `tessel calibrate`: measures this host the way tessel runs on it, so that the planner's
// local:N devices are the measured ones (planner/cluster.h, HostCalibration):
//  - matrix products of the shape classes the models run (an MLP's layers and their data- and
//    tensor-parallel slices, a transformer's projections, attention's batched small products,
//    tiny ones), through the kernel the executor runs, at 1, 2, 4, ... and all threads;
//  - fused elementwise kernels (an update written in place, as the optimizers' are) per thread
//    count, and one thread's memcpy;
//  - the other kernels of two reference transformer layers' training steps (norms, softmax,
//    activations, transposes, reductions, as the runtime fuses them), by size and thread count:
//    the rate the planner prices a model's kernels other than products and the update at;
//  - the executor's dispatch cost per op;
//  - the all-reduce of the in-process engine on 2, 4, ... ranks, and of Gloo over loopback on
//    2, as alpha + beta x bytes.
#pragma once

#include <functional>
#include <string>

#include "planner/cluster.h"

namespace tessel {

struct CalibrateOptions {
  int threads = 0;       // the host's hardware threads to measure up to (0: all)
  bool gloo = true;      // also time Gloo's all-reduce over loopback
  double min_time_s = 0.25;  // each figure: repeated for at least this long (and at least 3 times)
  std::function<void(const std::string&)> progress;  // a line per phase
};

planner::HostCalibration calibrate_host(const CalibrateOptions& opt);

}  // namespace tessel
