// Checkpoint cost for one model, beside the disk it writes to: run by
// bench/compare_checkpoint.py next to PyTorch's torch.distributed.checkpoint.
//   checkpoint_bench --model SPEC --batch N --dir DIR [--devices N] [--threads T] [--rounds R]
// Trains a few AdamW steps (synthetic tokens), then each round: (1) writes as many bytes as
// the checkpoint holds to one file in DIR and fsyncs it, before and after (2) (the disk's
// sequential write bandwidth: median and best); (2) saves a checkpoint synchronously (save_checkpoint: throughput = bytes /
// time); (3) saves one in the background as `tessel train --checkpoint-every` does: the stall
// is the time the training loop waits (the copy), plus what the next steps lose while the
// write runs, against the median step. Prints one JSON line of medians over the rounds.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>

#include "frontend/api.h"
#include "frontend/engine.h"
#include "frontend/models.h"
#include "graph/error.h"
#include "runtime/checkpoint.h"

using namespace tessel;
using Clock = std::chrono::steady_clock;

namespace {
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  std::string spec = "gpt:layers=4,d_model=512,heads=8,seq=128,vocab=256", dir;
  int64_t batch = 4, devices = 1, rounds = 3;
  int threads = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") spec = v;
    else if (k == "--batch") batch = std::stoll(v);
    else if (k == "--dir") dir = v;
    else if (k == "--devices") devices = std::stoll(v);
    else if (k == "--threads") threads = std::stoi(v);
    else if (k == "--rounds") rounds = std::stoll(v);
    else {
      std::cerr << "unknown option " << k << "\n";
      return 2;
    }
  }
  if (dir.empty()) {
    std::cerr << "usage: checkpoint_bench --dir DIR [--model SPEC --batch N --devices N --threads T --rounds R]\n";
    return 2;
  }
  try {
    models::Built b = models::from_spec(spec, batch, true);
    TrainerOptions to;
    to.threads = threads;
    to.seed = 1;
    Trainer trainer(b.model->graph(), AdamW{.lr = 3e-4}, Devices{devices, {}, ""}, to);
    const Graph& g = trainer.graph();
    std::mt19937 rng(1);
    Batch data;
    for (int32_t id : g.nodes_of_kind(OpKind::input)) {
      const TensorType& t = g.node(id).outputs[0];
      std::vector<int32_t> v(static_cast<size_t>(t.numel()));
      for (auto& x : v) x = static_cast<int32_t>(rng() % 256);
      data.set(g.node(id).name, v);
    }
    auto step = [&] {
      const auto t0 = Clock::now();
      trainer.step(data);
      return seconds_since(t0);
    };
    for (int i = 0; i < 3; ++i) step();
    std::vector<double> base;
    for (int i = 0; i < 5; ++i) base.push_back(step());
    const double step_s = median(base);

    auto blocks = [&] { return runtime::distinct_blocks(trainer.engine().variable_blocks()); };
    int64_t bytes = 0;
    for (auto& f : blocks())
      for (auto& s : f) bytes += numel(s.shape) * static_cast<int64_t>(dtype_size(s.global.dtype));
    std::vector<double> disk, sync, stall, copy;
    std::vector<char> junk(static_cast<size_t>(bytes), 'x');
    // One background checkpointer for the run, as training has: its copy buffers are made by
    // the first save (not counted) and reused.
    runtime::AsyncCheckpointer ck((std::filesystem::path(dir) / "async").string(), 1);
    {
      runtime::CheckpointState st;
      ck.save(st, blocks());
      ck.finish();
    }
    // The disk: the same bytes to one file, flushed (before and after each synchronous save:
    // this machine's disk speed drifts).
    auto write_disk = [&] {
      const std::string f = (std::filesystem::path(dir) / "disk.bin").string();
      const auto t0 = Clock::now();
      const int fd = ::open(f.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) throw Error(f + ": cannot create");
      for (size_t at = 0; at < junk.size();) {
        const ssize_t w = ::write(fd, junk.data() + at, std::min<size_t>(junk.size() - at, size_t{64} << 20));
        if (w <= 0) throw Error(f + ": cannot write");
        at += static_cast<size_t>(w);
      }
      ::fsync(fd);
      ::close(fd);
      disk.push_back(seconds_since(t0));
      std::filesystem::remove(f);
    };
    for (int64_t r = 0; r < rounds; ++r) {
      write_disk();
      // A synchronous save.
      runtime::CheckpointState st;
      st.step = 1000 + r;
      auto t0 = Clock::now();
      runtime::save_checkpoint((std::filesystem::path(dir) / "sync").string(), st, blocks(), 1);
      sync.push_back(seconds_since(t0));
      write_disk();
      // A save in the background between two steps, as training does.
      st.step = 2000 + r;
      t0 = Clock::now();
      ck.save(st, blocks());
      const double waited = seconds_since(t0);
      double lost = 0;
      for (int i = 0; i < 5; ++i) lost += std::max(0.0, step() - step_s);
      ck.finish();
      copy.push_back(waited);
      stall.push_back(waited + lost);
    }
    std::cout << "{\"framework\":\"tessel\",\"model\":\"" << spec << "\",\"bytes\":" << bytes
              << ",\"step_s\":" << step_s << ",\"disk_s\":" << median(disk)
              << ",\"disk_best_s\":" << *std::min_element(disk.begin(), disk.end()) << ",\"sync_s\":" << median(sync)
              << ",\"async_wait_s\":" << median(copy) << ",\"async_stall_s\":" << median(stall) << "}\n";
  } catch (const std::exception& e) {
    std::cerr << "checkpoint_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
