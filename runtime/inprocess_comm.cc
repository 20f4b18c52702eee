#include "runtime/inprocess_comm.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>

#include "graph/error.h"
#include "graph/op_def.h"
#include "graph/shape.h"
#include "runtime/block_copy.h"

namespace tessel::runtime {

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::mean: return "mean";
    case ReduceOp::max: return "max";
  }
  return "?";
}

namespace {

using Clock = std::chrono::steady_clock;

using Kind = Collective;  // graph/op_def.h: the one list

std::string list_str(std::span<const int64_t> v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// One member's call, alive on its stack until every member has left the round.
struct Post {
  Kind kind = Kind::barrier;
  ReduceOp op = ReduceOp::sum;
  int dim = 0, dim2 = 0;
  int64_t root = 0;
  std::span<const TensorRef> in, out;

  std::string str() const {
    std::string s(collective_name(kind));
    if (kind == Kind::barrier) return s;
    int64_t n = 0;
    for (auto& t : in) n += t.numel;
    s += " of ";
    if (in.size() == 1) {
      s += std::string(dtype_name(in[0].dtype)) + shape_str(in[0].shape);
    } else {
      s += std::to_string(in.size()) + " tensors, " + std::to_string(n) + " " +
           std::string(in.empty() ? "" : dtype_name(in[0].dtype));
    }
    if (kind == Kind::all_reduce || kind == Kind::reduce_scatter) s += " (" + std::string(reduce_op_name(op)) + ")";
    if (kind == Kind::reduce_scatter || kind == Kind::all_gather) s += " dim " + std::to_string(dim);
    if (kind == Kind::all_to_all) s += " dims " + std::to_string(dim) + "->" + std::to_string(dim2);
    if (kind == Kind::broadcast) s += " root " + std::to_string(root);
    return s;
  }
};

bool same_call(const Post& a, const Post& b) {
  if (a.kind != b.kind || a.op != b.op || a.dim != b.dim || a.dim2 != b.dim2 || a.root != b.root) return false;
  if (a.in.size() != b.in.size()) return false;
  for (size_t i = 0; i < a.in.size(); ++i) {
    if (a.in[i].dtype != b.in[i].dtype) return false;
    if (a.kind == Kind::all_reduce ? a.in[i].numel != b.in[i].numel
                                   : !std::equal(a.in[i].shape.begin(), a.in[i].shape.end(), b.in[i].shape.begin(),
                                                 b.in[i].shape.end()))
      return false;
  }
  return true;
}

struct Group {
  std::vector<int64_t> ranks;
  std::mutex mu;
  std::condition_variable cv;
  int64_t round = 0;  // rounds completed
  int arrived = 0, departed = 0;
  bool ready = false;  // every member of the current round has posted
  std::vector<const Post*> posts;
  std::vector<int64_t> calls;  // per member: calls made so far
  std::string mismatch;
};

// Messages in order, as a vector with a read position (a deque would allocate as it turns
// over); delivered buffers are kept for later sends.
struct Mailbox {
  // Room for this many messages in flight before a vector grows (an allocation in a step).
  Mailbox() {
    queue.reserve(64);
    spare.reserve(64);
  }
  std::vector<std::vector<std::byte>> queue;
  size_t head = 0;
  std::vector<std::vector<std::byte>> spare;
  bool empty() const { return head == queue.size(); }
  void push(std::vector<std::byte> b) {
    if (head > 0 && head == queue.size()) queue.clear(), head = 0;
    queue.push_back(std::move(b));
  }
  std::vector<std::byte> pop() {
    std::vector<std::byte> b = std::move(queue[head++]);
    if (head == queue.size()) queue.clear(), head = 0;
    return b;
  }
};

// A shape on the stack: the checks of a call allocate nothing.
struct SmallShape {
  std::array<int64_t, 16> d{};
  size_t n = 0;
  explicit SmallShape(std::span<const int64_t> s) : n(s.size()) {
    if (n > d.size()) throw Error("collectives take tensors of up to 16 dims, got " + shape_str(s));
    std::copy(s.begin(), s.end(), d.begin());
  }
  std::span<const int64_t> span() const { return {d.data(), n}; }
  int64_t& operator[](int i) { return d[static_cast<size_t>(i)]; }
};

// [outer, dim, inner] view of a shape around `dim`.
struct Split3 {
  int64_t outer = 1, dim = 1, inner = 1;
};
Split3 split3(std::span<const int64_t> s, int d) {
  Split3 v;
  for (int i = 0; i < d; ++i) v.outer *= s[i];
  v.dim = s[d];
  for (size_t i = static_cast<size_t>(d) + 1; i < s.size(); ++i) v.inner *= s[i];
  return v;
}

// dst[0:n] = reduction over members q of src(q)[0:n], in member order (every member
// gets bit-identical results).
template <class T, class Src>
void reduce_run(T* tmp, int64_t n, int k, Src src, ReduceOp op) {
  copy_bytes(tmp, src(0), static_cast<size_t>(n) * sizeof(T));
  for (int q = 1; q < k; ++q) {
    const T* x = src(q);
    if (op == ReduceOp::max)
      for (int64_t i = 0; i < n; ++i) tmp[i] = std::max(tmp[i], x[i]);
    else
      for (int64_t i = 0; i < n; ++i) tmp[i] += x[i];
  }
  if (op == ReduceOp::mean)
    for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<T>(tmp[i] / static_cast<T>(k));
}

constexpr int64_t kBlock = 4096;

template <class T>
void all_reduce_share(const std::vector<const Post*>& posts, int me) {
  const int k = static_cast<int>(posts.size());
  const Post& p0 = *posts[0];
  int64_t total = 0;
  for (auto& t : p0.in) total += t.numel;
  const int64_t begin = total * me / k, end = total * (me + 1) / k;
  T tmp[kBlock];
  int64_t base = 0;
  for (size_t s = 0; s < p0.in.size() && base < end; ++s) {
    const int64_t n = p0.in[s].numel;
    const int64_t lo = std::max(begin, base) - base, hi = std::min(end, base + n) - base;
    for (int64_t b = lo; b < hi; b += kBlock) {
      const int64_t len = std::min(kBlock, hi - b);
      reduce_run<T>(tmp, len, k, [&](int q) { return posts[q]->in[s].template as<const T>() + b; }, p0.op);
      for (int q = 0; q < k; ++q) copy_bytes(posts[q]->out[s].template as<T>() + b, tmp, static_cast<size_t>(len) * sizeof(T));
    }
    base += n;
  }
}

template <class T>
void reduce_scatter_share(const std::vector<const Post*>& posts, int me) {
  const int k = static_cast<int>(posts.size());
  const Post& mine = *posts[me];
  const Split3 v = split3(mine.in[0].shape, mine.dim);
  const int64_t share = v.dim / k * v.inner;
  T tmp[kBlock];
  T* out = mine.out[0].as<T>();
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t b = 0; b < share; b += kBlock) {
      const int64_t len = std::min(kBlock, share - b);
      const int64_t at = o * v.dim * v.inner + me * share + b;
      reduce_run<T>(tmp, len, k, [&](int q) { return posts[q]->in[0].template as<const T>() + at; }, mine.op);
      copy_bytes(out + o * share + b, tmp, static_cast<size_t>(len) * sizeof(T));
    }
}

template <template <class> class F, class... A>
void by_dtype(DType t, std::string_view what, A&&... a) {
  switch (t) {
    case DType::f32: return F<float>::run(a...);
    case DType::f64: return F<double>::run(a...);
    case DType::i32: return F<int32_t>::run(a...);
    case DType::i64: return F<int64_t>::run(a...);
    default:
      throw Error(std::string(what) + " of " + std::string(dtype_name(t)) +
                  ": the in-process engine reduces f32, f64, i32 and i64");
  }
}
template <class T>
struct AllReduceShare {
  static void run(const std::vector<const Post*>& p, int me) { all_reduce_share<T>(p, me); }
};
template <class T>
struct ReduceScatterShare {
  static void run(const std::vector<const Post*>& p, int me) { reduce_scatter_share<T>(p, me); }
};

}  // namespace

struct InProcessWorld::State {
  int64_t n = 0;
  CommOptions options;
  std::mutex groups_mu;
  std::map<std::vector<int64_t>, std::unique_ptr<Group>> groups;
  std::mutex mail_mu;
  std::condition_variable mail_cv;
  std::map<std::tuple<int64_t, int64_t, int64_t>, Mailbox> mail;  // (from, to, tag)
  std::atomic<bool> aborted{false};
  std::mutex abort_mu;
  std::string abort_why;

  Group& group(std::span<const int64_t> ranks) {
    std::lock_guard lk(groups_mu);
    std::vector<int64_t> key(ranks.begin(), ranks.end());
    auto& g = groups[key];
    if (!g) {
      g = std::make_unique<Group>();
      g->ranks = key;
      g->posts.assign(key.size(), nullptr);
      g->calls.assign(key.size(), 0);
    }
    return *g;
  }

  void abort(const std::string& why) {
    {
      std::lock_guard lk(abort_mu);
      if (aborted.load()) return;
      abort_why = why;
      aborted.store(true);
    }
    std::vector<Group*> all;
    {
      std::lock_guard lk(groups_mu);
      for (auto& [k, g] : groups) all.push_back(g.get());
    }
    for (Group* g : all) {
      std::lock_guard lk(g->mu);
      g->cv.notify_all();
    }
    std::lock_guard lk(mail_mu);
    mail_cv.notify_all();
  }

  std::string why() {
    std::lock_guard lk(abort_mu);
    return abort_why;
  }

  // Waits for `done` under `lk`; on timeout aborts the world with the message `what()`
  // builds, and throws it.
  template <class Done, class What, class Who>
  void wait(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, Clock::time_point deadline, Done done,
            What what, Who who) {
    while (!done()) {
      if (aborted.load()) throw Error(who() + " stopped: " + why());
      if (cv.wait_until(lk, deadline) == std::cv_status::timeout && !done() && !aborted.load()) {
        const std::string msg = what();
        lk.unlock();
        abort(msg);
        throw Error(msg);
      }
    }
  }
};

namespace {

class Endpoint final : public Communicator {
 public:
  Endpoint(InProcessWorld::State& s, int64_t rank) : s_(s), rank_(rank) {}
  int64_t rank() const override { return rank_; }
  int64_t size() const override { return s_.n; }
  std::string_view engine() const override { return "in-process"; }

  void all_reduce(std::span<const TensorRef> in, std::span<const TensorRef> out, ReduceOp op,
                  std::span<const int64_t> group) override {
    if (in.size() != out.size()) fail("all_reduce: " + std::to_string(in.size()) + " inputs but " + std::to_string(out.size()) + " outputs");
    for (size_t i = 0; i < in.size(); ++i)
      if (in[i].numel != out[i].numel || in[i].dtype != out[i].dtype || (i && in[i].dtype != in[0].dtype))
        fail("all_reduce: tensor " + std::to_string(i) + " in and out differ in size or dtype");
    Post p;
    p.kind = Kind::all_reduce;
    p.op = op;
    p.in = in;
    p.out = out;
    collective(p, group);
  }

  void reduce_scatter(const TensorRef& in, const TensorRef& out, int dim, ReduceOp op,
                      std::span<const int64_t> group) override {
    check_dim(in, dim, "reduce_scatter");
    SmallShape want(in.shape);
    const int64_t k = static_cast<int64_t>(group.size());
    if (want[dim] % k) fail("reduce_scatter: dim " + std::to_string(dim) + " of " + shape_str(in.shape) +
                            " does not split over " + std::to_string(k) + " ranks");
    want[dim] /= k;
    check_out(out, in.dtype, want, "reduce_scatter");
    Post p;
    p.kind = Kind::reduce_scatter;
    p.op = op;
    p.dim = dim;
    p.in = {&in, 1};
    p.out = {&out, 1};
    collective(p, group);
  }

  void all_gather(const TensorRef& in, const TensorRef& out, int dim, std::span<const int64_t> group) override {
    check_dim(in, dim, "all_gather");
    SmallShape want(in.shape);
    want[dim] *= static_cast<int64_t>(group.size());
    check_out(out, in.dtype, want, "all_gather");
    Post p;
    p.kind = Kind::all_gather;
    p.dim = dim;
    p.in = {&in, 1};
    p.out = {&out, 1};
    collective(p, group);
  }

  void all_to_all(const TensorRef& in, const TensorRef& out, int split_dim, int concat_dim,
                  std::span<const int64_t> group) override {
    check_dim(in, split_dim, "all_to_all");
    check_dim(in, concat_dim, "all_to_all");
    SmallShape want(in.shape);
    const int64_t k = static_cast<int64_t>(group.size());
    if (want[split_dim] % k) fail("all_to_all: dim " + std::to_string(split_dim) + " of " + shape_str(in.shape) +
                                  " does not split over " + std::to_string(k) + " ranks");
    want[split_dim] /= k;
    want[concat_dim] *= k;
    check_out(out, in.dtype, want, "all_to_all");
    Post p;
    p.kind = Kind::all_to_all;
    p.dim = split_dim;
    p.dim2 = concat_dim;
    p.in = {&in, 1};
    p.out = {&out, 1};
    collective(p, group);
  }

  void broadcast(const TensorRef& in, const TensorRef& out, int64_t root, std::span<const int64_t> group) override {
    if (root < 0 || root >= static_cast<int64_t>(group.size()))
      fail("broadcast: root " + std::to_string(root) + " is not in a group of " + std::to_string(group.size()));
    check_out(out, in.dtype, SmallShape(in.shape), "broadcast");
    Post p;
    p.kind = Kind::broadcast;
    p.root = root;
    p.in = {&in, 1};
    p.out = {&out, 1};
    collective(p, group);
  }

  void barrier(std::span<const int64_t> group) override {
    Post p;
    collective(p, group);
  }

  void send(const TensorRef& t, int64_t peer, int64_t tag) override {
    check_peer(peer, "send");
    const auto key = std::make_tuple(rank_, peer, tag);
    const size_t bytes = static_cast<size_t>(t.bytes());
    std::vector<std::byte> buf;
    {
      std::lock_guard lk(s_.mail_mu);
      if (s_.aborted.load()) throw Error(who() + ": send to rank " + std::to_string(peer) + " stopped: " + s_.why());
      Mailbox& m = s_.mail[key];
      if (!m.spare.empty()) {
        buf = std::move(m.spare.back());
        m.spare.pop_back();
      }
    }
    buf.resize(bytes);
    if (bytes) copy_bytes(buf.data(), t.data, bytes);
    std::lock_guard lk(s_.mail_mu);
    s_.mail[key].push(std::move(buf));
    s_.mail_cv.notify_all();
  }

  void reserve_sends(int64_t peer, int64_t tag, int64_t bytes, int64_t count) override {
    check_peer(peer, "send");
    std::lock_guard lk(s_.mail_mu);
    Mailbox& m = s_.mail[std::make_tuple(rank_, peer, tag)];
    // One buffer per message a step can have in flight, and one the receiver is copying out.
    while (static_cast<int64_t>(m.spare.size()) < count + 1)
      m.spare.emplace_back(static_cast<size_t>(bytes));
  }

  void recv(const TensorRef& t, int64_t peer, int64_t tag) override {
    check_peer(peer, "recv");
    const auto key = std::make_tuple(peer, rank_, tag);
    std::unique_lock lk(s_.mail_mu);
    Mailbox& m = s_.mail[key];
    auto what = [&] { return "recv from rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ")"; };
    s_.wait(lk, s_.mail_cv, Clock::now() + timeout(), [&] { return !m.empty(); },
            [&] {
              return who() + ": " + what() + " timed out after " + secs() + ": rank " + std::to_string(peer) +
                     " sent nothing";
            },
            [&] { return who() + ": " + what(); });
    std::vector<std::byte> buf = m.pop();
    lk.unlock();
    const size_t bytes = static_cast<size_t>(t.bytes());
    if (buf.size() != bytes)
      fail(what() + ": rank " + std::to_string(peer) + " sent " + std::to_string(buf.size()) + " bytes, " +
           std::string(dtype_name(t.dtype)) + shape_str(t.shape) + " needs " + std::to_string(bytes));
    if (bytes) copy_bytes(t.data, buf.data(), bytes);
    lk.lock();
    m.spare.push_back(std::move(buf));
  }

  void abort(const std::string& why) override { s_.abort(why); }

 private:
  std::string who() const { return "rank " + std::to_string(rank_); }
  std::chrono::nanoseconds timeout() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(s_.options.timeout_s));
  }
  std::string secs() const {
    char b[32];
    std::snprintf(b, sizeof b, "%g s", s_.options.timeout_s);
    return b;
  }

  // A misuse on this rank: the others would wait for it, so stop them too.
  [[noreturn]] void fail(const std::string& msg) {
    const std::string m = who() + ": " + msg;
    s_.abort(m);
    throw Error(m);
  }
  void check_dim(const TensorRef& t, int dim, std::string_view op) {
    if (dim < 0 || dim >= t.rank())
      fail(std::string(op) + ": dim " + std::to_string(dim) + " is out of range for " + shape_str(t.shape));
  }
  void check_out(const TensorRef& out, DType dt, const SmallShape& want, std::string_view op) {
    const auto w = want.span();
    if (out.dtype != dt || !std::equal(w.begin(), w.end(), out.shape.begin(), out.shape.end()))
      fail(std::string(op) + ": the output is " + std::string(dtype_name(out.dtype)) + shape_str(out.shape) +
           ", expected " + std::string(dtype_name(dt)) + shape_str(w));
  }
  void check_peer(int64_t peer, std::string_view op) {
    if (peer < 0 || peer >= s_.n)
      fail(std::string(op) + ": peer " + std::to_string(peer) + " is not a rank of this world of " + std::to_string(s_.n));
  }

  // The group's shared state, looked up once per group (no allocation afterwards).
  Group& group(std::span<const int64_t> ranks) {
    for (auto& [key, g] : groups_)
      if (std::equal(key.begin(), key.end(), ranks.begin(), ranks.end())) return *g;
    Group& g = s_.group(ranks);
    groups_.push_back({std::vector<int64_t>(ranks.begin(), ranks.end()), &g});
    return g;
  }

  void collective(Post& p, std::span<const int64_t> ranks) {
    const int k = static_cast<int>(ranks.size());
    int me = -1;
    for (int i = 0; i < k; ++i) {
      if (ranks[i] < 0 || ranks[i] >= s_.n)
        fail(std::string(collective_name(p.kind)) + ": group " + list_str(ranks) + " names rank " + std::to_string(ranks[i]) +
             " of a world of " + std::to_string(s_.n));
      if (ranks[i] == rank_) me = i;
    }
    if (me < 0) fail(std::string(collective_name(p.kind)) + ": this rank is not in the group " + list_str(ranks));
    // Messages are built only when needed: a collective allocates nothing.
    auto what = [&] { return std::string(collective_name(p.kind)) + " over ranks " + list_str(ranks); };
    auto stopped = [&] { return who() + ": " + what(); };
    Group& g = group(ranks);
    const auto deadline = Clock::now() + timeout();
    std::unique_lock lk(g.mu);
    const int64_t round = g.calls[me]++;
    auto missing = [&] {
      std::string m;
      for (int q = 0; q < k; ++q)
        if (!g.posts[q]) m += (m.empty() ? "" : ", ") + std::to_string(ranks[q]);
      return m;
    };
    s_.wait(lk, g.cv, deadline, [&] { return g.round == round; },
            [&] { return who() + ": " + what() + " timed out after " + secs() + " behind the group's previous call"; },
            stopped);
    g.posts[me] = &p;
    if (++g.arrived == k) {
      for (int q = 1; q < k && g.mismatch.empty(); ++q)
        if (!same_call(*g.posts[0], *g.posts[q]))
          g.mismatch = "desynchronised group " + list_str(ranks) + ": rank " + std::to_string(ranks[0]) + " calls " +
                       g.posts[0]->str() + ", rank " + std::to_string(ranks[q]) + " calls " + g.posts[q]->str() +
                       " (call " + std::to_string(round) + " on this group)";
      g.ready = true;
      g.cv.notify_all();
    }
    s_.wait(lk, g.cv, deadline, [&] { return g.ready; },
            [&] {
              return who() + ": " + what() + " (" + p.str() + ") timed out after " + secs() + ": ranks " + missing() +
                     " never arrived";
            },
            stopped);
    if (!g.mismatch.empty()) {
      const std::string m = g.mismatch;
      lk.unlock();
      s_.abort(m);
      throw Error(m);
    }
    posts_.assign(g.posts.begin(), g.posts.end());
    lk.unlock();
    work(posts_, me);
    lk.lock();
    if (++g.departed == k) {
      std::fill(g.posts.begin(), g.posts.end(), nullptr);
      g.arrived = g.departed = 0;
      g.ready = false;
      ++g.round;
      g.cv.notify_all();
    }
    // The others may still read this member's input or write its output.
    s_.wait(lk, g.cv, deadline, [&] { return g.round > round; },
            [&] { return who() + ": " + what() + " timed out after " + secs() + " waiting for the group to finish"; },
            stopped);
  }

  void work(const std::vector<const Post*>& posts, int me) {
    const Post& p = *posts[me];
    const int k = static_cast<int>(posts.size());
    switch (p.kind) {
      case Kind::barrier: return;
      case Kind::send_recv: throw Error("send/recv is not a group call");
      case Kind::all_reduce:
        if (!p.in.empty()) by_dtype<AllReduceShare>(p.in[0].dtype, "all_reduce", posts, me);
        return;
      case Kind::reduce_scatter: by_dtype<ReduceScatterShare>(p.in[0].dtype, "reduce_scatter", posts, me); return;
      case Kind::all_gather: {
        const Split3 v = split3(p.in[0].shape, p.dim);
        const size_t es = dtype_size(p.in[0].dtype);
        const int64_t piece = v.dim * v.inner;
        auto* out = static_cast<std::byte*>(p.out[0].data);
        for (int64_t o = 0; o < v.outer; ++o)
          for (int q = 0; q < k; ++q)
            copy_bytes(out + static_cast<size_t>((o * k + q) * piece) * es,
                        static_cast<const std::byte*>(posts[q]->in[0].data) + static_cast<size_t>(o * piece) * es,
                        static_cast<size_t>(piece) * es);
        return;
      }
      case Kind::all_to_all: {
        const auto& in = p.in[0];
        SmallShape block(in.shape), so(in.shape), doff(in.shape);
        block[p.dim] /= k;
        for (int q = 0; q < k; ++q) {
          so.d.fill(0);
          doff.d.fill(0);
          so[p.dim] = me * block[p.dim];
          doff[p.dim2] = q * block[p.dim2];
          copy_block(static_cast<const std::byte*>(posts[q]->in[0].data), in.shape, so.span(),
                     static_cast<std::byte*>(p.out[0].data), p.out[0].shape, doff.span(), block.span(),
                     dtype_size(in.dtype));
        }
        return;
      }
      case Kind::broadcast: {
        const TensorRef& src = posts[p.root]->in[0];
        if (p.out[0].data != src.data && src.bytes())
          copy_bytes(p.out[0].data, src.data, static_cast<size_t>(src.bytes()));
        return;
      }
    }
  }

  InProcessWorld::State& s_;
  int64_t rank_;
  std::vector<std::pair<std::vector<int64_t>, Group*>> groups_;
  std::vector<const Post*> posts_;
};

}  // namespace

InProcessWorld::InProcessWorld(int64_t ranks, CommOptions options) : state_(std::make_unique<State>()) {
  if (ranks < 1) throw Error("an in-process world needs at least one rank, got " + std::to_string(ranks));
  if (!(options.timeout_s > 0)) throw Error("the communication timeout must be positive");
  state_->n = ranks;
  state_->options = options;
  for (int64_t r = 0; r < ranks; ++r) ranks_.push_back(std::make_unique<Endpoint>(*state_, r));
}

InProcessWorld::~InProcessWorld() = default;

int64_t InProcessWorld::size() const { return state_->n; }

Communicator& InProcessWorld::rank(int64_t r) {
  if (r < 0 || r >= state_->n)
    throw Error("rank " + std::to_string(r) + " is not in this world of " + std::to_string(state_->n));
  return *ranks_[static_cast<size_t>(r)];
}

}  // namespace tessel::runtime
