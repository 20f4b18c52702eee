#include "runtime/local_run.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "graph/error.h"
#include "runtime/block_copy.h"
#include "runtime/gloo_comm.h"
#include "runtime/thread_pool.h"

namespace tessel::runtime {

LocalRun::LocalRun(std::vector<planner::RankProgram> programs, const planner::PlanConfig& config, ExecutorOptions options,
                   CommOptions comm, int threads)
    : programs_(std::move(programs)), config_(config), mesh_(planner::stage_mesh(config)) {
  const int64_t n = static_cast<int64_t>(programs_.size());
  if (n != config.devices())
    throw Error("the plan " + config.str() + " needs " + std::to_string(config.devices()) + " ranks, got " +
                std::to_string(n) + " programs");
  std::vector<Communicator*> comm_of(static_cast<size_t>(n));
  if (comm.engine == "inprocess") {
    world_ = std::make_unique<InProcessWorld>(n, comm);
    for (int64_t r = 0; r < n; ++r) comm_of[static_cast<size_t>(r)] = &world_->rank(r);
  } else if (comm.engine == "gloo") {
    // Each endpoint waits for the others while it connects: made side by side.
    auto rdv = gloo_memory_rendezvous();
    GlooOptions go;
    go.timeout_s = comm.timeout_s;
    comms_.resize(static_cast<size_t>(n));
    std::vector<std::string> err(static_cast<size_t>(n));
    std::vector<std::thread> makers;
    for (int64_t r = 0; r < n; ++r)
      makers.emplace_back([&, r] {
        try {
          comms_[static_cast<size_t>(r)] = gloo_communicator(r, n, rdv, go);
        } catch (const std::exception& e) {
          err[static_cast<size_t>(r)] = e.what();
        }
      });
    for (auto& t : makers) t.join();
    for (auto& e : err)
      if (!e.empty()) throw Error("connecting " + std::to_string(n) + " Gloo ranks: " + e);
    for (int64_t r = 0; r < n; ++r) comm_of[static_cast<size_t>(r)] = comms_[static_cast<size_t>(r)].get();
  } else {
    throw Error("unknown communication engine '" + comm.engine + "' (inprocess or gloo)");
  }
  start_ranks(comm_of, options, threads);
}

void LocalRun::start_ranks(const std::vector<Communicator*>& comm_of, const ExecutorOptions& options, int threads) {
  // The cores are shared: each rank's kernels get an equal part of them.
  const int64_t n = static_cast<int64_t>(comm_of.size());
  const int cores = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int per_rank = std::max<int>(1, cores / static_cast<int>(n));
  for (int64_t i = 0; i < n; ++i) {
    ExecutorOptions o = options;
    o.recompute = config_.recompute;
    if (!o.parallel && per_rank > 1) {
      pools_.push_back(std::make_unique<ThreadPool>(per_rank));
      o.parallel = pools_.back().get();
    }
    ranks_.push_back(std::make_unique<Executor>(programs_[static_cast<size_t>(first_ + i)], *comm_of[static_cast<size_t>(i)], o));
  }
  for (int64_t r = 0; r < ranks(); ++r) world_group_.push_back(r);
}

LocalRun::LocalRun(std::vector<planner::RankProgram> programs, const planner::PlanConfig& config, int64_t rank,
                   std::unique_ptr<Communicator> comm, ExecutorOptions options, int threads)
    : programs_(std::move(programs)), config_(config), mesh_(planner::stage_mesh(config)), first_(rank) {
  const int64_t n = static_cast<int64_t>(programs_.size());
  if (n != config.devices())
    throw Error("the plan " + config.str() + " needs " + std::to_string(config.devices()) + " ranks, got " +
                std::to_string(n) + " programs");
  if (!comm || comm->size() != n || comm->rank() != rank)
    throw Error("the plan " + config.str() + " runs on " + std::to_string(n) + " ranks, but this process is rank " +
                std::to_string(comm ? comm->rank() : -1) + " of a world of " + std::to_string(comm ? comm->size() : 0));
  comms_.push_back(std::move(comm));
  start_ranks({comms_.back().get()}, options, threads);
  check_same_plan();
}

namespace {

// FNV-1a over the bytes of a string.
uint64_t fingerprint(std::string_view s, uint64_t h = 1469598103934665603ull) {
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

}  // namespace

void LocalRun::check_same_plan() {
  // Each process planned on its own: they must have come to the same plan, or their
  // collectives would not match. One all-gather of a fingerprint says so before any step.
  uint64_t h = fingerprint(config_.str());
  for (const auto& p : programs_) {
    h = fingerprint(std::to_string(p.stage) + "/" + std::to_string(p.graph.size()), h);
    for (auto& [name, pl] : p.variable_placements) h = fingerprint(name + planner::sharding_str(pl), h);
  }
  const int64_t mine = static_cast<int64_t>(h >> 1);
  std::vector<int64_t> all(static_cast<size_t>(ranks()));
  const int64_t one = 1, n = ranks();
  comms_[0]->all_gather(TensorRef{const_cast<int64_t*>(&mine), DType::i64, std::span<const int64_t>(&one, 1), 1},
                        TensorRef{all.data(), DType::i64, std::span<const int64_t>(&n, 1), n}, 0, world_group_);
  for (int64_t r = 0; r < n; ++r)
    if (all[static_cast<size_t>(r)] != all[0])
      throw Error("rank " + std::to_string(r) + " planned differently from rank 0 (this is rank " + std::to_string(first_) +
                  ", plan " + config_.str() + "): every process must run the same command on the same model, batch "
                  "and pins");
}

LocalRun::~LocalRun() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void LocalRun::initialize(int64_t capacity_bytes) {
  // Side by side: ranks connect their groups with each other while initializing.
  if (ranks_.size() == 1) {
    try {
      ranks_[0]->initialize(capacity_bytes);
    } catch (const std::exception& e) {
      if (spans_processes()) comms_[0]->abort(e.what());  // the other processes report it too
      throw;
    }
  } else {
    std::vector<std::string> err(ranks_.size());
    std::vector<std::thread> init;
    for (size_t r = 0; r < ranks_.size(); ++r)
      init.emplace_back([&, r] {
        try {
          ranks_[r]->initialize(capacity_bytes);
        } catch (const std::exception& e) {
          err[r] = e.what();
        }
      });
    for (auto& t : init) t.join();
    for (auto& e : err)
      if (!e.empty()) throw Error(e);
  }
  errors_.assign(ranks_.size(), std::string());
  for (auto& e : errors_) e.reserve(1024);
  for (size_t r = 0; r < ranks_.size(); ++r) threads_.emplace_back([this, r] { worker(r); });
}

void LocalRun::worker(size_t r) {
  int64_t seen = 0;
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || generation_ > seen; });
      if (stop_) return;
      seen = generation_;
    }
    try {
      ranks_[r]->step();
    } catch (const std::exception& e) {
      errors_[r] = e.what();
    }
    std::lock_guard lk(mu_);
    if (--running_ == 0) cv_.notify_all();
  }
}

const std::vector<LocalRun::Feed>& LocalRun::feeds(std::string_view name, const TensorType& whole) const {
  if (threads_.empty()) throw Error("LocalRun: input '" + std::string(name) + "' read before initialize()");
  if (whole.rank() > 8) throw Error("input '" + std::string(name) + "' has more than 8 dims");
  auto it = feed_offsets_.find(name);
  if (it != feed_offsets_.end()) return it->second;
  const int64_t m = config_.microbatches;
  // Per rank: where its block starts, and the dim along which microbatches follow each
  // other in it (-1: every microbatch reads the same block).
  std::vector<Feed> feeds(ranks_.size());
  for (size_t r = 0; r < ranks_.size(); ++r)
    for (auto& [n, pl] : programs_[static_cast<size_t>(first_) + r].input_placements) {
      if (n != name) continue;
      Feed& f = feeds[r];
      const TensorRef first = ranks_[r]->input(name, 0);
      f.reads = first.data != nullptr || whole.numel() == 0;
      f.offsets = planner::shard_offsets(whole.shape, pl, mesh_, programs_[static_cast<size_t>(first_) + r].coords);
      f.block = planner::local_shape(whole.shape, pl, mesh_);
      const Shape local(first.shape.begin(), first.shape.end());
      if (!f.reads) continue;
      for (int d = 0; d < whole.rank(); ++d) {
        if (f.block[d] == local[d]) continue;
        if (f.dim >= 0 || f.block[d] != local[d] * m)
          throw Error("input '" + std::string(name) + "': rank " + std::to_string(first_ + static_cast<int64_t>(r)) +
                      " holds " + shape_str(local) + " of its block " + shape_str(f.block) + ", which is not one of " +
                      std::to_string(m) + " microbatches");
        f.dim = d;
      }
    }
  return feed_offsets_.emplace(std::string(name), std::move(feeds)).first->second;
}

LocalRun::Rows LocalRun::rows(std::string_view name, const TensorType& whole) const {
  Rows rows;
  bool any = false;
  for (const Feed& f : feeds(name, whole)) {
    if (!f.reads) continue;
    const int64_t b = whole.rank() ? f.offsets[0] : 0, e = whole.rank() ? b + f.block[0] : 1;
    rows = any ? Rows{std::min(rows.begin, b), std::max(rows.end, e)} : Rows{b, e};
    any = true;
  }
  return rows;
}

void LocalRun::feed(std::string_view name, const TensorType& whole, std::span<const std::byte> data, int64_t first_row) {
  const int64_t m = config_.microbatches;
  const size_t es = dtype_size(whole.dtype);
  const std::vector<Feed>& feeds = this->feeds(name, whole);
  // The rows given: all of them, or [first_row, first_row + n).
  const int64_t total = whole.rank() ? whole.shape[0] : 1;
  const int64_t row_bytes = total ? whole.bytes() / total : 0;
  const int64_t n = row_bytes ? static_cast<int64_t>(data.size()) / row_bytes : 0;
  if ((row_bytes == 0 && !data.empty()) || (row_bytes && static_cast<int64_t>(data.size()) % row_bytes) ||
      first_row < 0 || first_row + n > total || (whole.rank() == 0 && first_row != 0))
    throw Error("input '" + std::string(name) + "': " + std::to_string(data.size()) + " bytes from row " +
                std::to_string(first_row) + " are not rows of " + whole.str());
  int64_t given[8] = {};  // the shape of the rows given (no allocation in the step loop)
  std::copy(whole.shape.begin(), whole.shape.end(), given);
  if (whole.rank()) given[0] = n;
  static constexpr int64_t kZero[8] = {};
  for (size_t r = 0; r < ranks_.size(); ++r) {
    const Feed& f = feeds[r];
    if (!f.reads || whole.numel() == 0) continue;
    if (whole.rank() && (f.offsets[0] < first_row || f.offsets[0] + f.block[0] > first_row + n))
      throw Error("input '" + std::string(name) + "': rank " + std::to_string(first_ + static_cast<int64_t>(r)) +
                  " reads rows [" + std::to_string(f.offsets[0]) + ", " + std::to_string(f.offsets[0] + f.block[0]) +
                  ") of " + whole.str() + ", but the rows fed are [" + std::to_string(first_row) + ", " +
                  std::to_string(first_row + n) + ")");
    int64_t off[8] = {};  // no allocation in the step loop
    std::copy(f.offsets.begin(), f.offsets.end(), off);
    if (whole.rank()) off[0] -= first_row;
    for (int64_t mb = 0; mb < m; ++mb) {
      TensorRef dst = ranks_[r]->input(name, mb);
      if (!dst.data) continue;
      if (f.dim >= 0)
        off[f.dim] = f.offsets[static_cast<size_t>(f.dim)] - (f.dim == 0 ? first_row : 0) +
                     mb * dst.shape[static_cast<size_t>(f.dim)];
      copy_block(data.data(), std::span<const int64_t>(given, whole.shape.size()), std::span<const int64_t>(off, f.offsets.size()), static_cast<std::byte*>(dst.data),
                 dst.shape, std::span<const int64_t>(kZero, dst.shape.size()), dst.shape, es);
    }
  }
}

void LocalRun::step() {
  if (threads_.empty()) throw Error("LocalRun::step() before initialize()");
  {
    std::unique_lock lk(mu_);
    for (auto& e : errors_) e.clear();
    running_ = ranks_.size();
    ++generation_;
    cv_.notify_all();
    cv_.wait(lk, [&] { return running_ == 0; });
  }
  const std::vector<std::string>& errors = errors_;
  // The rank that failed first is the one not stopped by another's failure.
  bool failed = false;
  for (auto& e : errors) failed = failed || !e.empty();
  if (!failed) return;
  std::string first;
  for (auto& e : errors)
    if (!e.empty() && e.find(" stopped: ") == std::string::npos) {
      first = e;
      break;
    }
  if (first.empty())
    for (auto& e : errors)
      if (!e.empty()) {
        first = e;
        break;
      }
  if (!first.empty()) throw Error(first);
}

namespace {

// Tags of the messages between processes outside a step (gathering variables): above every
// tag the partitioner gives pipeline messages.
constexpr int64_t kHostTag = int64_t{1} << 46;

double scalar_of(const TensorRef& t, std::string_view name) {
  if (t.dtype == DType::f32) return t.as<float>()[0];
  if (t.dtype == DType::f64) return t.as<double>()[0];
  throw Error("output '" + std::string(name) + "' is not a float scalar");
}

}  // namespace

double LocalRun::scalar_output(std::string_view name) {
  if (!spans_processes()) {
    for (auto& r : ranks_) {
      TensorRef t = r->output(name);
      if (t.data) return scalar_of(t, name);
    }
    throw Error("no rank computes an output '" + std::string(name) + "'");
  }
  // Every rank holding the whole value (the loss of a data- or tensor-parallel plan, all-
  // reduced in the step): each process reads its own, with no call between steps.
  bool everywhere = true;
  for (const planner::RankProgram& p : programs_) {
    bool whole = false;
    if (p.graph.output(std::string(name)))
      for (auto& [n, s] : p.output_placements)
        if (n == name) whole = std::none_of(s.begin(), s.end(), [](const planner::Placement& x) { return x.is_shard() || x.is_partial(); });
    everywhere = everywhere && whole;
  }
  if (everywhere) return scalar_of(ranks_[0]->output(name), name);
  // Else the first rank that computes it broadcasts it (every process knows which, from the plan).
  int64_t root = -1;
  for (int64_t r = 0; r < ranks() && root < 0; ++r)
    if (programs_[static_cast<size_t>(r)].graph.output(std::string(name))) root = r;
  if (root < 0) throw Error("no rank computes an output '" + std::string(name) + "'");
  double v = 0;
  if (root == first_) v = scalar_of(ranks_[0]->output(name), name);
  const int64_t one = 1;
  const TensorRef t{&v, DType::f64, std::span<const int64_t>(&one, 1), 1};
  const planner::RankProgram& p = programs_[static_cast<size_t>(root)];
  between_steps("reading output '" + std::string(name) + "' of " + p.graph.node(p.graph.output(std::string(name))->node).where(),
                [&] { comms_[0]->broadcast(t, t, root, world_group_); });
  return v;
}

void LocalRun::between_steps(const std::string& what, const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    throw Error(std::string(e.what()) + " (" + what + ") in step " + std::to_string(generation_));
  }
}

std::vector<std::byte> LocalRun::gather_variable(std::string_view name, const TensorType& global) {
  std::vector<std::byte> whole(static_cast<size_t>(global.bytes()));
  const size_t es = dtype_size(global.dtype);
  // Each distinct shard once, from the first rank holding it.
  struct Shard {
    int64_t rank;
    std::vector<int64_t> offsets;
    Shape shape;
  };
  std::vector<Shard> shards;
  for (int64_t r = 0; r < ranks(); ++r) {
    const planner::RankProgram& p = programs_[static_cast<size_t>(r)];
    for (auto& [n, pl] : p.variable_placements) {
      if (n != name) continue;
      Shard s{r, planner::shard_offsets(global.shape, pl, mesh_, p.coords), planner::local_shape(global.shape, pl, mesh_)};
      bool seen = false;
      for (const Shard& o : shards) seen |= o.offsets == s.offsets;
      if (!seen) shards.push_back(std::move(s));
    }
  }
  if (shards.empty()) throw Error("no rank holds a variable '" + std::string(name) + "'");
  const auto local = [&](int64_t r) { return r >= first_ && r < first_ + local_ranks(); };
  const auto place = [&](const std::byte* data, const Shard& s) {
    const std::vector<int64_t> zero(s.offsets.size(), 0);
    copy_block(data, s.shape, zero, whole.data(), global.shape, s.offsets, s.shape, es);
  };
  if (!spans_processes()) {
    for (const Shard& s : shards) {
      TensorRef v = ranks_[static_cast<size_t>(s.rank)]->variable(name);
      if (!v.data) throw Error("rank " + std::to_string(s.rank) + " holds no variable '" + std::string(name) + "'");
      place(static_cast<const std::byte*>(v.data), s);
    }
    return whole;
  }
  // Across processes: the holders send their shards to rank 0, which sends the whole to all.
  const planner::RankProgram& holder = programs_[static_cast<size_t>(shards.front().rank)];
  const auto id = holder.graph.find(name);
  between_steps("gathering variable " + (id ? holder.graph.node(*id).where() : "'" + std::string(name) + "'"), [&] {
    std::vector<std::byte> buf;
    for (const Shard& s : shards) {
      if (local(s.rank)) {
        TensorRef v = ranks_[static_cast<size_t>(s.rank - first_)]->variable(name);
        if (!v.data) throw Error("rank " + std::to_string(s.rank) + " holds no variable '" + std::string(name) + "'");
        if (first_ == 0) place(static_cast<const std::byte*>(v.data), s);
        else comms_[0]->send(v, 0, kHostTag);
      } else if (first_ == 0) {
        buf.resize(static_cast<size_t>(numel(s.shape)) * es);
        comms_[0]->recv(TensorRef{buf.data(), global.dtype, s.shape, numel(s.shape)}, s.rank, kHostTag);
        place(buf.data(), s);
      }
    }
    const TensorRef all{whole.data(), global.dtype, global.shape, global.numel()};
    comms_[0]->broadcast(all, all, 0, world_group_);
  });
  return whole;
}

std::vector<std::string> LocalRun::gather_text(const std::string& text) {
  if (!spans_processes()) return {text};
  // One rank per process: the lengths, then every text padded to the longest, as i64 words.
  std::vector<std::string> out(static_cast<size_t>(ranks()));
  between_steps("gathering text from every process", [&] {
    const int64_t n = ranks(), one = 1;
    const int64_t mine = static_cast<int64_t>(text.size());
    std::vector<int64_t> sizes(static_cast<size_t>(n));
    comms_[0]->all_gather(TensorRef{const_cast<int64_t*>(&mine), DType::i64, std::span<const int64_t>(&one, 1), 1},
                          TensorRef{sizes.data(), DType::i64, std::span<const int64_t>(&n, 1), n}, 0, world_group_);
    const int64_t words = (*std::max_element(sizes.begin(), sizes.end()) + 7) / 8;
    if (words == 0) return;
    std::vector<int64_t> send(static_cast<size_t>(words), 0), all(static_cast<size_t>(words * n));
    std::memcpy(send.data(), text.data(), text.size());
    const int64_t total = words * n;
    comms_[0]->all_gather(TensorRef{send.data(), DType::i64, std::span<const int64_t>(&words, 1), words},
                          TensorRef{all.data(), DType::i64, std::span<const int64_t>(&total, 1), total}, 0, world_group_);
    for (int64_t r = 0; r < n; ++r)
      out[static_cast<size_t>(r)].assign(reinterpret_cast<const char*>(all.data() + r * words),
                                         static_cast<size_t>(sizes[static_cast<size_t>(r)]));
  });
  return out;
}

std::vector<Executor::JitReport> LocalRun::jit_reports() const {
  std::vector<Executor::JitReport> v;
  for (auto& r : ranks_) v.push_back(r->jit_report());
  return v;
}

std::vector<RankMemory> LocalRun::memory() const {
  std::vector<RankMemory> m;
  for (auto& r : ranks_) m.push_back(r->memory());
  return m;
}

}  // namespace tessel::runtime

namespace tessel::runtime {

namespace {
// The whole shape of a tensor whose block under placement `s` on `mesh` is `local`.
Shape whole_shape(const Shape& local, const planner::Sharding& s, const planner::Mesh& mesh) {
  Shape g = local;
  for (size_t a = 0; a < s.size(); ++a)
    if (s[a].is_shard()) g.at(static_cast<size_t>(s[a].dim)) *= mesh.sizes.at(a);
  return g;
}
}  // namespace

std::vector<std::vector<Shard>> LocalRun::variable_blocks() const {
  std::vector<std::vector<Shard>> out(ranks_.size());
  for (size_t i = 0; i < ranks_.size(); ++i) {
    const planner::RankProgram& p = programs_[static_cast<size_t>(first_) + i];
    for (auto& [name, pl] : p.variable_placements) {
      const TensorRef v = ranks_[i]->variable(name);
      if (!v.data) continue;  // not one this rank's program runs with
      const Shape local(v.shape.begin(), v.shape.end());
      const TensorType global{v.dtype, whole_shape(local, pl, mesh_)};
      out[i].push_back(Shard{name, global, planner::shard_offsets(global.shape, pl, mesh_, p.coords), local, v.data});
    }
  }
  return out;
}

std::vector<std::vector<Shard>> LocalRun::plan_blocks() const {
  std::vector<std::vector<Shard>> out(programs_.size());
  for (size_t r = 0; r < programs_.size(); ++r) {
    const planner::RankProgram& p = programs_[r];
    for (auto& [name, pl] : p.variable_placements) {
      const auto id = p.graph.find(name);
      if (!id) continue;
      const TensorType& local = p.graph.node(*id).outputs[0];
      const TensorType global{local.dtype, whole_shape(local.shape, pl, mesh_)};
      out[r].push_back(Shard{name, global, planner::shard_offsets(global.shape, pl, mesh_, p.coords), local.shape, nullptr});
    }
  }
  return out;
}

std::string LocalRun::save_checkpoint(const std::string& root, const CheckpointState& state, int keep) {
  std::vector<std::vector<Shard>> files = distinct_blocks(plan_blocks());
  // This process's ranks' blocks get their data.
  const auto held = variable_blocks();
  for (size_t i = 0; i < held.size(); ++i)
    for (Shard& s : files[static_cast<size_t>(first_) + i])
      for (const Shard& h : held[i])
        if (h.name == s.name && h.offsets == s.offsets) s.data = h.data;
  for (size_t i = 0; i < held.size(); ++i)
    for (const Shard& s : files[static_cast<size_t>(first_) + i])
      if (!s.data) throw Error("rank " + std::to_string(first_ + static_cast<int64_t>(i)) + " holds no variable '" + s.name + "' to save");
  if (!spans_processes()) return runtime::save_checkpoint(root, state, files, keep);

  // Across processes: rank 0 says go (0), failed (1) or committed already (2); every process
  // writes its ranks' files; all agree they did; rank 0 commits and says how it went.
  const int64_t one = 1;
  auto say = [&](const std::string& what, int64_t& code) {
    between_steps(what, [&] {
      comms_[0]->broadcast(TensorRef{&code, DType::i64, std::span<const int64_t>(&one, 1), 1},
                           TensorRef{&code, DType::i64, std::span<const int64_t>(&one, 1), 1}, 0, world_group_);
    });
  };
  auto any_failed = [&](const std::string& what, int64_t failed) {
    between_steps(what, [&] {
      comms_[0]->all_reduce(TensorRef{&failed, DType::i64, std::span<const int64_t>(&one, 1), 1},
                            TensorRef{&failed, DType::i64, std::span<const int64_t>(&one, 1), 1}, ReduceOp::max, world_group_);
    });
    return failed != 0;
  };
  const std::string step = "checkpoint of step " + std::to_string(state.step);
  std::string error, dir;
  int64_t code = 0;
  if (first_ == 0) {
    try {
      code = begin_checkpoint(root, state.step).empty() ? 2 : 0;
    } catch (const std::exception& e) {
      error = e.what();
      code = 1;
    }
  }
  say("starting the " + step, code);
  if (code == 1) throw Error(first_ == 0 ? error : "the " + step + " failed on rank 0 (it names the reason)");
  if (code == 0) {
    try {
      for (size_t i = 0; i < held.size(); ++i)
        write_checkpoint_file(root, state.step, static_cast<size_t>(first_) + i, files[static_cast<size_t>(first_) + i]);
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (any_failed("writing the " + step, error.empty() ? 0 : 1)) {
      if (first_ == 0) abandon_checkpoint(root, state.step);
      throw Error(!error.empty() ? error : "the " + step + " failed on another rank (it names the reason)");
    }
    if (first_ == 0) {
      try {
        dir = commit_checkpoint(root, state, files, keep);
      } catch (const std::exception& e) {
        error = e.what();
        abandon_checkpoint(root, state.step);
        code = 1;
      }
    }
    say("committing the " + step, code);
    if (code == 1) throw Error(first_ == 0 ? error : "the " + step + " failed to commit on rank 0 (it names the reason)");
  }
  return latest_checkpoint(root);
}

void LocalRun::load_variables(const Checkpoint& checkpoint) {
  for (auto& blocks : variable_blocks())
    for (const Shard& s : blocks) checkpoint.read(s.name, s.global, s.offsets, s.shape, const_cast<void*>(s.data));
}

}  // namespace tessel::runtime
