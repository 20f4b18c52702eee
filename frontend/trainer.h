// The training driver behind `tessel train`: builds (or loads) the model, adds the
// optimizer, feeds a dataset, shows progress, evaluates and reports.
#pragma once

#include <cmath>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "frontend/optim.h"
#include "planner/search.h"

namespace tessel {

struct TrainOptions {
  std::string model;            // "mlp:..." / "gpt:..." / "llama:..." spec, or a .tsg graph file
  std::string dataset;          // "fashion-mnist" or "text:FILE"
  std::string data_dir;         // fashion-mnist directory ("" = the Debian package's)
  int64_t epochs = 0;           // one of epochs / steps; neither: 1 epoch
  int64_t steps = 0;
  int64_t batch = 64;           // samples per optimizer step
  OptimizerConfig optimizer;
  uint64_t seed = 0;
  int threads = 0;              // 0: all cores
  bool use_blas = true;
  bool jit = true;              // fused JIT kernels; false: every op on its reference kernel
  int64_t eval_batches = 50;    // text datasets: validation batches
  std::string save;             // write the trained model (graph + parameters) here
  // Checkpoints (runtime/checkpoint.h): saved under checkpoint_dir after every
  // checkpoint_every steps (0: after the last only) and after the last, written in the
  // background; keep > 0 keeps the newest `keep`. resume: a checkpoint (or a directory of
  // them: the newest) to continue from, saved under any plan; steps/epochs count the whole run.
  std::string checkpoint_dir;
  int64_t checkpoint_every = 0;
  int keep = 0;
  std::string resume;
  // Start from the parameters in a safetensors file made elsewhere (PyTorch's
  // safetensors.torch.save_file, tessel export): each parameter is looked up by its own name,
  // then with '/' as '.' ("block0/attn/q/weight" -> "block0.attn.q.weight"), unless init_map
  // (lines "TESSEL_NAME = FILE_NAME [transpose]") names it; a transposed 2-D tensor is
  // PyTorch's nn.Linear layout [out, in] of tessel's [in, out].
  std::string init, init_map;
  // devices > 0: run a plan on this many simulated devices (threads of this process): from
  // plan_file, or searched under pins. Under a launcher (runtime/process_env.h) this process
  // is one rank of the launcher's world, whose size is the device count.
  int64_t devices = 0;
  std::string plan_file;
  planner::Pins pins;
  std::string splits;           // split pins as --split writes them, resolved against the graph
  int64_t bucket_bytes = 25 << 20;
  bool overlap = true;
  double comm_timeout_s = 300;
  std::string comm;             // the ranks' engine: inprocess or gloo ("": inprocess on simulated devices, gloo across processes)
  bool verbose = false;         // per-rank memory against the planner's prediction
  // Write a Chrome-trace / Perfetto JSON file of trace_steps timed steps of every rank (both
  // streams, each op with its node and source line); one file for the job, written by rank 0.
  std::string trace;
  int64_t trace_steps = 3;
  // With devices: write the plan's HTML report (planner::report_html) with this run's
  // measurements beside the predictions: its timeline, step and parts, memory per rank.
  std::string html;
  // With devices: run the `tune` best plans of the search a few steps each and train the
  // fastest measured (0: the search's pick).
  int64_t tune = 0;
  bool progress_terminal = false;
  bool quiet = false;
  // Which input each dataset role ("data", "labels", "tokens", "targets") feeds, by name,
  // over the roles the graph's inputs declare.
  std::map<std::string, std::string> input_roles;  // input name -> role
};

// The input of `g` that a dataset's `role` feeds: the one `overrides` (input name -> role)
// names, else the one whose "role" attribute says so, else (graphs made without roles) the one
// named like the role ("x" for data). Throws naming the inputs when there is none or several.
std::string input_for_role(const Graph& g, const std::string& role, const std::map<std::string, std::string>& overrides = {});

struct TrainReport {
  std::string model;
  int64_t steps = 0;
  int64_t samples = 0;
  double final_loss = NAN;      // mean training loss over the last min(10, steps) steps
  double last_loss = NAN;       // the last step's training loss
  int64_t resumed_step = -1;    // the checkpoint's step the run continued from (-1: none)
  int64_t checkpoints = 0;      // saved by this run
  double checkpoint_copy_seconds = 0;  // training's wait for the checkpoints (copying the state; across processes, saving)
  double test_accuracy = NAN;   // image datasets
  double test_loss = NAN;       // image: test set; text: validation split
  double unigram_entropy = NAN; // text datasets, nats per byte
  double samples_per_s = 0;     // after warm-up
  double step_ms_median = 0;    // wall time of a step after warm-up
  double train_seconds = 0;
  int64_t parameters = 0;
  int64_t memory_bytes = 0;     // executor buffers (all ranks)
  int64_t devices = 1;
  std::string plan;             // the plan's configuration, with devices
  int64_t jit_kernels = 0;      // fused kernels the training step runs (all ranks)
  int64_t jit_compiled = 0;     // of which compiled in this run (the rest came from the disk cache)
  double jit_seconds = 0;       // fusion and compilation
  double startup_seconds = 0;   // from the start of train() to the first step (data, graph, plan, JIT)
  // On devices: the plan's predicted step, its parts and peak memory beside the measured
  // ones (JSON members, frontend/timeline.h), and the trace's path when one was written.
  std::string predicted_vs_measured;
  std::string trace;
  // With --tune: each plan tried, its predicted and measured step (the chosen one is `plan`).
  struct Tried {
    std::string plan;
    double predicted_ms = 0, measured_ms = 0;
  };
  std::vector<Tried> tuned;
  double tune_seconds = 0;
  std::string json() const;
};

// Progress goes to `log` (stderr in the CLI). Throws tessel::Error on bad options or data.
TrainReport train(const TrainOptions& opt, std::ostream& log);

}  // namespace tessel
