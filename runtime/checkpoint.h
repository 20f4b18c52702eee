// Checkpoints: every variable of a run (parameters, optimizer moments, step counters) saved
// as the blocks the ranks hold, in safetensors files, with one metadata file that gives each
// tensor's whole shape and each block's place in it, so a checkpoint written under one plan
// loads under any other (each new rank reads the parts of the blocks its own block needs).
//
// Layout, under a root directory:
//   ROOT/step-00000100/checkpoint.json         the metadata: written last, the commit marker
//   ROOT/step-00000100/rank-00000.safetensors  one file per writer (a rank's distinct blocks)
//   ROOT/step-00000100.partial/                a save under way, or one a crash cut off:
//                                              never loaded; removed by the next save
// A save writes into the .partial directory (every file flushed to disk), writes the
// metadata, then renames the directory into place and flushes the root: a kill at any
// moment leaves the previous checkpoints whole. Older checkpoints are removed only after
// the new one is committed.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "graph/types.h"

namespace tessel::runtime {

namespace safetensors {
class Reader;
}

// One block of a variable that a rank holds.
struct Shard {
  std::string name;
  TensorType global;             // the whole tensor
  std::vector<int64_t> offsets;  // where the block starts in it, per dim
  Shape shape;                   // the block's shape
  const void* data = nullptr;    // row-major; not owned
};

struct CheckpointState {
  int64_t step = 0;  // optimizer steps done
  uint64_t seed = 0;
  std::string model, plan;
  int64_t world = 1;
  std::map<std::string, std::string> data;  // where the data stands
  std::set<std::string> parameters;         // the variables that are trained parameters
};

// Each distinct block once (blocks with the same variable and offsets are copies, as a
// replicated parameter is on every data-parallel rank): per writer, the blocks it is the
// first to hold. `held[r]` is what writer r holds.
std::vector<std::vector<Shard>> distinct_blocks(const std::vector<std::vector<Shard>>& held);

// Saves step state.step under `root` (created if missing): files[i] as writer i's file, the
// metadata last, then the commit. keep > 0: afterwards only the newest `keep` checkpoints
// remain. Returns the committed directory. Throws an Error naming the path and the reason
// (a full disk, no permission); whatever was committed before stays loadable.
std::string save_checkpoint(const std::string& root, const CheckpointState& state,
                            const std::vector<std::vector<Shard>>& files, int keep = 0);

// The same in three parts, for writers in several processes (one shared directory): one
// process starts the save (a fresh partial directory; "" when this step is committed already),
// every process writes its writers' files into it, and after all have, one commits. files in
// commit_checkpoint are every writer's blocks (their data is not read) for the metadata; a
// failed save is abandoned with abandon_checkpoint (its partial directory removed).
std::string begin_checkpoint(const std::string& root, int64_t step);
void write_checkpoint_file(const std::string& root, int64_t step, size_t writer, const std::vector<Shard>& blocks);
std::string commit_checkpoint(const std::string& root, const CheckpointState& state,
                              const std::vector<std::vector<Shard>>& files, int keep = 0);
void abandon_checkpoint(const std::string& root, int64_t step);

// Saves in the background: save() copies the blocks (the only time the caller waits, besides
// a previous save still being written), then a thread of its own writes and commits them.
// A failed write is reported by the next call (save, check or finish), which rethrows its
// Error. One thread calls it.
class AsyncCheckpointer {
 public:
  AsyncCheckpointer(std::string root, int keep) : root_(std::move(root)), keep_(keep) {}
  ~AsyncCheckpointer();  // waits for a write under way (its error, if any, is lost)
  AsyncCheckpointer(const AsyncCheckpointer&) = delete;
  AsyncCheckpointer& operator=(const AsyncCheckpointer&) = delete;
  void save(const CheckpointState& state, const std::vector<std::vector<Shard>>& files);
  void check();   // rethrows a failed write's error
  void finish();  // waits for the write under way, then check()
  const std::string& last() const { return last_; }  // the newest committed directory
  double copy_seconds() const { return copy_s_; }     // caller's time spent copying, in all
  int64_t saves() const { return saves_; }

 private:
  std::string root_;
  int keep_;
  std::thread writer_;
  std::atomic<bool> done_{true};
  std::exception_ptr error_;
  std::string last_, writing_;
  std::vector<std::vector<std::byte>> copies_;
  std::vector<std::vector<Shard>> files_;
  CheckpointState state_;
  double copy_s_ = 0;
  int64_t saves_ = 0;
};

// The newest committed checkpoint under root ("" if none); `ignored` gets the partial
// saves found there.
std::string latest_checkpoint(const std::string& root, std::vector<std::string>* ignored = nullptr);

// A committed checkpoint: its metadata checked against itself and its files (a missing,
// truncated or corrupt file, or metadata that does not add up, is an Error naming the file
// and what is wrong).
class Checkpoint {
 public:
  // A step directory, or a root (its newest committed checkpoint).
  explicit Checkpoint(const std::string& path);
  ~Checkpoint();
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const std::string& dir() const { return dir_; }
  const CheckpointState& state() const { return state_; }
  struct Piece {
    std::string file, tensor;  // the file, and the piece's name in it
    std::vector<int64_t> offsets;
    Shape shape;
  };
  struct Tensor {
    std::string name;
    TensorType type;  // the whole tensor
    std::vector<Piece> pieces;
    bool parameter = false;  // a trained parameter (else optimizer state or a counter)
  };
  const std::vector<Tensor>& tensors() const { return tensors_; }
  const Tensor* find(const std::string& name) const;  // null if absent
  int64_t bytes() const;  // of every tensor, whole

  // Fills `dst` (row-major, `shape`) with the block at `offsets` of variable `name`, whose
  // whole must be `global`. Throws naming the variable when the checkpoint has none of that
  // name, a different shape or dtype, or does not cover the block.
  void read(const std::string& name, const TensorType& global, std::span<const int64_t> offsets,
            std::span<const int64_t> shape, void* dst) const;

 private:
  const safetensors::Reader& reader(const std::string& file) const;
  std::string dir_;
  CheckpointState state_;
  std::vector<Tensor> tensors_;
  mutable std::map<std::string, std::unique_ptr<safetensors::Reader>> readers_;
};

}  // namespace tessel::runtime
