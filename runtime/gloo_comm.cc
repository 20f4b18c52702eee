#include "runtime/gloo_comm.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/hash_store.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "graph/error.h"
#include "graph/shape.h"
#include "runtime/block_copy.h"
#include "runtime/collective_call.h"
#include "runtime/tcp_store.h"

namespace tessel::runtime {

class GlooRendezvous {
 public:
  explicit GlooRendezvous(std::shared_ptr<gloo::rendezvous::Store> s, std::shared_ptr<void> keep = {})
      : store(std::move(s)), keep_alive(std::move(keep)) {}
  std::shared_ptr<gloo::rendezvous::Store> store;
  std::shared_ptr<void> keep_alive;  // what the store needs while the ranks use it (its server)
  std::string groups = "tessel/group/";  // where this world's groups meet in the store
};

namespace {

// Gloo's store interface over a TCP store client. A key nobody sets in time is named in
// the error: Gloo's keys are the ranks of a group, so it says which rank never arrived.
class TcpGlooStore final : public gloo::rendezvous::Store {
 public:
  explicit TcpGlooStore(std::shared_ptr<TcpStoreClient> c) : client_(std::move(c)) {}
  void set(const std::string& key, const std::vector<char>& data) override { client_->set(key, data); }
  std::vector<char> get(const std::string& key) override {
    auto v = client_->get(key, static_cast<double>(kDefaultTimeout.count()) / 1000);
    if (!v) throw Error(missing({key}, kDefaultTimeout));
    return *v;
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, kDefaultTimeout); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::vector<std::string> absent;
    for (const std::string& k : keys) {
      const double left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
      if (!client_->get(k, std::max(0.0, left))) absent.push_back(k);
    }
    if (!absent.empty()) throw Error(missing(absent, timeout));
  }

 private:
  std::string missing(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) const {
    std::string s;
    for (auto& k : keys) s += (s.empty() ? "" : ", ") + k;
    return client_->where() + ": nobody set " + s + " within " + std::to_string(timeout.count() / 1000.0).substr(0, 5) +
           " s";
  }
  std::shared_ptr<TcpStoreClient> client_;
};

}  // namespace

std::shared_ptr<GlooRendezvous> gloo_tcp_rendezvous(std::shared_ptr<TcpStoreClient> client, std::shared_ptr<void> keep_alive) {
  return std::make_shared<GlooRendezvous>(std::make_shared<TcpGlooStore>(std::move(client)), std::move(keep_alive));
}

std::shared_ptr<GlooRendezvous> gloo_file_rendezvous(const std::string& dir, std::shared_ptr<void> keep_alive) {
  return std::make_shared<GlooRendezvous>(std::make_shared<gloo::rendezvous::FileStore>(dir), std::move(keep_alive));
}

std::shared_ptr<GlooRendezvous> gloo_world_rendezvous(std::shared_ptr<GlooRendezvous> rdv, int64_t world) {
  rdv->groups = "tessel/world" + std::to_string(world) + "/group/";
  return rdv;
}

std::shared_ptr<GlooRendezvous> gloo_memory_rendezvous() {
  return std::make_shared<GlooRendezvous>(std::make_shared<gloo::rendezvous::HashStore>());
}

namespace {

using Clock = std::chrono::steady_clock;

template <class T>
void reduce_into(T* dst, const T* src, size_t n, ReduceOp op) {
  if (op == ReduceOp::max)
    for (size_t i = 0; i < n; ++i) dst[i] = std::max(dst[i], src[i]);
  else
    for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}

template <class T>
void scale_mean(T* x, size_t n, int k) {
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<T>(x[i] / static_cast<T>(k));
}

// Gloo's element-wise reduction for all-reduce: out = a op b.
template <class T>
void gloo_sum(void* out, const void* a, const void* b, size_t n) {
  auto* o = static_cast<T*>(out);
  auto* x = static_cast<const T*>(a);
  auto* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
}
template <class T>
void gloo_max(void* out, const void* a, const void* b, size_t n) {
  auto* o = static_cast<T*>(out);
  auto* x = static_cast<const T*>(a);
  auto* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) o[i] = std::max(x[i], y[i]);
}

// Calls f(T{}) with the C++ type of a dtype the engine reduces.
template <class F>
void reducible(DType t, std::string_view what, F&& f) {
  switch (t) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::i32: f(int32_t{}); return;
    case DType::i64: f(int64_t{}); return;
    default:
      throw Error(std::string(what) + " of " + std::string(dtype_name(t)) + ": the Gloo engine reduces f32, f64, i32 and i64");
  }
}

// The ring all-reduce moves each member's chunk in segments of at most this many bytes,
// overlapping the transfer of one with the reduction of the previous. Gloo's default is
// 1 MiB; 4 MiB took 10-20 % off 16-256 MiB all-reduces between two processes on loopback
// on a 2-core host (fewer wakeups of Gloo's I/O thread per byte). Two members' buffers
// under 4 MiB are cut into the same four segments either way.
constexpr size_t kRingSegmentBytes = size_t{4} << 20;
// An all-reduce uses another lane for every 1 MiB of its buffer, up to the group's lanes
// (a 1 MiB all-reduce is slower in two halves: the second thread costs more than it saves).
constexpr size_t kLaneMinBytes = size_t{1} << 20;

// Slots of point-to-point messages: above every slot Gloo's collectives build (their
// prefixes are small), one per tag.
uint64_t p2p_slot(int64_t tag) { return (uint64_t{0xA5} << 56) | (static_cast<uint64_t>(tag) & 0xFFFFFFFFFFFFull); }

class GlooEndpoint final : public Communicator {
 public:
  GlooEndpoint(int64_t rank, int64_t size, std::shared_ptr<GlooRendezvous> rdv, GlooOptions o)
      : rank_(rank), size_(size), rdv_(std::move(rdv)), options_(std::move(o)) {
    if (size < 1) throw Error("a Gloo world needs at least one rank, got " + std::to_string(size));
    if (rank < 0 || rank >= size)
      throw Error("rank " + std::to_string(rank) + " is not in a world of " + std::to_string(size));
    if (!(options_.timeout_s > 0)) throw Error("the communication timeout must be positive");
    timeout_ = std::chrono::milliseconds(static_cast<int64_t>(options_.timeout_s * 1000));
    if (const char* v = std::getenv("TESSEL_COMM_CHECK")) full_check_ = std::string_view(v) == "full";
    try {
      gloo::transport::tcp::attr attr;
      attr.hostname = options_.hostname;
      device_ = gloo::transport::tcp::CreateDevice(attr);
    } catch (const std::exception& e) {
      throw Error(who() + ": cannot listen on " + options_.hostname + ": " + e.what());
    }
    std::vector<int64_t> all(static_cast<size_t>(size));
    for (int64_t r = 0; r < size; ++r) all[static_cast<size_t>(r)] = r;
    world_ = &context(all, "connect");
    reaper_ = std::thread([this] { reap(); });
  }

  ~GlooEndpoint() override {
    {
      std::lock_guard lk(send_mu_);
      stopping_ = true;
    }
    send_cv_.notify_all();
    reaper_.join();
  }

  int64_t rank() const override { return rank_; }
  int64_t size() const override { return size_; }
  std::string_view engine() const override { return "gloo"; }

  void all_reduce(std::span<const TensorRef> in, std::span<const TensorRef> out, ReduceOp op,
                  std::span<const int64_t> group) override {
    if (std::string e = malformed_all_reduce(in, out); !e.empty()) fail(e);
    int64_t total = 0;
    for (const TensorRef& t : in) total += t.numel;
    Ctx& c = member(group, "all_reduce");
    agree(c, Call{Collective::all_reduce, in, -1, -1, static_cast<int>(op)}, group);
    if (in.empty() || total == 0) return;
    const size_t es = dtype_size(in[0].dtype);
    reducible(in[0].dtype, "all_reduce", [&](auto t) {
      using T = decltype(t);
      // One tensor reduces in place in its output; a bucket goes packed as one buffer.
      T* buf = nullptr;
      if (in.size() == 1) {
        if (out[0].data != in[0].data) copy_bytes(out[0].data, in[0].data, static_cast<size_t>(in[0].bytes()));
        buf = out[0].as<T>();
      } else {
        staging_.resize(static_cast<size_t>(total) * es);
        size_t at = 0;
        for (auto& x : in) {
          copy_bytes(staging_.data() + at, x.data, static_cast<size_t>(x.bytes()));
          at += static_cast<size_t>(x.bytes());
        }
        buf = reinterpret_cast<T*>(staging_.data());
      }
      if (c.k == 2 && static_cast<size_t>(total) * sizeof(T) < 2 * kLaneMinBytes)
        run(c, "all_reduce", group, [&] {
          // Two members swap their buffers in one exchange and each adds the other's: the
          // bytes of a ring of two, in one message each way instead of the ring's several
          // (each a wakeup of both members' I/O threads). a + b is b + a: both get the same bits.
          const size_t n = static_cast<size_t>(total);
          received_.resize(n * sizeof(T));
          const uint64_t slot = (uint64_t{0xA6} << 56) | static_cast<uint64_t>(c.calls);
          auto tx = c.ctx->createUnboundBuffer(buf, n * sizeof(T));
          auto rx = c.ctx->createUnboundBuffer(received_.data(), n * sizeof(T));
          rx->recv(1 - c.me, slot);
          tx->send(1 - c.me, slot);
          if (!rx->waitRecv(timeout_) || !tx->waitSend(timeout_)) throw Error("aborted");
          const T* other = reinterpret_cast<const T*>(received_.data());
          if (op == ReduceOp::max) for (size_t i = 0; i < n; ++i) buf[i] = std::max(buf[i], other[i]);
          else for (size_t i = 0; i < n; ++i) buf[i] += other[i];
        });
      else if (c.k > 1)
        run(c, "all_reduce", group, [&] {
          // Parts of at least 1 MiB, one per lane, reduced side by side.
          const size_t n = static_cast<size_t>(total);
          const size_t lanes = std::min(c.lanes.size(), std::max<size_t>(1, n * sizeof(T) / kLaneMinBytes));
          auto part = [&](size_t l) {
            const size_t b = n * l / lanes, e = n * (l + 1) / lanes;
            gloo::AllreduceOptions opts(c.lanes[l]);
            opts.setOutput(buf + b, e - b);
            opts.setReduceFunction(op == ReduceOp::max ? &gloo_max<T> : &gloo_sum<T>);
            opts.setTimeout(timeout_);
            opts.setMaxSegmentSize(kRingSegmentBytes);
            gloo::allreduce(opts);
          };
          // A lane that fails leaves the others be: a peer that failed or died closed its
          // connections, which every lane sees (closing ours would hide that from them).
          std::vector<std::thread> others;
          std::vector<std::exception_ptr> errors(lanes);
          for (size_t l = 1; l < lanes; ++l)
            others.emplace_back([&, l] {
              try {
                part(l);
              } catch (...) {
                errors[l] = std::current_exception();
              }
            });
          try {
            part(0);
          } catch (...) {
            errors[0] = std::current_exception();
          }
          for (auto& t : others) t.join();
          for (auto& e : errors)
            if (e) std::rethrow_exception(e);
        });
      if (op == ReduceOp::mean) scale_mean(buf, static_cast<size_t>(total), c.k);
      if (in.size() > 1) {
        size_t at = 0;
        for (auto& x : out) {
          copy_bytes(x.data, staging_.data() + at, static_cast<size_t>(x.bytes()));
          at += static_cast<size_t>(x.bytes());
        }
      }
    });
  }

  void reduce_scatter(const TensorRef& in, const TensorRef& out, int dim, ReduceOp op,
                      std::span<const int64_t> group) override {
    if (std::string e = malformed_reduce_scatter(in, out, dim, static_cast<int64_t>(group.size())); !e.empty()) fail(e);
    Ctx& c = member(group, "reduce_scatter");
    agree(c, Call{Collective::reduce_scatter, std::span<const TensorRef>(&in, 1), dim, -1, static_cast<int>(op)}, group);
    if (in.numel == 0) return;
    const size_t es = dtype_size(in.dtype);
    const size_t share = static_cast<size_t>(out.numel);
    reducible(in.dtype, "reduce_scatter", [&](auto t) {
      using T = decltype(t);
      // Chunk j of the packed input is member j's share; after the exchange chunk q of what
      // arrived is member q's contribution to this member's share.
      staging_.resize(static_cast<size_t>(in.numel) * es);
      received_.resize(static_cast<size_t>(in.numel) * es);
      blocks(static_cast<std::byte*>(in.data), staging_.data(), around(in.shape, dim), c.k, es, true);
      if (c.k > 1)
        run(c, "reduce_scatter", group, [&] {
          gloo::AlltoallOptions opts(c.ctx);
          opts.setInput(reinterpret_cast<T*>(staging_.data()), static_cast<size_t>(in.numel));
          opts.setOutput(reinterpret_cast<T*>(received_.data()), static_cast<size_t>(in.numel));
          opts.setTimeout(timeout_);
          gloo::alltoall(opts);
        });
      else
        copy_bytes(received_.data(), staging_.data(), staging_.size());
      // Members' contributions in member order, so every member sums alike.
      T* o = out.as<T>();
      const T* r = reinterpret_cast<const T*>(received_.data());
      copy_bytes(o, r, share * sizeof(T));
      for (int q = 1; q < c.k; ++q) reduce_into(o, r + static_cast<size_t>(q) * share, share, op);
      if (op == ReduceOp::mean) scale_mean(o, share, c.k);
    });
  }

  void all_gather(const TensorRef& in, const TensorRef& out, int dim, std::span<const int64_t> group) override {
    if (std::string e = malformed_all_gather(in, out, dim, static_cast<int64_t>(group.size())); !e.empty()) fail(e);
    Ctx& c = member(group, "all_gather");
    agree(c, Call{Collective::all_gather, std::span<const TensorRef>(&in, 1), dim}, group);
    if (in.numel == 0) return;
    const size_t es = dtype_size(in.dtype);
    const Around a = around(in.shape, dim);
    // Gathered along the first dim that has more than one index, the members' inputs lie
    // side by side in the output: gather straight into it.
    const bool direct = a.outer == 1;
    std::byte* dst = static_cast<std::byte*>(out.data);
    if (!direct) {
      received_.resize(static_cast<size_t>(out.numel) * es);
      dst = received_.data();
    }
    if (c.k > 1) {
      run(c, "all_gather", group, [&] {
        gloo::AllgatherOptions opts(c.ctx);
        opts.setInput(static_cast<char*>(in.data), static_cast<size_t>(in.bytes()));
        opts.setOutput(reinterpret_cast<char*>(dst), static_cast<size_t>(out.bytes()));
        opts.setTimeout(timeout_);
        gloo::allgather(opts);
      });
    } else if (dst != in.data) {
      copy_bytes(dst, in.data, static_cast<size_t>(in.bytes()));
    }
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
    Ctx& c = member(group, "all_to_all");
    agree(c, Call{Collective::all_to_all, std::span<const TensorRef>(&in, 1), split_dim, concat_dim}, group);
    if (in.numel == 0) return;
    const size_t es = dtype_size(in.dtype);
    staging_.resize(static_cast<size_t>(in.numel) * es);
    received_.resize(static_cast<size_t>(in.numel) * es);
    blocks(static_cast<std::byte*>(in.data), staging_.data(), around(in.shape, split_dim), c.k, es, true);
    if (c.k > 1)
      run(c, "all_to_all", group, [&] {
        gloo::AlltoallOptions opts(c.ctx);
        opts.setInput(reinterpret_cast<char*>(staging_.data()), staging_.size());
        opts.setOutput(reinterpret_cast<char*>(received_.data()), received_.size());
        opts.setTimeout(timeout_);
        gloo::alltoall(opts);
      });
    else
      copy_bytes(received_.data(), staging_.data(), staging_.size());
    // Chunk q came from member q and is block q along the concatenated dim.
    blocks(static_cast<std::byte*>(out.data), received_.data(), around(out.shape, concat_dim), c.k, es, false);
  }

  void broadcast(const TensorRef& in, const TensorRef& out, int64_t root, std::span<const int64_t> group) override {
    if (std::string e = malformed_broadcast(in, out, root, static_cast<int64_t>(group.size())); !e.empty()) fail(e);
    Ctx& c = member(group, "broadcast");
    agree(c, Call{Collective::broadcast, std::span<const TensorRef>(&in, 1), -1, -1, -1, root}, group);
    if (c.me == root && out.data != in.data && in.bytes())
      copy_bytes(out.data, in.data, static_cast<size_t>(in.bytes()));
    if (c.k == 1 || in.numel == 0) return;
    run(c, "broadcast", group, [&] {
      gloo::BroadcastOptions opts(c.ctx);
      opts.setOutput(static_cast<char*>(out.data), static_cast<size_t>(out.bytes()));
      opts.setRoot(static_cast<int>(root));
      opts.setTimeout(timeout_);
      gloo::broadcast(opts);
    });
  }

  void barrier(std::span<const int64_t> group) override {
    Ctx& c = member(group, "barrier");
    agree(c, Call{Collective::barrier, {}}, group);
    if (c.k == 1) return;
    run(c, "barrier", group, [&] {
      gloo::BarrierOptions opts(c.ctx);
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

  void send(const TensorRef& t, int64_t peer, int64_t tag) override {
    check_peer(peer, "send");
    stopped_check("send to rank " + std::to_string(peer));
    const size_t bytes = static_cast<size_t>(t.bytes());
    std::unique_ptr<Outgoing> m;
    {
      std::lock_guard lk(send_mu_);
      if (!send_error_.empty()) throw Error(send_error_);
      auto& spare = spare_[{peer, tag}];
      if (!spare.empty()) {
        m = std::move(spare.back());
        spare.pop_back();
      }
    }
    if (!m) m = std::make_unique<Outgoing>();
    m->peer = peer;
    m->tag = tag;
    m->data.resize(std::max<size_t>(bytes, 1));
    if (bytes) copy_bytes(m->data.data(), t.data, bytes);
    try {
      m->buf = world_->ctx->createUnboundBuffer(m->data.data(), bytes);
      m->buf->send(static_cast<int>(peer), p2p_slot(tag));
    } catch (const std::exception& e) {
      fail("send to rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + "): " + e.what());
    }
    {
      std::lock_guard lk(send_mu_);
      in_flight_.push_back(std::move(m));
    }
    send_cv_.notify_all();
  }

  void reserve_sends(int64_t peer, int64_t tag, int64_t bytes, int64_t count) override {
    check_peer(peer, "send");
    std::lock_guard lk(send_mu_);
    auto& spare = spare_[{peer, tag}];
    while (static_cast<int64_t>(spare.size()) < count) {
      spare.push_back(std::make_unique<Outgoing>());
      spare.back()->data.resize(static_cast<size_t>(std::max<int64_t>(bytes, 1)));
    }
  }

  void recv(const TensorRef& t, int64_t peer, int64_t tag) override {
    check_peer(peer, "recv");
    const std::string what = "recv from rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ")";
    stopped_check(what);
    const size_t bytes = static_cast<size_t>(t.bytes());
    bool done = false;
    try {
      auto buf = world_->ctx->createUnboundBuffer(t.data, bytes);
      buf->recv(static_cast<int>(peer), p2p_slot(tag));
      done = buf->waitRecv(timeout_);
    } catch (const std::exception& e) {
      failed(what, e.what());
    }
    if (!done) failed(what, "aborted");
  }

  void connect_groups(std::span<const std::vector<int64_t>> groups) override {
    for (const auto& g : groups) member(g, "connecting groups before the first step");
  }

  void abort(const std::string& why) override {
    {
      std::lock_guard lk(abort_mu_);
      if (aborted_) return;
      why_ = why;
      aborted_ = true;
    }
    // Peers find the reason in the store; closing this rank's connections makes their
    // pending calls with it fail now rather than at their timeouts.
    try {
      rdv_->store->set("tessel/abort", std::vector<char>(why.begin(), why.end()));
    } catch (const std::exception&) {
      // The store may be gone with the job; the connections still close.
    }
    close_all();
  }

 private:
  // Closes every connection of this rank: its pending calls and its peers' calls with it fail.
  void close_all() {
    std::lock_guard lk(ctx_mu_);
    for (auto& [ranks, c] : contexts_)
      for (auto& l : c->lanes) l->closeConnections();
  }

  struct Ctx {
    std::shared_ptr<gloo::Context> ctx;                 // lanes[0]: every call but a large all-reduce's other parts
    std::vector<std::shared_ptr<gloo::Context>> lanes;
    int me = -1, k = 0;
    int64_t calls = 0;              // collectives made on the group so far
    std::vector<int64_t> headers;   // the members' (calls, fingerprint), from agree()
  };
  struct Outgoing {
    int64_t peer = 0, tag = 0;
    std::vector<std::byte> data;
    std::unique_ptr<gloo::transport::UnboundBuffer> buf;
  };

  std::string who() const { return "rank " + std::to_string(rank_); }
  std::string secs() const {
    char b[32];
    std::snprintf(b, sizeof b, "%g s", options_.timeout_s);
    return b;
  }

  [[noreturn]] void fail(const std::string& msg) {
    const std::string m = who() + ": " + msg;
    abort(m);
    throw Error(m);
  }
  void check_peer(int64_t peer, std::string_view op) {
    if (std::string e = malformed_peer(peer, rank_, size_, op); !e.empty()) fail(e);
  }

  // The reason another rank (or this one) gave for stopping the job, if any.
  // wait: how long to give a reason to appear (a peer that failed writes it before it
  // closes its connections; a launcher writes it for a peer that died).
  std::string abort_reason(std::chrono::milliseconds wait = std::chrono::milliseconds(1)) {
    {
      std::lock_guard lk(abort_mu_);
      if (aborted_) return why_;
    }
    try {
      rdv_->store->wait({"tessel/abort"}, wait);
      const std::vector<char> v = rdv_->store->get("tessel/abort");
      return std::string(v.begin(), v.end());
    } catch (const std::exception&) {
      return "";
    }
  }
  void stopped_check(const std::string& what) {
    std::lock_guard lk(abort_mu_);
    if (aborted_) throw Error(who() + ": " + what + " stopped: " + why_);
  }
  // A call that failed inside Gloo: a timeout, or a peer that closed its connections.
  [[noreturn]] void failed(const std::string& what, const std::string& detail) {
    // A peer's connection that closed under a call: its process failed or died. Give its
    // reason (or its launcher's word on it) a moment to arrive, so the error names the cause.
    const std::string reason = abort_reason(std::min(timeout_, std::chrono::milliseconds(1000)));
    if (!reason.empty()) throw Error(who() + ": " + what + " stopped: " + reason);
    const std::string m = who() + ": " + what + " failed (timeout " + secs() + "): " + detail;
    abort(m);
    throw Error(m);
  }

  // Before any data moves the members agree on the call: each sends the number of calls it
  // made on the group before this one and a fingerprint of this one (op, dtypes, shapes,
  // dims, reduction, root); on a mismatch they swap descriptions, so the error names both
  // sides. TESSEL_COMM_CHECK=full swaps the descriptions on every call.
  void agree(Ctx& c, const Call& call, std::span<const int64_t> group) {
    const int64_t seq = c.calls++;
    if (c.k <= 1) return;
    const int64_t mine[2] = {seq, static_cast<int64_t>(call.fingerprint() >> 1)};
    c.headers.resize(static_cast<size_t>(2 * c.k));
    run(c, collective_name(call.op), group, [&] {
      gloo::AllgatherOptions opts(c.ctx);
      opts.setInput(const_cast<int64_t*>(mine), 2);
      opts.setOutput(c.headers.data(), c.headers.size());
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
    });
    bool same = true;
    for (int q = 0; q < c.k; ++q) same &= c.headers[2 * q] == mine[0] && c.headers[2 * q + 1] == mine[1];
    if (same && !full_check_) return;
    constexpr size_t kDesc = 240;
    std::string desc = call.str().substr(0, kDesc);
    desc.resize(kDesc, '\0');
    std::vector<char> all(kDesc * static_cast<size_t>(c.k));
    run(c, collective_name(call.op), group, [&] {
      gloo::AllgatherOptions opts(c.ctx);
      opts.setInput(desc.data(), kDesc);
      opts.setOutput(all.data(), all.size());
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
    });
    auto text = [&](int q) { return std::string(all.data() + q * kDesc, strnlen(all.data() + q * kDesc, kDesc)); };
    if (same) {
      for (int q = 0; q < c.k; ++q) same &= text(q) == text(c.me);
      if (same) return;
    }
    std::string sides;
    for (int q = 0; q < c.k; ++q)
      sides += std::string(q ? "; " : "") + "rank " + std::to_string(group[q]) + " calls " + text(q) + " (its call " +
               std::to_string(c.headers[2 * q] + 1) + " on this group)";
    fail(std::string(collective_name(call.op)) + " over ranks " + ranks_str(group) +
         ": the members disagree, caught before any data moved: " + sides);
  }

  template <class F>
  void run(const Ctx&, std::string_view op, std::span<const int64_t> group, F&& f) {
    const std::string what = [&] { return std::string(op) + " over ranks " + ranks_str(group); }();
    stopped_check(what);
    try {
      f();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      failed(what, e.what());
    }
  }

  // The group's context, connecting it on first use (outside the lock: an abort from another
  // thread must not wait for the connection).
  Ctx& context(std::span<const int64_t> ranks, std::string_view op) {
    std::vector<int64_t> key(ranks.begin(), ranks.end());
    {
      std::lock_guard lk(ctx_mu_);
      auto it = contexts_.find(key);
      if (it != contexts_.end()) return *it->second;
    }
    auto c = std::make_unique<Ctx>();
    c->k = static_cast<int>(ranks.size());
    for (int i = 0; i < c->k; ++i)
      if (ranks[i] == rank_) c->me = i;
    if (c->k > 1) {
      try {
        std::string prefix = rdv_->groups;
        for (size_t i = 0; i < key.size(); ++i) prefix += (i ? "." : "") + std::to_string(key[i]);
        for (int l = 0; l < std::max(1, options_.lanes); ++l) {
          auto ctx = std::make_shared<gloo::rendezvous::Context>(c->me, c->k);
          ctx->setTimeout(timeout_);
          gloo::rendezvous::PrefixStore store(l ? prefix + "#" + std::to_string(l) : prefix, *rdv_->store);
          ctx->connectFullMesh(store, device_);
          c->lanes.push_back(std::move(ctx));
        }
        c->ctx = c->lanes[0];
      } catch (const std::exception& e) {
        // The store's error names the keys nobody wrote: a member's key ends with its index
        // in the group. Say which ranks those are.
        std::string prefix = rdv_->groups;
        for (size_t i = 0; i < key.size(); ++i) prefix += (i ? "." : "") + std::to_string(key[i]);
        const std::string detail = e.what();
        std::vector<int64_t> missing;
        for (int i = 0; i < c->k; ++i) {
          const std::string k = prefix + "/" + std::to_string(i);
          for (size_t at = detail.find(k); at != std::string::npos; at = detail.find(k, at + 1)) {
            const size_t end = at + k.size();
            if (end == detail.size() || !std::isdigit(static_cast<unsigned char>(detail[end]))) {
              missing.push_back(ranks[i]);
              break;
            }
          }
        }
        std::string who_missing;
        if (!missing.empty())
          who_missing = (missing.size() == 1 ? " (rank " : " (ranks ") + ranks_str(missing).substr(1, std::string::npos) ;
        if (!who_missing.empty()) who_missing.back() = ' ', who_missing += "never arrived)";
        failed(std::string(op) + ": connecting the group " + ranks_str(ranks) + who_missing, detail);
      }
    }
    std::lock_guard lk(ctx_mu_);
    return *contexts_.emplace(std::move(key), std::move(c)).first->second;
  }

  Ctx& member(std::span<const int64_t> ranks, std::string_view op) {
    bool in = false;
    for (int64_t r : ranks) {
      if (r < 0 || r >= size_)
        fail(std::string(op) + ": group " + ranks_str(ranks) + " names rank " + std::to_string(r) + " of a world of " +
             std::to_string(size_));
      in |= r == rank_;
    }
    if (!in) fail(std::string(op) + ": this rank is not in the group " + ranks_str(ranks));
    stopped_check(std::string(op) + " over ranks " + ranks_str(ranks));
    if (static_cast<int64_t>(ranks.size()) == size_ && world_) {
      bool whole = true;
      for (size_t i = 0; i < ranks.size(); ++i) whole &= ranks[i] == static_cast<int64_t>(i);
      if (whole) return *world_;
    }
    return context(ranks, op);
  }

  // Waits, in order, for each send to be delivered, then keeps its buffer for the next.
  void reap() {
    for (;;) {
      std::unique_ptr<Outgoing> m;
      {
        std::unique_lock lk(send_mu_);
        send_cv_.wait(lk, [&] { return stopping_ || !in_flight_.empty(); });
        if (in_flight_.empty()) return;
        m = std::move(in_flight_.front());
        in_flight_.pop_front();
      }
      bool ok = false;
      std::string err;
      try {
        // While stopping, a send nobody will receive is given a moment, then dropped.
        ok = m->buf->waitSend(stopping_ ? std::chrono::milliseconds(100) : timeout_);
      } catch (const std::exception& e) {
        err = e.what();
      }
      std::lock_guard lk(send_mu_);
      if (!ok && send_error_.empty() && !stopping_)
        send_error_ = who() + ": send to rank " + std::to_string(m->peer) + " (tag " + std::to_string(m->tag) +
                      ") was not delivered (timeout " + secs() + ")" + (err.empty() ? "" : ": " + err);
      m->buf.reset();
      spare_[{m->peer, m->tag}].push_back(std::move(m));
    }
  }

  int64_t rank_, size_;
  std::shared_ptr<GlooRendezvous> rdv_;
  GlooOptions options_;
  std::chrono::milliseconds timeout_{};
  bool full_check_ = false;  // TESSEL_COMM_CHECK=full
  std::shared_ptr<gloo::transport::Device> device_;
  std::mutex ctx_mu_;
  std::map<std::vector<int64_t>, std::unique_ptr<Ctx>> contexts_;
  Ctx* world_ = nullptr;
  std::vector<std::byte> staging_, received_;  // packing buffers of the collectives (one thread)

  std::mutex abort_mu_;
  bool aborted_ = false;
  std::string why_;

  std::mutex send_mu_;
  std::condition_variable send_cv_;
  bool stopping_ = false;
  std::deque<std::unique_ptr<Outgoing>> in_flight_;
  std::map<std::pair<int64_t, int64_t>, std::vector<std::unique_ptr<Outgoing>>> spare_;  // (peer, tag)
  std::string send_error_;
  std::thread reaper_;
};

}  // namespace

std::unique_ptr<Communicator> gloo_communicator(int64_t rank, int64_t size, std::shared_ptr<GlooRendezvous> rendezvous,
                                                GlooOptions options) {
  if (!rendezvous) throw Error("gloo_communicator: no rendezvous");
  // Gloo writes to its sockets without MSG_NOSIGNAL: a peer that has closed its end (an
  // aborted group) would kill this process with SIGPIPE instead of failing the write. Unless
  // the program handles SIGPIPE itself, it is ignored, and the write returns EPIPE.
  static const bool sigpipe_ignored = [] {
    struct sigaction now {};
    if (sigaction(SIGPIPE, nullptr, &now) == 0 && now.sa_handler == SIG_DFL) std::signal(SIGPIPE, SIG_IGN);
    return true;
  }();
  (void)sigpipe_ignored;
  return std::make_unique<GlooEndpoint>(rank, size, std::move(rendezvous), std::move(options));
}

}  // namespace tessel::runtime
