#include "runtime/mpi_comm.h"

// The C API only: the C++ bindings (deprecated, and in a library of their own) are left out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "graph/error.h"
#include "graph/shape.h"
#include "runtime/block_copy.h"
#include "runtime/collective_call.h"

namespace tessel::runtime {

namespace {

using Clock = std::chrono::steady_clock;

std::string mpi_error(int code) {
  char b[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(code, b, &n);
  return std::string(b, static_cast<size_t>(n));
}

MPI_Datatype mpi_type(DType t, std::string_view what) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    default:
      throw Error(std::string(what) + " of " + std::string(dtype_name(t)) + ": the MPI engine reduces f32, f64, i32 and i64");
  }
}

template <class F>
void with_type(DType t, F&& f) {
  switch (t) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::i32: f(int32_t{}); return;
    case DType::i64: f(int64_t{}); return;
    default: return;
  }
}

template <class T>
void scale_mean(void* p, size_t n, int k) {
  T* x = static_cast<T*>(p);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<T>(x[i] / static_cast<T>(k));
}

// A tag of the partitioner's 64-bit space on MPI's (at least 2^31 - 1 in OpenMPI).
int fold_tag(int64_t tag, int ub) {
  const uint64_t t = static_cast<uint64_t>(tag);
  return static_cast<int>((t ^ (t >> 31)) % static_cast<uint64_t>(ub));
}

// MPI is initialized once per process and finalized at its exit (a process may make
// several endpoints one after another: a test suite, a verify after training), unless an
// endpoint failed: a process that exits without finalizing makes mpirun stop the others.
std::atomic<bool> g_mpi_failed{false};

void finalize_at_exit() {
  int done = 0;
  MPI_Finalized(&done);
  if (!done && !g_mpi_failed) MPI_Finalize();
}

class MpiEndpoint final : public Communicator {
 public:
  explicit MpiEndpoint(const CommOptions& o) : options_(o) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      if (rc != MPI_SUCCESS) throw Error("MPI_Init_thread: " + mpi_error(rc));
      if (provided < MPI_THREAD_MULTIPLE)
        throw Error("this MPI library gives no MPI_THREAD_MULTIPLE; tessel calls it from a compute and a "
                    "communication thread");
      std::atexit(finalize_at_exit);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int r = 0, n = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    rank_ = r, size_ = n;
    MPI_Comm_dup(MPI_COMM_WORLD, &p2p_);
    int* ub = nullptr;
    int flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    tag_ub_ = flag && ub ? *ub : 32767;
    timeout_ = std::chrono::milliseconds(static_cast<int64_t>(options_.timeout_s * 1000));
  }

  ~MpiEndpoint() override {
    // Sends still in flight get their delivery; the communicators go (MPI stays initialized
    // for the process: finalize_at_exit), unless the job failed.
    if (aborted_) {
      g_mpi_failed = true;
      return;
    }
    {
      std::lock_guard lk(send_mu_);
      for (auto& m : in_flight_) MPI_Wait(&m.req, MPI_STATUS_IGNORE);
      in_flight_.clear();
    }
    for (auto& [k, c] : groups_)
      if (c.comm != MPI_COMM_NULL && c.comm != MPI_COMM_SELF) MPI_Comm_free(&c.comm);
    MPI_Comm_free(&p2p_);
  }

  int64_t rank() const override { return rank_; }
  int64_t size() const override { return size_; }
  std::string_view engine() const override { return "mpi"; }

  void connect_groups(std::span<const std::vector<int64_t>> groups) override {
    for (const auto& g : groups) member(g, "connecting groups before the first step");
  }

  void all_reduce(std::span<const TensorRef> in, std::span<const TensorRef> out, ReduceOp op,
                  std::span<const int64_t> group) override {
    if (std::string e = malformed_all_reduce(in, out); !e.empty()) fail(e);
    int64_t total = 0;
    for (const TensorRef& t : in) total += t.numel;
    Group& c = member(group, "all_reduce");
    agree(c, Call{Collective::all_reduce, in, -1, -1, static_cast<int>(op)}, group);
    if (in.empty() || total == 0) return;
    const MPI_Datatype dt = mpi_type(in[0].dtype, "all_reduce");
    const size_t es = dtype_size(in[0].dtype);
    void* buf = nullptr;
    if (in.size() == 1) {
      if (out[0].data != in[0].data) copy_bytes(out[0].data, in[0].data, static_cast<size_t>(in[0].bytes()));
      buf = out[0].data;
    } else {
      staging_.resize(static_cast<size_t>(total) * es);
      size_t at = 0;
      for (auto& x : in) {
        copy_bytes(staging_.data() + at, x.data, static_cast<size_t>(x.bytes()));
        at += static_cast<size_t>(x.bytes());
      }
      buf = staging_.data();
    }
    if (c.k > 1) {
      MPI_Request req;
      check(MPI_Iallreduce(MPI_IN_PLACE, buf, static_cast<int>(total), dt, op == ReduceOp::max ? MPI_MAX : MPI_SUM, c.comm,
                           &req),
            "all_reduce", group);
      wait(req, "all_reduce", group);
    }
    if (op == ReduceOp::mean) with_type(in[0].dtype, [&](auto t) { scale_mean<decltype(t)>(buf, static_cast<size_t>(total), c.k); });
    if (in.size() > 1) {
      size_t at = 0;
      for (auto& x : out) {
        copy_bytes(x.data, staging_.data() + at, static_cast<size_t>(x.bytes()));
        at += static_cast<size_t>(x.bytes());
      }
    }
  }

  void reduce_scatter(const TensorRef& in, const TensorRef& out, int dim, ReduceOp op,
                      std::span<const int64_t> group) override {
    if (std::string e = malformed_reduce_scatter(in, out, dim, static_cast<int64_t>(group.size())); !e.empty()) fail(e);
    Group& c = member(group, "reduce_scatter");
    agree(c, Call{Collective::reduce_scatter, std::span<const TensorRef>(&in, 1), dim, -1, static_cast<int>(op)}, group);
    if (in.numel == 0) return;
    const MPI_Datatype dt = mpi_type(in.dtype, "reduce_scatter");
    const size_t es = dtype_size(in.dtype);
    // Chunk j of the packed input is member j's share, laid out as its output is.
    staging_.resize(static_cast<size_t>(in.numel) * es);
    blocks(static_cast<std::byte*>(in.data), staging_.data(), around(in.shape, dim), c.k, es, true);
    MPI_Request req;
    check(MPI_Ireduce_scatter_block(staging_.data(), out.data, static_cast<int>(out.numel), dt,
                                    op == ReduceOp::max ? MPI_MAX : MPI_SUM, c.comm, &req),
          "reduce_scatter", group);
    wait(req, "reduce_scatter", group);
    if (op == ReduceOp::mean) with_type(in.dtype, [&](auto t) { scale_mean<decltype(t)>(out.data, static_cast<size_t>(out.numel), c.k); });
  }

  void all_gather(const TensorRef& in, const TensorRef& out, int dim, std::span<const int64_t> group) override {
    if (std::string e = malformed_all_gather(in, out, dim, static_cast<int64_t>(group.size())); !e.empty()) fail(e);
    Group& c = member(group, "all_gather");
    agree(c, Call{Collective::all_gather, std::span<const TensorRef>(&in, 1), dim}, group);
    if (in.numel == 0) return;
    const size_t es = dtype_size(in.dtype);
    const Around a = around(in.shape, dim);
    const bool direct = a.outer == 1;  // the members' inputs lie side by side in the output
    std::byte* dst = static_cast<std::byte*>(out.data);
    if (!direct) {
      received_.resize(static_cast<size_t>(out.numel) * es);
      dst = received_.data();
    }
    MPI_Request req;
    check(MPI_Iallgather(in.data, static_cast<int>(in.bytes()), MPI_BYTE, dst, static_cast<int>(in.bytes()), MPI_BYTE,
                         c.comm, &req),
          "all_gather", group);
    wait(req, "all_gather", group);
    if (!direct) {
      Around o = a;
      o.dim *= c.k;
      blocks(static_cast<std::byte*>(out.data), received_.data(), o, c.k, es, false);
    }
  }

  void all_to_all(const TensorRef& in, const TensorRef& out, int split_dim, int concat_dim,
                  std::span<const int64_t> group) override {
    if (std::string e = malformed_all_to_all(in, out, split_dim, concat_dim, static_cast<int64_t>(group.size())); !e.empty())
      fail(e);
    Group& c = member(group, "all_to_all");
    agree(c, Call{Collective::all_to_all, std::span<const TensorRef>(&in, 1), split_dim, concat_dim}, group);
    if (in.numel == 0) return;
    const size_t es = dtype_size(in.dtype);
    staging_.resize(static_cast<size_t>(in.numel) * es);
    received_.resize(static_cast<size_t>(in.numel) * es);
    blocks(static_cast<std::byte*>(in.data), staging_.data(), around(in.shape, split_dim), c.k, es, true);
    const int chunk = static_cast<int>(staging_.size() / static_cast<size_t>(c.k));
    MPI_Request req;
    check(MPI_Ialltoall(staging_.data(), chunk, MPI_BYTE, received_.data(), chunk, MPI_BYTE, c.comm, &req), "all_to_all",
          group);
    wait(req, "all_to_all", group);
    blocks(static_cast<std::byte*>(out.data), received_.data(), around(out.shape, concat_dim), c.k, es, false);
  }

  void broadcast(const TensorRef& in, const TensorRef& out, int64_t root, std::span<const int64_t> group) override {
    if (std::string e = malformed_broadcast(in, out, root, static_cast<int64_t>(group.size())); !e.empty()) fail(e);
    Group& c = member(group, "broadcast");
    agree(c, Call{Collective::broadcast, std::span<const TensorRef>(&in, 1), -1, -1, -1, root}, group);
    if (c.me == root && out.data != in.data) copy_bytes(out.data, in.data, static_cast<size_t>(in.bytes()));
    if (c.k == 1 || in.numel == 0) return;
    MPI_Request req;
    check(MPI_Ibcast(out.data, static_cast<int>(out.bytes()), MPI_BYTE, static_cast<int>(root), c.comm, &req), "broadcast",
          group);
    wait(req, "broadcast", group);
  }

  void barrier(std::span<const int64_t> group) override {
    Group& c = member(group, "barrier");
    agree(c, Call{Collective::barrier, {}}, group);
    if (c.k == 1) return;
    MPI_Request req;
    check(MPI_Ibarrier(c.comm, &req), "barrier", group);
    wait(req, "barrier", group);
  }

  void send(const TensorRef& t, int64_t peer, int64_t tag) override {
    check_peer(peer, "send");
    stopped_check("send to rank " + std::to_string(peer));
    reap(false);
    Outgoing m;
    {
      std::lock_guard lk(send_mu_);
      auto& spare = spare_[{peer, tag}];
      if (!spare.empty()) {
        m.data = std::move(spare.back());
        spare.pop_back();
      }
    }
    const size_t bytes = static_cast<size_t>(t.bytes());
    m.peer = peer, m.tag = tag;
    m.data.resize(std::max<size_t>(bytes, 1));
    copy_bytes(m.data.data(), t.data, bytes);
    const int rc = MPI_Isend(m.data.data(), static_cast<int>(bytes), MPI_BYTE, static_cast<int>(peer),
                             fold_tag(tag, tag_ub_), p2p_, &m.req);
    if (rc != MPI_SUCCESS) fail("send to rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + "): " + mpi_error(rc));
    std::lock_guard lk(send_mu_);
    in_flight_.push_back(std::move(m));
  }

  void reserve_sends(int64_t peer, int64_t tag, int64_t bytes, int64_t count) override {
    std::lock_guard lk(send_mu_);
    auto& spare = spare_[{peer, tag}];
    while (static_cast<int64_t>(spare.size()) < count) spare.emplace_back(static_cast<size_t>(std::max<int64_t>(bytes, 1)));
  }

  void recv(const TensorRef& t, int64_t peer, int64_t tag) override {
    check_peer(peer, "recv");
    const std::string what = "recv from rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ")";
    stopped_check(what);
    MPI_Request req;
    const int rc = MPI_Irecv(t.data, static_cast<int>(t.bytes()), MPI_BYTE, static_cast<int>(peer), fold_tag(tag, tag_ub_),
                             p2p_, &req);
    if (rc != MPI_SUCCESS) fail(what + ": " + mpi_error(rc));
    wait_for(req, what);
    reap(false);
  }

  void abort(const std::string& why) override {
    std::lock_guard lk(abort_mu_);
    if (aborted_) return;
    why_ = why;
    aborted_ = true;  // calls waiting here stop; the process exits unfinalized and mpirun stops the job
  }

 private:
  struct Group {
    MPI_Comm comm = MPI_COMM_NULL;
    int me = -1, k = 0;
    int64_t calls = 0;
    std::vector<int64_t> headers;
  };
  struct Outgoing {
    int64_t peer = 0, tag = 0;
    std::vector<std::byte> data;
    MPI_Request req = MPI_REQUEST_NULL;
  };

  std::string who() const { return "rank " + std::to_string(rank_); }
  [[noreturn]] void fail(const std::string& msg) {
    const std::string m = who() + ": " + msg;
    abort(m);
    throw Error(m);
  }
  void check(int rc, std::string_view op, std::span<const int64_t> group) {
    if (rc != MPI_SUCCESS) fail(std::string(op) + " over ranks " + ranks_str(group) + ": " + mpi_error(rc));
  }
  void check_peer(int64_t peer, std::string_view op) {
    if (std::string e = malformed_peer(peer, rank_, size_, op); !e.empty()) fail(e);
  }
  void stopped_check(const std::string& what) {
    std::lock_guard lk(abort_mu_);
    if (aborted_) throw Error(who() + ": " + what + " stopped: " + why_);
  }

  std::string timeout_str() const {
    char b[32];
    std::snprintf(b, sizeof b, "%g s", options_.timeout_s);
    return b;
  }
  // Waits for a nonblocking call: done, aborted, or past the timeout.
  void wait_for(MPI_Request& req, const std::string& what) {
    const auto deadline = Clock::now() + timeout_;
    for (int spins = 0;; ++spins) {
      int done = 0;
      const int rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) fail(what + ": " + mpi_error(rc));
      if (done) return;
      stopped_check(what);
      if (Clock::now() >= deadline)
        fail(what + " timed out after " + timeout_str() + " (a rank stopped participating; mpirun stops the job)");
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  void wait(MPI_Request& req, std::string_view op, std::span<const int64_t> group) {
    wait_for(req, std::string(op) + " over ranks " + ranks_str(group));
  }

  // Sends delivered so far give their buffers back; all=true waits for every one.
  void reap(bool all) {
    std::lock_guard lk(send_mu_);
    while (!in_flight_.empty()) {
      int done = 0;
      if (all) MPI_Wait(&in_flight_.front().req, MPI_STATUS_IGNORE), done = 1;
      else MPI_Test(&in_flight_.front().req, &done, MPI_STATUS_IGNORE);
      if (!done) return;
      Outgoing& m = in_flight_.front();
      spare_[{m.peer, m.tag}].push_back(std::move(m.data));
      in_flight_.pop_front();
    }
  }

  void agree(Group& c, const Call& call, std::span<const int64_t> group) {
    const int64_t seq = c.calls++;
    if (c.k <= 1) return;
    const int64_t mine[2] = {seq, static_cast<int64_t>(call.fingerprint() >> 1)};
    c.headers.resize(static_cast<size_t>(2 * c.k));
    MPI_Request req;
    check(MPI_Iallgather(mine, 2, MPI_INT64_T, c.headers.data(), 2, MPI_INT64_T, c.comm, &req), collective_name(call.op), group);
    wait(req, collective_name(call.op), group);
    bool same = true;
    for (int q = 0; q < c.k; ++q) same &= c.headers[2 * q] == mine[0] && c.headers[2 * q + 1] == mine[1];
    if (same) return;
    constexpr int kDesc = 240;
    std::string desc = call.str().substr(0, kDesc);
    desc.resize(kDesc, '\0');
    std::vector<char> all(static_cast<size_t>(kDesc * c.k));
    check(MPI_Iallgather(desc.data(), kDesc, MPI_CHAR, all.data(), kDesc, MPI_CHAR, c.comm, &req), collective_name(call.op), group);
    wait(req, collective_name(call.op), group);
    std::string sides;
    for (int q = 0; q < c.k; ++q)
      sides += std::string(q ? "; " : "") + "rank " + std::to_string(group[q]) + " calls " +
               std::string(all.data() + q * kDesc, strnlen(all.data() + q * kDesc, kDesc)) + " (its call " +
               std::to_string(c.headers[2 * q] + 1) + " on this group)";
    fail(std::string(collective_name(call.op)) + " over ranks " + ranks_str(group) + ": the members disagree, caught before any data moved: " + sides);
  }

  // The group's communicator, made by its members together on first use (or in
  // connect_groups, before the first step).
  Group& member(std::span<const int64_t> ranks, std::string_view op) {
    bool in = false;
    for (int64_t r : ranks) {
      if (r < 0 || r >= size_)
        fail(std::string(op) + ": group " + ranks_str(ranks) + " names rank " + std::to_string(r) + " of a world of " +
             std::to_string(size_));
      in |= r == rank_;
    }
    if (!in) fail(std::string(op) + ": this rank is not in the group " + ranks_str(ranks));
    stopped_check(std::string(op) + " over ranks " + ranks_str(ranks));
    std::vector<int64_t> key(ranks.begin(), ranks.end());
    std::lock_guard lk(groups_mu_);
    auto it = groups_.find(key);
    if (it != groups_.end()) return it->second;
    Group g;
    g.k = static_cast<int>(ranks.size());
    for (int i = 0; i < g.k; ++i)
      if (ranks[i] == rank_) g.me = i;
    if (g.k == 1) {
      g.comm = MPI_COMM_SELF;  // a group of one: MPI's own, so every call works alike
    } else {
      MPI_Group world, sub;
      MPI_Comm_group(MPI_COMM_WORLD, &world);
      std::vector<int> r(ranks.begin(), ranks.end());
      MPI_Group_incl(world, g.k, r.data(), &sub);
      MPI_Group_free(&world);
      // Members only (MPI-3), under a tag every member derives alike from the group. MPI's
      // call waits for every member with no timeout of its own: it runs on a thread of its
      // own, waited for under the timeout; a member that never joins fails this rank (and,
      // since it exits unfinalized, the job) naming the group.
      uint64_t h = 1469598103934665603ull;
      for (int64_t x : ranks) h = (h ^ static_cast<uint64_t>(x)) * 1099511628211ull;
      struct Made {
        std::mutex mu;
        std::condition_variable cv;
        bool done = false;
        int rc = MPI_SUCCESS;
        MPI_Comm comm = MPI_COMM_NULL;
      };
      auto made = std::make_shared<Made>();
      std::thread([made, sub, tag = static_cast<int>(h % 32768)]() mutable {
        MPI_Comm comm = MPI_COMM_NULL;
        const int rc = MPI_Comm_create_group(MPI_COMM_WORLD, sub, tag, &comm);
        MPI_Group_free(&sub);
        std::lock_guard l(made->mu);
        made->rc = rc, made->comm = comm, made->done = true;
        made->cv.notify_all();
      }).detach();
      {
        std::unique_lock l(made->mu);
        if (!made->cv.wait_for(l, timeout_, [&] { return made->done; }))
          fail(std::string(op) + ": making the group " + ranks_str(ranks) + " failed (timeout " + timeout_str() +
               "): a member never joined it");
      }
      const int rc = made->rc;
      g.comm = made->comm;
      if (rc != MPI_SUCCESS) fail(std::string(op) + ": making the group " + ranks_str(ranks) + ": " + mpi_error(rc));
      MPI_Comm_set_errhandler(g.comm, MPI_ERRORS_RETURN);
    }
    return groups_.emplace(std::move(key), std::move(g)).first->second;
  }

  CommOptions options_;
  int64_t rank_ = 0, size_ = 1;
  MPI_Comm p2p_ = MPI_COMM_NULL;
  int tag_ub_ = 32767;
  std::chrono::milliseconds timeout_{};
  std::mutex groups_mu_;
  std::map<std::vector<int64_t>, Group> groups_;
  std::vector<std::byte> staging_, received_;  // packing buffers (the communication thread)

  std::mutex abort_mu_;
  std::atomic<bool> aborted_{false};
  std::string why_;

  std::mutex send_mu_;
  std::deque<Outgoing> in_flight_;
  std::map<std::pair<int64_t, int64_t>, std::vector<std::vector<std::byte>>> spare_;
};

}  // namespace

std::unique_ptr<Communicator> mpi_communicator(const CommOptions& options) {
  return std::make_unique<MpiEndpoint>(options);
}

}  // namespace tessel::runtime
