// The executor: runs one rank's program from a plan (planner/partition.h), and one device
// as the plan of one rank (planner::one_device). Its stage's schedule of forward and
// backward sections per microbatch, then the apply section, with a compute stream (the
// calling thread) and a communication stream (a thread of its own) ordered by events, so
// collectives run while later compute continues.
//
// Gradients: each backward value the apply section reads is accumulated over the
// microbatches (the first microbatch writes the accumulator, later ones add, the last
// scales by 1/m). The apply section's collectives on such values (the data-parallel
// gradient all-reduces, ZeRO's reduce-scatters) start on the communication stream as soon
// as the last microbatch's backward has finished their inputs; all-reduces over the same
// group are fused into buckets of up to ExecutorOptions::bucket_bytes, in program order,
// which every member of the group shares. A bucket of floating-point gradients is reduced
// in place, its gradients laid out side by side in one block the engine reduces as one
// tensor. The backward runs what others wait for first (what leads to a pipeline send, then
// the nodes that finish a gradient an early collective reduces), so buckets start earlier.
// Forward work that waits for a collective and that only outputs read (the loss
// after its all-reduce over the data-parallel group) runs after the last backward, so the
// compute stream never stops mid-step for it. Recv blocks the compute stream; send copies
// and returns.
//
// Kernels: with the JIT, elementwise chains and the reductions that end them are fused
// (runtime/fusion.h) and run as compiled kernels (runtime/cpu_jit.h); an update computed
// element by element from its variable is written over it.
//
// Memory: before the first step every value instance (value, microbatch) gets an offset in
// one arena from its lifetime over the whole schedule (stashed forward values of the
// microbatches in flight included; a collective's buffers live until it is waited for).
// Variables, constants, inputs (one slot per microbatch) and outputs have buffers of their
// own. Nothing is allocated in step(). Not thread-safe: one thread drives an executor;
// kernels fan out over ExecutorOptions::parallel.
#pragma once

#include <atomic>
#include <deque>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "planner/partition.h"
#include "runtime/communicator.h"
#include "runtime/cpu_jit.h"
#include "runtime/inprocess_comm.h"

namespace tessel::runtime {

struct ExecutorOptions {
  uint64_t seed = 0;                // mixed into initializers and dropout masks
  bool use_blas = true;             // false: reference kernels for matrix products
  // Fuse elementwise chains and run them as JIT-compiled kernels. false: every op runs its
  // reference kernel (for debugging and tests).
  bool jit = true;
  Parallel* parallel = nullptr;     // kernels' threads; null: the calling thread only. Not owned.
  int64_t bucket_bytes = 25 << 20;  // gradient all-reduce buckets (PyTorch DDP's default)
  bool overlap = true;              // false: collectives run on the compute stream, in place
  // full: each layer's forward runs again before its backward (only its input is kept);
  // selective: only the attention core runs again. The program's recompute marks say where.
  planner::Recompute recompute = planner::Recompute::none;
  bool profile = false;             // time every kernel (see Executor::profile())
  // Record when each op of the step ran on either stream (see Executor::timeline()): two
  // clock reads per op, nothing allocated in step().
  bool timeline = false;
};

// One interval of a step on one rank, measured (ExecutorOptions::timeline).
struct StepEvent {
  enum class Kind : uint8_t { forward, backward, recompute, optimizer, wait, recv, send, collective, other };
  bool comm = false;          // on the communication stream; else the compute stream
  Kind kind = Kind::other;
  const Node* node = nullptr;  // what ran (a fused kernel: its last node; a collective: the first node it serves)
  std::string what;            // "fc1/matmul (mb 1)", "all_reduce of 3 tensors [...]", "wait all_reduce ..."
  int64_t start_ns = 0, end_ns = 0;  // std::chrono::steady_clock, since its epoch
};
const char* step_event_kind_name(StepEvent::Kind k);
// The last step of a rank split by what its compute stream did (ExecutorOptions::timeline), in
// seconds: they sum to step_s.
struct StepBreakdown {
  double step_s = 0;          // Executor::step(), start to end
  double compute_s = 0;       // forward, backward and recomputed kernels, sends, accumulations
  double optimizer_s = 0;     // the apply section's kernels
  double exposed_comm_s = 0;  // waiting for a collective (or running one in place, without overlap)
  double bubble_s = 0;        // waiting in a recv for another stage
  double other_s = 0;         // between ops: dispatch, the executor's own work
};
struct StepTimeline {
  int64_t start_ns = 0, end_ns = 0;  // Executor::step() on the compute stream
  std::vector<StepEvent> events;     // the compute stream's in program order, then the comm stream's
};

struct RankMemory {
  int64_t arena_bytes = 0;       // high-water mark of the planned arena
  int64_t persistent_bytes = 0;  // variables, constants, input slots, outputs
  int64_t total() const { return arena_bytes + persistent_bytes; }
  struct Buffer {
    std::string name;  // "block0/attn/matmul (microbatch 2)", "fc1/weight"
    int64_t bytes = 0;
  };
  std::vector<Buffer> largest;  // the largest buffers, largest first
};

class Executor {
 public:
  // Rank program.rank of a world that comm connects. program (unless moved in) and comm are
  // not owned and outlive this.
  Executor(const planner::RankProgram& program, Communicator& comm, ExecutorOptions options = {});
  Executor(planner::RankProgram&& program, Communicator& comm, ExecutorOptions options = {});
  // A program of one rank (planner::one_device): a world of one, no communicator to give.
  explicit Executor(const planner::RankProgram& program, ExecutorOptions options = {});
  explicit Executor(planner::RankProgram&& program, ExecutorOptions options = {});
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Plans and allocates memory, fills variables (stored data or initializer) and constants,
  // makes the communicator's groups, starts the communication stream. Throws if the plan
  // needs more than capacity_bytes (0: no limit), naming this rank and its largest buffers.
  void initialize(int64_t capacity_bytes = 0);

  int64_t microbatches() const { return microbatches_; }
  // The program that runs: with jit, the given one after the fusion pass (nodes keep their
  // names; fused kernels take their last node's name).
  const planner::RankProgram& program() const { return program_; }
  struct JitReport {
    int64_t fused_nodes = 0, nodes_fused = 0;  // fused kernels; the nodes they replace
    int64_t kernels = 0;                        // distinct fused kernels this rank runs
    int64_t compiled = 0, disk_hits = 0;        // compiled by LLVM here; loaded from the disk cache
    double compile_s = 0;                       // fusion and compilation
    int64_t updates_in_place = 0;  // updates written over their variables (no copy after the step)
  };
  const JitReport& jit_report() const { return jit_report_; }
  // Where microbatch `mb`'s part of an input goes (write before step()). Null data if the
  // program does not read that input.
  TensorRef input(std::string_view name, int64_t microbatch = 0);
  // One optimizer step: the schedule's sections, then the variable updates. On failure
  // aborts the communicator (so the other ranks stop) and rethrows.
  void step();
  // After step(): a scalar forward output (the loss) is the mean over microbatches, any
  // other output its last microbatch's value. Null data if the program has no such output.
  TensorRef output(std::string_view name);
  TensorRef variable(std::string_view name);  // null data if the program has none
  // A value of the graph given (before fusion), after initialize(): a variable, constant
  // or input (its last microbatch's slot), an output, or another value as the apply
  // section reads it (the last microbatch's forward value, the accumulated gradient).
  // Values that are none of these share arena space: their contents are meaningful only
  // until a later value reuses it. Throws naming the node when the value has no buffer (it
  // lives inside a fused kernel, or nothing the program computes needs it).
  TensorRef value(Value v);
  bool has_buffer(Value v) const;
  // Copies every variable's current value into g's stored data, by name, so that
  // save_graph() embeds the trained parameters; variables g lacks or has in another type
  // are skipped. (A sharded rank holds only its shards: LocalRun::gather_variable.)
  void export_variables(Graph& g) const;
  const RankMemory& memory() const { return memory_; }
  // The step's work in order, a line per item ("kernel fc2/grad/matmul (microbatch 1)",
  // "launch all_reduce of 3 tensors [fc3/weight/grad, ...]", "wait all_reduce ..."): what
  // runs on which stream and when, for tests and for reading a plan's execution.
  std::string describe() const;

  // With ExecutorOptions::profile: wall time per op type over all steps so far, largest
  // first; and the same per node that runs (fused kernels under their last node's name),
  // with its input and output shapes ("[256,784] [784,1024] -> [256,1024]").
  struct OpTime {
    std::string op;
    int64_t calls = 0;
    double ms = 0;
  };
  std::vector<OpTime> profile() const;
  struct NodeTime {
    std::string node, op, shapes;
    int64_t calls = 0;
    double ms = 0;
    double bytes = 0;  // read and written by one call (its inputs and outputs)
  };
  std::vector<NodeTime> node_profile() const;
  // With ExecutorOptions::timeline: the last step's ops as they ran, both streams. Empty before
  // the first step.
  StepTimeline timeline() const;
  StepBreakdown breakdown() const;  // of the same step; zeros before the first

  struct Op;
  struct CommTask;
  struct Buffer;

 private:
  struct Builder;  // build()'s passes
  Executor(std::unique_ptr<planner::RankProgram> owned, const planner::RankProgram* program, Communicator* comm,
           ExecutorOptions options);
  void build();
  void write_updates_in_place();
  void reduce_buckets_in_place();
  void compile_kernels();
  void comm_loop();
  void run_task(const CommTask& t);
  void wait_event(int64_t event);
  int32_t buffer_of(Value v) const;  // v of the program that runs; -1: none
  Value running(Value v) const;      // a value of the program given, in the one that runs (invalid: fused away)

  std::unique_ptr<planner::RankProgram> own_program_;  // a program moved in
  const planner::RankProgram& source_;           // the program given
  std::unique_ptr<InProcessWorld> solo_;         // the world of one, without a communicator
  JitReport jit_report_;
  std::vector<std::vector<Value>> fused_values_;  // with jit: per source node and output, its value after fusion
  std::unique_ptr<planner::RankProgram> fused_;   // with jit
  const planner::RankProgram& program_;           // the program that runs
  const Graph& graph_;
  Communicator& comm_;
  ExecutorOptions options_;
  std::unique_ptr<Parallel> serial_;
  Parallel* parallel_ = nullptr;
  int64_t microbatches_ = 1;

  std::vector<Buffer> buffers_;
  std::deque<TensorType> block_types_;  // the types of buckets reduced as one block (stable addresses)
  std::vector<Op> ops_;
  std::map<int32_t, std::pair<std::unique_ptr<ops::FusedKernelDesc>, FusedFn>> kernels_;  // per fused node
  std::vector<CommTask> tasks_;  // in launch order; the same every step
  std::vector<std::pair<int32_t, int32_t>> updates_;  // (variable buffer, value buffer)
  std::vector<std::vector<int32_t>> input_slots_;     // per node: buffer per microbatch
  std::vector<int32_t> output_buffer_;                // per node with a graph output, else -1
  std::vector<int32_t> persistent_;                   // per node: its buffer, or -1
  std::map<std::pair<int32_t, int32_t>, int32_t> read_by_apply_;  // root value -> the instance the apply section reads
  std::vector<std::unique_ptr<std::byte[], void (*)(std::byte*)>> owned_;
  RankMemory memory_;
  bool initialized_ = false;

  // The communication stream.
  std::thread comm_thread_;
  std::atomic<int64_t> launched_{0}, completed_{0};
  std::atomic<bool> stop_{false}, failed_{false};
  std::exception_ptr comm_error_;
  int64_t steps_ = 0;
  // ExecutorOptions::timeline: per op of ops_ and per task of tasks_, the last step's start and end.
  std::vector<int64_t> op_start_, op_end_, task_start_, task_end_;
  int64_t step_start_ = 0, step_end_ = 0;
};

}  // namespace tessel::runtime
