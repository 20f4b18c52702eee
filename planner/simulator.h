// Discrete-event simulation of one training step: every rank's tasks on a compute stream
// and a communication stream. Overlap of gradient all-reduce with backward, pipeline
// bubbles and waiting on other ranks come out of the run, not out of a formula.
//
// Execution model (that of CUDA streams):
//  - Each rank has two streams. A stream runs one task at a time, in the order the tasks
//    were added to it; the two streams of a rank run concurrently.
//  - A task starts as soon as every stream it occupies has finished the task before it
//    and every dependency has ended: start = max(those end times); end = start + duration.
//  - A collective (non-empty `group`) occupies its stream (normally comm) on every rank
//    of the group at once: it starts when all those streams are free and its deps are
//    done, and ends duration_s later on all of them.
//  - Nothing else orders tasks: no task waits for a stream that it does not occupy. A task on
//    Stream::none occupies none (a point in time after its deps: give it no duration).
//  - With set_compute_concurrency(k), compute tasks of different ranks share k ranks' worth of
//    cores: a compute task's duration_s is its work alone, done at speed min(1, k / busy) while
//    `busy` compute tasks run (its end comes later than start + duration_s when busy > k).
//
// Definitions of the results, per rank r, over [0, step_time]:
//  - step_time_s     = max end over all tasks (0 when there are none);
//  - compute_s       = total busy time of r's compute stream (its tasks never overlap);
//  - forward_s, ...  = the part of compute_s spent in tasks of that kind;
//  - comm_s          = total busy time of r's comm stream (union of its busy intervals);
//  - idle_s          = step_time_s - compute_s (the compute stream is idle);
//  - exposed_comm_s  = measure of (comm busy) ∩ (compute idle): communication that the
//                      compute stream waits behind instead of hiding it;
//  - bubble_s        = idle_s - exposed_comm_s: compute idle while r's own comm stream is
//                      idle too, i.e. waiting on other ranks (pipeline fill and drain);
//    so compute_s + exposed_comm_s + bubble_s = step_time_s.
//  - peak_memory_bytes = max over time of base_memory_bytes[r] plus the running sum of
//    memory deltas of tasks whose `rank` is r: a positive delta is allocated when its task
//    starts, a negative one freed when its task ends, released_bytes freed when it starts;
//    at equal times frees come first.
//
// A Simulation is a plain value: not thread-safe to mutate, but run() and
// chrome_trace_json() are const and may be called concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessel::planner {

// none: a bookkeeping task (a memory free at a point of the program) that occupies no stream,
// starts when its deps end and takes no time.
enum class Stream : uint8_t { compute, comm, none };
enum class TaskKind : uint8_t {
  forward,
  backward,
  recompute,
  optimizer,
  collective,
  send,
  recv,
  other
};

const char* stream_name(Stream s);
const char* task_kind_name(TaskKind k);

struct Task {
  std::string name;  // shown in traces and errors, e.g. "stage1/mb3/fwd"
  int64_t rank = 0;
  Stream stream = Stream::compute;
  TaskKind kind = TaskKind::other;
  double duration_s = 0;
  std::vector<int64_t> deps;  // indices of tasks that must end first (any rank)
  // Non-empty: a collective occupying `stream` on every rank listed (distinct, including
  // `rank`). Empty: a single-rank task on `rank`.
  std::vector<int64_t> group;
  double memory_delta_bytes = 0;  // on `rank`: allocated at start (>0) or freed at end (<0)
  double transient_bytes = 0;     // on `rank`: held from start to end (its working buffers)
  double released_bytes = 0;      // on `rank`: freed when it starts (what it takes over from before)
  // Extra time when the task starts on a stream left idle (on any of its ranks): the threads
  // that run it were asleep and must be woken, which on busy cores takes a while. Tasks queued
  // behind another on their stream start without it.
  double wake_s = 0;
};

class Simulation {
 public:
  // `base_memory_bytes`: static memory per rank (parameters, optimizer state); empty = 0.
  explicit Simulation(int64_t ranks, std::vector<double> base_memory_bytes = {});

  // Appends `t` to the end of its stream(s) and returns its index. Deps must name earlier
  // tasks; durations must be finite and >= 0; ranks in range. Throws Error naming the task.
  int64_t add(Task t);
  // Makes `task` wait for `dep`, which may have been added later: lets a planner emit one
  // rank's program after another (a stage's backward waits on the next stage's). A cycle
  // this creates is a deadlock, reported by run().
  void add_dep(int64_t task, int64_t dep);
  // Ranks whose compute shares one pool of cores: at most `ranks` of them compute at full
  // speed at once; when more compute, each goes at concurrency / (ranks computing) of its
  // speed (processor sharing: a task's duration_s is its time alone). Communication is not
  // slowed. 0 (the default): every rank has its own cores.
  void set_compute_concurrency(double ranks);

  struct Result {
    double step_time_s = 0;              // makespan
    std::vector<double> start_s, end_s;  // per task
    struct RankStats {
      double compute_s = 0, forward_s = 0, backward_s = 0, recompute_s = 0, optimizer_s = 0;
      double exposed_comm_s = 0, comm_s = 0, bubble_s = 0, idle_s = 0, peak_memory_bytes = 0;
    };
    std::vector<RankStats> ranks;  // see the definitions at the top of this file
  };
  // Deterministic; O((tasks + deps + group members) + memory events·log). Throws Error on
  // a deadlock (a cycle through stream order and deps), naming the tasks on the cycle.
  Result run() const;

  // Chrome trace format (chrome://tracing, Perfetto): {"traceEvents":[...]} with one
  // complete event (ph "X") per task and occupied rank, pid = rank, tid = stream (named
  // "compute"/"comm" by thread_name metadata), ts/dur in µs, args {kind, task}.
  std::string chrome_trace_json(const Result& r) const;

  const std::vector<Task>& tasks() const { return tasks_; }
  int64_t ranks() const { return ranks_; }

 private:
  int64_t ranks_;
  double concurrency_ = 0;
  std::vector<double> base_memory_;
  std::vector<Task> tasks_;
};

}  // namespace tessel::planner
