// The ranks of a plan that this process runs: all of them, on N simulated devices (one
// Executor per rank, each in its own thread, talking through the engine
// CommOptions::engine names: the in-process communicator, or Gloo over loopback TCP as
// separate processes would), or one of them, with the others in other processes (one
// process per rank: runtime/process_env.h). Feeds each of its ranks its part of the batch
// (its microbatches, then its shard by the input's placement) and gathers sharded variables
// back into whole tensors; with ranks elsewhere these reads are collective (every process
// makes them, in the same order).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "planner/partition.h"
#include "runtime/inprocess_comm.h"
#include "runtime/checkpoint.h"
#include "runtime/executor.h"

namespace tessel::runtime {

class LocalRun {
 public:
  // programs: partition(graph, config). `threads`: cores to share among the ranks (0: all).
  LocalRun(std::vector<planner::RankProgram> programs, const planner::PlanConfig& config, ExecutorOptions options = {},
           CommOptions comm = {}, int threads = 0);
  // Rank `rank` of the plan, the others being other processes that `comm` (this rank's
  // endpoint) reaches. Checks, before anything else, that every rank runs the same plan.
  LocalRun(std::vector<planner::RankProgram> programs, const planner::PlanConfig& config, int64_t rank,
           std::unique_ptr<Communicator> comm, ExecutorOptions options = {}, int threads = 0);
  ~LocalRun();

  // capacity_bytes > 0: fail before the first step if any rank's memory plan exceeds it.
  void initialize(int64_t capacity_bytes = 0);
  int64_t ranks() const { return static_cast<int64_t>(programs_.size()); }
  int64_t microbatches() const { return config_.microbatches; }
  const planner::PlanConfig& config() const { return config_; }
  const std::vector<planner::RankProgram>& programs() const { return programs_; }

  // The rows (indices along dim 0) of input `name` that this process's ranks read in a step,
  // `whole` being its type in the training graph (the global batch): [begin, end), empty
  // when none of them reads it. Each process need load only these (a data-parallel rank's
  // part of the batch; nothing for a pipeline stage that reads no input). After initialize().
  struct Rows {
    int64_t begin = 0, end = 0;
    int64_t count() const { return end - begin; }
  };
  Rows rows(std::string_view name, const TensorType& whole) const;
  // One optimizer step's worth of input `name`: `whole` is its type in the training graph
  // (the global batch) and `data` the bytes of its rows [first_row, first_row + n) (all of
  // them, or at least rows(name)). Each rank gets, for each microbatch, its part: a
  // replica's block of the batch, cut into microbatches (planner::planning_mesh).
  void feed(std::string_view name, const TensorType& whole, std::span<const std::byte> data, int64_t first_row = 0);
  // Runs one optimizer step on every rank; rethrows the error of the rank that failed first
  // (the others stop with it).
  void step();
  // A scalar output (the loss), from the first rank that computes it (sent to every process).
  double scalar_output(std::string_view name);
  // The whole variable, from the shards of its holders (in every process).
  std::vector<std::byte> gather_variable(std::string_view name, const TensorType& global);
  // Every variable block this process's ranks hold (rank first_rank() + i's in [i]), with its
  // place in the whole variable; the data are the live variables (valid until the next step).
  std::vector<std::vector<Shard>> variable_blocks() const;
  // Overwrites every variable of this process's ranks with its block from `checkpoint`
  // (written under any plan). Throws naming the variable the checkpoint lacks or holds in
  // another shape or dtype.
  void load_variables(const Checkpoint& checkpoint);
  // Saves a checkpoint of every rank's variables under `root`: each distinct block once, in
  // the file of the first rank holding it. With ranks in other processes every process calls
  // this at the same step (a directory they all reach): rank 0 starts and commits the save,
  // each process writes its ranks' files; an error anywhere stops every process, each naming
  // what it saw. Returns the committed directory.
  std::string save_checkpoint(const std::string& root, const CheckpointState& state, int keep = 0);
  // The global rank of this process's first rank (0 when it runs them all), and whether the
  // other ranks run elsewhere.
  int64_t first_rank() const { return first_; }
  bool spans_processes() const { return static_cast<int64_t>(ranks_.size()) < ranks(); }
  std::vector<RankMemory> memory() const;
  std::vector<Executor::JitReport> jit_reports() const;
  // Every process's `text`, by the global rank of its first rank (a collective across
  // processes: every process calls it between steps); {text} when this process runs every rank.
  std::vector<std::string> gather_text(const std::string& text);
  // This process's i-th rank (global rank first_rank() + i).
  const Executor& rank(int64_t i) const { return *ranks_.at(static_cast<size_t>(i)); }
  int64_t local_ranks() const { return static_cast<int64_t>(ranks_.size()); }

 private:
  std::vector<planner::RankProgram> programs_;
  planner::PlanConfig config_;
  planner::Mesh mesh_;
  std::unique_ptr<InProcessWorld> world_;          // comm.engine "inprocess"
  std::vector<std::unique_ptr<Communicator>> comms_;  // "gloo": one endpoint per rank
  std::vector<std::unique_ptr<Parallel>> pools_;
  std::vector<std::unique_ptr<Executor>> ranks_;  // global ranks first_, first_ + 1, ...
  int64_t first_ = 0;
  std::vector<int64_t> world_group_;  // 0 .. ranks() - 1
  void check_same_plan();
  std::vector<std::vector<Shard>> plan_blocks() const;  // every rank's blocks, from the plan (no data)
  // Runs a collective outside the steps (the step's loss, a variable); its error names `what`
  // and the step whose results it reads.
  void between_steps(const std::string& what, const std::function<void()>& f);
  void start_ranks(const std::vector<Communicator*>& comm_of, const ExecutorOptions& options, int threads);

  // One thread per rank for the whole run (a step starts no thread and allocates nothing).
  void worker(size_t r);
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t generation_ = 0;  // steps started
  size_t running_ = 0;      // ranks still in the current step
  bool stop_ = false;
  std::vector<std::string> errors_;
  // Per input: each rank's shard offset in one microbatch (empty: the rank does not read it).
  struct Feed {
    std::vector<int64_t> offsets;  // where the rank's block of the whole input starts
    Shape block;                   // the rank's block (all its microbatches)
    int dim = -1;                  // microbatches follow each other along it; -1: all read the block
    bool reads = false;            // the rank's program reads the input
  };
  const std::vector<Feed>& feeds(std::string_view name, const TensorType& whole) const;
  mutable std::map<std::string, std::vector<Feed>, std::less<>> feed_offsets_;
};

}  // namespace tessel::runtime
