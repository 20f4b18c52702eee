// The one interface every communication engine implements: in-process (ranks are threads
// of one process, runtime/inprocess_comm.h), and later Gloo, MPI and NCCL. Collectives
// name their group by the global ranks it spans, in order (a member's index in the group
// is its position in that list), exactly as the partitioner writes them into programs.
//
// Contract: every member of a group makes the same collective calls on that group in the
// same order, with the same shapes and dtypes; a mismatch is reported as a desynchronised
// group naming both ranks. Every call gives up after the timeout, naming the op, the group
// and the ranks that never arrived, and stops every other rank (abort) so none waits for
// the dead one. One Communicator object serves one rank; its calls may come from one
// thread at a time per group (the runtime's communication stream) plus send/recv from
// another.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "graph/tensor_ref.h"

namespace tessel::runtime {

enum class ReduceOp : uint8_t { sum, mean, max };
std::string_view reduce_op_name(ReduceOp op);

struct CommOptions {
  double timeout_s = 300;  // per call
  // Ranks that are threads of one process (LocalRun): "inprocess" (shared memory) or
  // "gloo" (each rank its own endpoint over loopback TCP, as separate processes would be).
  std::string engine = "inprocess";
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t size() const = 0;
  virtual std::string_view engine() const = 0;

  // Reduces each tensor of `in` over the group into the same tensor of `out` (which may be
  // `in`): a bucket of several gradients goes as one call. Every member passes tensors of
  // the same sizes and dtype. mean = sum scaled by 1 / group size.
  virtual void all_reduce(std::span<const TensorRef> in, std::span<const TensorRef> out, ReduceOp op,
                          std::span<const int64_t> group) = 0;
  void all_reduce(const TensorRef& in, const TensorRef& out, ReduceOp op, std::span<const int64_t> group) {
    all_reduce(std::span<const TensorRef>(&in, 1), std::span<const TensorRef>(&out, 1), op, group);
  }
  // Member i keeps slice i (along `dim`) of the reduction.
  virtual void reduce_scatter(const TensorRef& in, const TensorRef& out, int dim, ReduceOp op,
                              std::span<const int64_t> group) = 0;
  // Every member gets the members' inputs concatenated along `dim`, in group order.
  virtual void all_gather(const TensorRef& in, const TensorRef& out, int dim, std::span<const int64_t> group) = 0;
  // Slice j (along split_dim) of every member's input goes to member j, which concatenates
  // what it receives along concat_dim in group order.
  virtual void all_to_all(const TensorRef& in, const TensorRef& out, int split_dim, int concat_dim,
                          std::span<const int64_t> group) = 0;
  // Every member gets the input of member `root` (an index in the group).
  virtual void broadcast(const TensorRef& in, const TensorRef& out, int64_t root, std::span<const int64_t> group) = 0;
  virtual void barrier(std::span<const int64_t> group) = 0;

  // Before the first step: the groups this rank will call collectives on, every member
  // giving its groups in lexicographic order of their rank lists (Executor does). Engines
  // whose groups are made collectively (Gloo, MPI, NCCL) make them all now: processing the
  // groups in one global order cannot deadlock (the smallest unfinished group always has all
  // its members at it), where making each at its first use could, when ranks meet their
  // groups in different orders. The in-process engine needs nothing.
  virtual void connect_groups(std::span<const std::vector<int64_t>> groups) { (void)groups; }

  // Point to point between global ranks. Messages with the same (from, to, tag) arrive in
  // the order they were sent. send never waits for its receiver (every engine copies and
  // delivers in the background: crossed pipeline sends cannot deadlock) and returns once the
  // data may be reused; recv blocks until the message is in place.
  virtual void send(const TensorRef& t, int64_t peer, int64_t tag) = 0;
  // Before the first step: this rank will send up to `count` messages of `bytes` to `peer`
  // under `tag` per step, so an engine that buffers them can make room once.
  virtual void reserve_sends(int64_t peer, int64_t tag, int64_t bytes, int64_t count) {
    (void)peer, (void)tag, (void)bytes, (void)count;
  }
  virtual void recv(const TensorRef& t, int64_t peer, int64_t tag) = 0;

  // Stops every rank's pending and future calls with an error carrying `why`. A rank that
  // fails calls this so that the others stop at once instead of at their timeouts.
  virtual void abort(const std::string& why) = 0;
};

}  // namespace tessel::runtime
