#include "planner/simulator.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <span>

#include "graph/error.h"

namespace tessel::planner {

const char* stream_name(Stream s) { return s == Stream::comm ? "comm" : s == Stream::none ? "none" : "compute"; }

const char* task_kind_name(TaskKind k) {
  static constexpr const char* kNames[] = {"forward",    "backward", "recompute", "optimizer",
                                           "collective", "send",     "recv",      "other"};
  static_assert(std::size(kNames) == static_cast<size_t>(TaskKind::other) + 1);
  auto i = static_cast<size_t>(k);
  return i < std::size(kNames) ? kNames[i] : "?";
}

namespace {

std::string describe(const Task& t, int64_t index) {
  return "task '" + t.name + "' (#" + std::to_string(index) + ")";
}

// The ranks whose stream `t` occupies.
std::span<const int64_t> occupied(const Task& t) {
  if (t.stream == Stream::none) return {};
  return t.group.empty() ? std::span<const int64_t>(&t.rank, 1) : std::span<const int64_t>(t.group);
}

int64_t stream_key(int64_t rank, Stream s) { return rank * 2 + (s == Stream::comm ? 1 : 0); }

}  // namespace

Simulation::Simulation(int64_t ranks, std::vector<double> base_memory_bytes)
    : ranks_(ranks), base_memory_(std::move(base_memory_bytes)) {
  if (ranks < 1) throw Error("simulator: need at least one rank, got " + std::to_string(ranks));
  if (base_memory_.empty()) base_memory_.assign(static_cast<size_t>(ranks), 0.0);
  if (static_cast<int64_t>(base_memory_.size()) != ranks)
    throw Error("simulator: base memory given for " + std::to_string(base_memory_.size()) +
                " ranks, but there are " + std::to_string(ranks));
  for (double b : base_memory_)
    if (!std::isfinite(b)) throw Error("simulator: base memory is not finite");
}

int64_t Simulation::add(Task t) {
  const auto index = static_cast<int64_t>(tasks_.size());
  auto fail = [&](const std::string& why) {
    throw Error("simulator: " + describe(t, index) + ": " + why);
  };
  if (t.rank < 0 || t.rank >= ranks_)
    fail("rank " + std::to_string(t.rank) + " is not in [0, " + std::to_string(ranks_) + ")");
  if (t.stream != Stream::compute && t.stream != Stream::comm && t.stream != Stream::none) fail("unknown stream");
  if (t.stream == Stream::none && (t.duration_s != 0 || t.wake_s != 0 || t.transient_bytes != 0 || !t.group.empty()))
    fail("a task on no stream takes no time, holds no working memory and has no group");
  if (!std::isfinite(t.duration_s) || t.duration_s < 0)
    fail("duration " + std::to_string(t.duration_s) + " s is not finite and >= 0");
  if (!std::isfinite(t.memory_delta_bytes)) fail("memory delta is not finite");
  if (!(t.transient_bytes >= 0) || !std::isfinite(t.transient_bytes)) fail("transient memory is negative or not finite");
  if (!(t.released_bytes >= 0) || !std::isfinite(t.released_bytes)) fail("released memory is negative or not finite");
  if (!std::isfinite(t.wake_s) || t.wake_s < 0) fail("wake time " + std::to_string(t.wake_s) + " s is not finite and >= 0");
  for (int64_t d : t.deps)
    if (d < 0 || d >= index) fail("dependency " + std::to_string(d) + " is not an earlier task");
  if (!t.group.empty()) {
    std::vector<int64_t> sorted = t.group;
    std::sort(sorted.begin(), sorted.end());
    if (sorted.front() < 0 || sorted.back() >= ranks_)
      fail("group rank " + std::to_string(sorted.front() < 0 ? sorted.front() : sorted.back()) +
           " is not in [0, " + std::to_string(ranks_) + ")");
    if (auto dup = std::adjacent_find(sorted.begin(), sorted.end()); dup != sorted.end())
      fail("rank " + std::to_string(*dup) + " appears twice in the group");
    if (!std::binary_search(sorted.begin(), sorted.end(), t.rank))
      fail("rank " + std::to_string(t.rank) + " is not in its own group");
  }
  tasks_.push_back(std::move(t));
  return index;
}

void Simulation::add_dep(int64_t task, int64_t dep) {
  const auto n = static_cast<int64_t>(tasks_.size());
  if (task < 0 || task >= n) throw Error("simulator: add_dep: no task #" + std::to_string(task));
  if (dep < 0 || dep >= n || dep == task)
    throw Error("simulator: " + describe(tasks_[task], task) + ": dependency " +
                std::to_string(dep) + " is not another task");
  tasks_[task].deps.push_back(dep);
}

void Simulation::set_compute_concurrency(double ranks) {
  if (!(ranks >= 0) || !std::isfinite(ranks))
    throw Error("simulator: compute concurrency must be a finite number >= 0, got " + std::to_string(ranks));
  concurrency_ = ranks;
}

Simulation::Result Simulation::run() const {
  const auto n = static_cast<int64_t>(tasks_.size());
  const int64_t keys = ranks_ * 2;

  // One slot per (task, occupied stream); the task before and after it on that stream.
  std::vector<int64_t> slot_begin(n + 1, 0);
  for (int64_t t = 0; t < n; ++t)
    slot_begin[t + 1] = slot_begin[t] + static_cast<int64_t>(occupied(tasks_[t]).size());
  std::vector<int64_t> prev_task(slot_begin[n], -1), next_task(slot_begin[n], -1);
  std::vector<int64_t> last_slot(keys, -1), last_task(keys, -1), stream_count(keys + 1, 0);
  std::vector<int64_t> waiting(n, 0);  // preds not yet ended: deps + stream predecessors
  std::vector<int64_t> rdep_begin(n + 1, 0);
  for (int64_t t = 0; t < n; ++t) {
    const Task& task = tasks_[t];
    auto ranks = occupied(task);
    for (size_t j = 0; j < ranks.size(); ++j) {
      const int64_t slot = slot_begin[t] + static_cast<int64_t>(j);
      const int64_t k = stream_key(ranks[j], task.stream);
      if (const int64_t before = last_slot[k]; before >= 0) {
        next_task[before] = t;
        prev_task[slot] = last_task[k];
        ++waiting[t];
      }
      last_slot[k] = slot;
      last_task[k] = t;
      ++stream_count[k + 1];
    }
    waiting[t] += static_cast<int64_t>(task.deps.size());
    for (int64_t d : task.deps) ++rdep_begin[d + 1];
  }
  for (int64_t t = 0; t < n; ++t) rdep_begin[t + 1] += rdep_begin[t];
  std::vector<int64_t> rdeps(rdep_begin[n]);
  {
    std::vector<int64_t> cursor(rdep_begin.begin(), rdep_begin.end() - 1);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t d : tasks_[t].deps) rdeps[cursor[d]++] = t;
  }

  // Longest path through deps + stream order, in any topological order: with in-order
  // streams there is no scheduling choice, so start = max(ends of predecessors).
  Result r;
  r.start_s.assign(n, 0.0);
  r.end_s.assign(n, 0.0);
  std::vector<int64_t> ready;
  ready.reserve(n);
  for (int64_t t = 0; t < n; ++t)
    if (waiting[t] == 0) ready.push_back(t);
  const bool sharing = concurrency_ > 0 && concurrency_ < static_cast<double>(ranks_);
  // A task's time on its streams: its duration, plus its wake time when it found a stream idle.
  std::vector<double> busy_s(n, 0.0);
  auto took = [&](int64_t t) {
    double d = tasks_[t].duration_s;
    if (tasks_[t].wake_s > 0) {
      bool idle = false;
      for (int64_t s = slot_begin[t]; s < slot_begin[t + 1] && !idle; ++s)
        idle = prev_task[s] < 0 || r.end_s[prev_task[s]] < r.start_s[t];
      if (idle) d += tasks_[t].wake_s;
    }
    return busy_s[t] = d;
  };
  if (!sharing) {
    for (size_t head = 0; head < ready.size(); ++head) {
      const int64_t t = ready[head];
      const double end = r.start_s[t] + took(t);
      r.end_s[t] = end;
      r.step_time_s = std::max(r.step_time_s, end);
      auto release = [&](int64_t u) {
        r.start_s[u] = std::max(r.start_s[u], end);
        if (--waiting[u] == 0) ready.push_back(u);
      };
      for (int64_t s = slot_begin[t]; s < slot_begin[t + 1]; ++s)
        if (next_task[s] >= 0) release(next_task[s]);
      for (int64_t i = rdep_begin[t]; i < rdep_begin[t + 1]; ++i) release(rdeps[i]);
    }
  } else {
    // Processor sharing: advance from one task's end to the next; a task starts the moment
    // its last predecessor ends, compute tasks progress at the shared speed.
    std::vector<double> left(n, 0.0);
    std::vector<int64_t> active;
    double now = 0;
    auto start = [&](int64_t u) {
      r.start_s[u] = now;
      left[u] = took(u);
      active.push_back(u);
    };
    for (int64_t t : ready) start(t);
    while (!active.empty()) {
      int64_t busy = 0;
      for (int64_t a : active) busy += tasks_[a].stream == Stream::compute && left[a] > 0;
      const double speed = static_cast<double>(busy) > concurrency_ ? concurrency_ / static_cast<double>(busy) : 1.0;
      auto rate = [&](int64_t a) { return tasks_[a].stream == Stream::compute ? speed : 1.0; };
      double dt = std::numeric_limits<double>::infinity();
      size_t first = 0;
      for (size_t i = 0; i < active.size(); ++i)
        if (const double d = left[active[i]] / rate(active[i]); d < dt) dt = d, first = i;
      now += dt;
      std::vector<int64_t> done{active[first]};
      left[active[first]] = 0;
      for (size_t i = 0; i < active.size(); ++i) {
        if (i == first) continue;
        const int64_t a = active[i];
        left[a] -= dt * rate(a);
        if (left[a] <= 1e-12 * std::max(tasks_[a].duration_s, 1e-9)) left[a] = 0, done.push_back(a);
      }
      active.erase(std::remove_if(active.begin(), active.end(), [&](int64_t a) { return left[a] == 0; }), active.end());
      for (int64_t t : done) {
        r.end_s[t] = now;
        r.step_time_s = std::max(r.step_time_s, now);
        auto release = [&](int64_t u) {
          if (--waiting[u] == 0) {
            ready.push_back(u);
            start(u);
          }
        };
        for (int64_t s = slot_begin[t]; s < slot_begin[t + 1]; ++s)
          if (next_task[s] >= 0) release(next_task[s]);
        for (int64_t i = rdep_begin[t]; i < rdep_begin[t + 1]; ++i) release(rdeps[i]);
      }
    }
  }

  if (static_cast<int64_t>(ready.size()) < n) {
    // Every task left waits on some other task left: walk back until a task repeats.
    int64_t t = 0;
    while (waiting[t] == 0) ++t;
    std::vector<int64_t> seen_at(n, -1), path;
    std::vector<std::string> links;  // links[i]: how path[i] waits for path[i + 1]
    while (seen_at[t] < 0) {
      seen_at[t] = static_cast<int64_t>(path.size());
      path.push_back(t);
      const Task& task = tasks_[t];
      int64_t pred = -1;
      std::string how;
      for (int64_t d : task.deps)
        if (waiting[d] > 0) {
          pred = d;
          how = "waits for";
          break;
        }
      auto ranks = occupied(task);
      for (size_t j = 0; j < ranks.size() && pred < 0; ++j) {
        const int64_t p = prev_task[slot_begin[t] + static_cast<int64_t>(j)];
        if (p >= 0 && waiting[p] > 0) {
          pred = p;
          how = std::string("is queued on rank ") + std::to_string(ranks[j]) + "'s " +
                stream_name(task.stream) + " stream behind";
        }
      }
      links.push_back(std::move(how));
      t = pred;
    }
    // The cycle is path[seen_at[t]..], back to t; report a few of its links on one line.
    const auto first = static_cast<size_t>(seen_at[t]);
    constexpr size_t kShown = 8;
    std::string msg = "simulator: deadlock: " + describe(tasks_[path[first]], path[first]);
    for (size_t i = first; i < path.size() && i < first + kShown; ++i) {
      const int64_t next = i + 1 < path.size() ? path[i + 1] : t;
      msg += (i == first ? " " : ", which ") + links[i] + " " + describe(tasks_[next], next);
    }
    if (path.size() - first > kShown)
      msg += ", ... (" + std::to_string(path.size() - first - kShown) + " more tasks on the cycle)";
    throw Error(msg);
  }

  // Each stream's tasks in stream order, which is also time order (start >= end before).
  for (int64_t k = 0; k < keys; ++k) stream_count[k + 1] += stream_count[k];
  std::vector<int64_t> on_stream(stream_count[keys]);
  {
    std::vector<int64_t> cursor(stream_count.begin(), stream_count.end() - 1);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t rank : occupied(tasks_[t]))
        on_stream[cursor[stream_key(rank, tasks_[t].stream)]++] = t;
  }
  r.ranks.assign(ranks_, Result::RankStats{});
  for (int64_t rank = 0; rank < ranks_; ++rank) {
    Result::RankStats& st = r.ranks[rank];
    const int64_t* compute = on_stream.data() + stream_count[2 * rank];
    const int64_t* comm = on_stream.data() + stream_count[2 * rank + 1];
    const int64_t* comm_end = on_stream.data() + stream_count[2 * rank + 2];
    for (const int64_t* p = compute; p != comm; ++p) {
      const Task& task = tasks_[*p];
      // Busy time: the task's duration, stretched when it shared the cores.
      const double busy = sharing ? r.end_s[*p] - r.start_s[*p] : busy_s[*p];
      st.compute_s += busy;
      switch (task.kind) {
        case TaskKind::forward:
          st.forward_s += busy;
          break;
        case TaskKind::backward:
          st.backward_s += busy;
          break;
        case TaskKind::recompute:
          st.recompute_s += busy;
          break;
        case TaskKind::optimizer:
          st.optimizer_s += busy;
          break;
        default:
          break;
      }
    }
    for (const int64_t* p = comm; p != comm_end; ++p) st.comm_s += busy_s[*p];
    // Comm time hidden under compute: intersect the two sorted, disjoint interval lists.
    double hidden = 0;
    for (const int64_t *a = compute, *b = comm; a != comm && b != comm_end;) {
      const double lo = std::max(r.start_s[*a], r.start_s[*b]);
      const double hi = std::min(r.end_s[*a], r.end_s[*b]);
      if (hi > lo) hidden += hi - lo;
      if (r.end_s[*a] < r.end_s[*b])
        ++a;
      else
        ++b;
    }
    // Differences of sums carry rounding residues (a bubble of 1e-19 s): below a billionth
    // of the step they are zero.
    const double residue = 1e-9 * r.step_time_s;
    auto clean = [&](double x) { return std::abs(x) <= residue ? 0.0 : x; };
    st.idle_s = clean(r.step_time_s - st.compute_s);
    st.exposed_comm_s = clean(st.comm_s - hidden);
    st.bubble_s = clean(st.idle_s - st.exposed_comm_s);
    st.peak_memory_bytes = base_memory_[rank];
  }

  // Peak memory: allocations at start, frees at end; at equal times frees first.
  struct MemoryEvent {
    int64_t rank;
    double time, delta;
  };
  std::vector<MemoryEvent> events;
  for (int64_t t = 0; t < n; ++t) {
    const Task& task = tasks_[t];
    if (task.memory_delta_bytes != 0)
      events.push_back({task.rank, task.memory_delta_bytes > 0 ? r.start_s[t] : r.end_s[t],
                        task.memory_delta_bytes});
    if (task.released_bytes > 0) events.push_back({task.rank, r.start_s[t], -task.released_bytes});
    if (task.transient_bytes > 0) {
      events.push_back({task.rank, r.start_s[t], task.transient_bytes});
      events.push_back({task.rank, r.end_s[t], -task.transient_bytes});
    }
  }
  std::sort(events.begin(), events.end(), [](const MemoryEvent& a, const MemoryEvent& b) {
    if (a.rank != b.rank) return a.rank < b.rank;
    if (a.time != b.time) return a.time < b.time;
    return a.delta < b.delta;
  });
  for (size_t i = 0; i < events.size();) {
    const int64_t rank = events[i].rank;
    double in_use = base_memory_[rank];
    for (; i < events.size() && events[i].rank == rank; ++i) {
      in_use += events[i].delta;
      r.ranks[rank].peak_memory_bytes = std::max(r.ranks[rank].peak_memory_bytes, in_use);
    }
  }
  return r;
}

namespace {

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\u00";
      out += kHex[(c >> 4) & 0xf];
      out += kHex[c & 0xf];
    } else {
      out += c;
    }
  }
  out += '"';
}

void append_number(std::string& out, double v) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, ec == std::errc() ? end : buf);
}

}  // namespace

std::string Simulation::chrome_trace_json(const Result& r) const {
  const auto n = static_cast<int64_t>(tasks_.size());
  if (static_cast<int64_t>(r.start_s.size()) != n || static_cast<int64_t>(r.end_s.size()) != n)
    throw Error("simulator: chrome trace: the result is for " + std::to_string(r.start_s.size()) +
                " tasks, the simulation has " + std::to_string(n));
  std::string out = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  bool first = true;
  auto begin_event = [&] {
    if (!first) out += ",\n";
    first = false;
  };
  // Numeric tids named by metadata: every viewer accepts them and shows the stream name.
  for (int64_t rank = 0; rank < ranks_; ++rank) {
    const std::string pid = std::to_string(rank);
    begin_event();
    out += "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":" + pid +
           ",\"args\":{\"name\":\"rank " + pid + "\"}}";
    for (Stream s : {Stream::compute, Stream::comm}) {
      begin_event();
      out += "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":" + pid +
             ",\"tid\":" + std::to_string(static_cast<int>(s)) + ",\"args\":{\"name\":\"" +
             stream_name(s) + "\"}}";
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    const Task& task = tasks_[t];
    for (int64_t rank : occupied(task)) {
      begin_event();
      out += "{\"name\":";
      append_json_string(out, task.name);
      out += ",\"cat\":\"";
      out += task_kind_name(task.kind);
      out += "\",\"ph\":\"X\",\"pid\":" + std::to_string(rank) +
             ",\"tid\":" + std::to_string(static_cast<int>(task.stream)) + ",\"ts\":";
      append_number(out, r.start_s[t] * 1e6);
      out += ",\"dur\":";
      append_number(out, (r.end_s[t] - r.start_s[t]) * 1e6);
      out += ",\"args\":{\"kind\":\"";
      out += task_kind_name(task.kind);
      out += "\",\"task\":" + std::to_string(t) + "}}";
    }
  }
  out += "\n]}\n";
  return out;
}

}  // namespace tessel::planner
