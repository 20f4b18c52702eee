#include "runtime/local_run.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "graph/error.h"
#include "runtime/block_copy.h"
#include "runtime/gloo_comm.h"
#include "runtime/thread_pool.h"

namespace tessel::runtime {

LocalRun::LocalRun(std::vector<planner::RankProgram> programs, const planner::PlanConfig& config, RankOptions options,
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
  // The cores are shared: each rank's kernels get an equal part of them.
  const int cores = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int per_rank = std::max<int>(1, cores / static_cast<int>(n));
  for (int64_t r = 0; r < n; ++r) {
    RankOptions o = options;
    o.recompute = config.recompute;
    if (!o.parallel && per_rank > 1) {
      pools_.push_back(std::make_unique<ThreadPool>(per_rank));
      o.parallel = pools_.back().get();
    }
    ranks_.push_back(std::make_unique<RankExecutor>(programs_[static_cast<size_t>(r)], *comm_of[static_cast<size_t>(r)], o));
  }
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
  for (auto& r : ranks_) r->initialize(capacity_bytes);
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

void LocalRun::feed(std::string_view name, const TensorType& whole, std::span<const std::byte> data) {
  const int64_t m = config_.microbatches;
  const size_t es = dtype_size(whole.dtype);
  if (static_cast<int64_t>(data.size()) != whole.bytes())
    throw Error("input '" + std::string(name) + "': " + std::to_string(data.size()) + " bytes for " + whole.str());
  if (whole.rank() > 8) throw Error("input '" + std::string(name) + "' has more than 8 dims");
  auto it = feed_offsets_.find(name);
  if (it == feed_offsets_.end()) {
    // Per rank: where its block starts, and the dim along which microbatches follow each
    // other in it (-1: every microbatch reads the same block).
    std::vector<Feed> feeds(ranks_.size());
    for (size_t r = 0; r < ranks_.size(); ++r)
      for (auto& [n, pl] : programs_[r].input_placements) {
        if (n != name) continue;
        Feed& f = feeds[r];
        f.offsets = planner::shard_offsets(whole.shape, pl, mesh_, programs_[r].coords);
        const Shape block = planner::local_shape(whole.shape, pl, mesh_);
        const TensorRef first = ranks_[r]->input(name, 0);
        const Shape local(first.shape.begin(), first.shape.end());
        for (int d = 0; d < whole.rank(); ++d) {
          if (block[d] == local[d]) continue;
          if (f.dim >= 0 || block[d] != local[d] * m)
            throw Error("input '" + std::string(name) + "': rank " + std::to_string(r) + " holds " + shape_str(local) +
                        " of its block " + shape_str(block) + ", which is not one of " + std::to_string(m) + " microbatches");
          f.dim = d;
        }
      }
    it = feed_offsets_.emplace(std::string(name), std::move(feeds)).first;
  }
  static constexpr int64_t kZero[8] = {};
  for (size_t r = 0; r < ranks_.size(); ++r) {
    const Feed& f = it->second[r];
    if (f.offsets.empty() && whole.rank() > 0) continue;
    int64_t off[8] = {};  // no allocation in the step loop
    std::copy(f.offsets.begin(), f.offsets.end(), off);
    for (int64_t mb = 0; mb < m; ++mb) {
      TensorRef dst = ranks_[r]->input(name, mb);
      if (!dst.data) continue;
      if (f.dim >= 0) off[f.dim] = f.offsets[static_cast<size_t>(f.dim)] + mb * dst.shape[static_cast<size_t>(f.dim)];
      copy_block(data.data(), whole.shape, std::span<const int64_t>(off, f.offsets.size()), static_cast<std::byte*>(dst.data), dst.shape,
                 std::span<const int64_t>(kZero, dst.shape.size()), dst.shape, es);
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

double LocalRun::scalar_output(std::string_view name) {
  for (auto& r : ranks_) {
    TensorRef t = r->output(name);
    if (!t.data) continue;
    if (t.dtype == DType::f32) return t.as<float>()[0];
    if (t.dtype == DType::f64) return t.as<double>()[0];
    throw Error("output '" + std::string(name) + "' is not a float scalar");
  }
  throw Error("no rank computes an output '" + std::string(name) + "'");
}

std::vector<std::byte> LocalRun::gather_variable(std::string_view name, const TensorType& global) {
  std::vector<std::byte> whole(static_cast<size_t>(global.bytes()));
  bool any = false;
  for (size_t r = 0; r < ranks_.size(); ++r) {
    TensorRef v = ranks_[r]->variable(name);
    if (!v.data) continue;
    planner::Sharding s;
    for (auto& [n, pl] : programs_[r].variable_placements)
      if (n == name) s = pl;
    const std::vector<int64_t> off = planner::shard_offsets(global.shape, s, mesh_, programs_[r].coords);
    const std::vector<int64_t> zero(off.size(), 0);
    copy_block(static_cast<const std::byte*>(v.data), v.shape, zero, whole.data(), global.shape, off, v.shape,
               dtype_size(global.dtype));
    any = true;
  }
  if (!any) throw Error("no rank holds a variable '" + std::string(name) + "'");
  return whole;
}

std::vector<RankExecutor::JitReport> LocalRun::jit_reports() const {
  std::vector<RankExecutor::JitReport> v;
  for (auto& r : ranks_) v.push_back(r->jit_report());
  return v;
}

std::vector<RankMemory> LocalRun::memory() const {
  std::vector<RankMemory> m;
  for (auto& r : ranks_) m.push_back(r->memory());
  return m;
}

}  // namespace tessel::runtime
