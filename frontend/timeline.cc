#include "frontend/timeline.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "graph/error.h"
#include "graph/text.h"

namespace tessel {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

// A field of a tab-separated line: no tabs or newlines inside.
std::string field(std::string s) {
  for (char& c : s)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return s;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t at = 0;
  for (;;) {
    const size_t next = s.find(sep, at);
    out.push_back(s.substr(at, next == std::string::npos ? std::string::npos : next - at));
    if (next == std::string::npos) return out;
    at = next + 1;
  }
}

}  // namespace

void StepRecorder::after_step(const detail::Engine& engine, int64_t step, int64_t start_ns, int64_t end_ns) {
  const auto parts = engine.breakdowns();
  if (ranks_.empty()) {
    for (auto& [rank, b] : parts) ranks_.push_back(rank);
    parts_.resize(ranks_.size());
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    const runtime::StepBreakdown& b = parts[i].second;
    parts_[i].push_back({b.step_s, b.compute_s, b.optimizer_s, b.exposed_comm_s, b.bubble_s, b.other_s});
  }
  if (step < trace_first_ || step >= trace_first_ + trace_steps_) return;
  for (const auto& [rank, t] : engine.timelines()) {
    if (origin_ns_ < 0 || start_ns < origin_ns_) origin_ns_ = start_ns;
    std::ostringstream os;
    os << rank << "\t0\t" << start_ns << "\t" << end_ns << "\tstep\t" << step << "\tstep " << step + 1 << "\t\n";
    for (const runtime::StepEvent& e : t.events)
      os << rank << "\t" << (e.comm ? 1 : 0) << "\t" << e.start_ns << "\t" << e.end_ns << "\t"
         << runtime::step_event_kind_name(e.kind) << "\t" << step << "\t" << field(e.what) << "\t"
         << (e.node ? field(e.node->origin.str()) : "") << "\n";
    events_ += os.str();
  }
}

MeasuredSteps StepRecorder::finish(detail::Engine& engine, const std::vector<int64_t>& memory, double step_ms_median) {
  // This process's ranks: one line each with its medians and memory, then the traced events.
  std::ostringstream mine;
  mine.precision(17);
  for (size_t i = 0; i < ranks_.size(); ++i) {
    auto med = [&](double MeasuredParts::*f) {
      std::vector<double> v;
      for (const MeasuredParts& p : parts_[i]) v.push_back(p.*f);
      return median(std::move(v));
    };
    mine << "rank\t" << ranks_[i] << "\t" << med(&MeasuredParts::step_s) << "\t" << med(&MeasuredParts::compute_s) << "\t"
         << med(&MeasuredParts::optimizer_s) << "\t" << med(&MeasuredParts::exposed_comm_s) << "\t"
         << med(&MeasuredParts::bubble_s) << "\t" << med(&MeasuredParts::other_s) << "\t"
         << (i < memory.size() ? memory[i] : 0) << "\n";
  }
  mine << "origin\t" << origin_ns_ << "\n" << events_;
  const std::vector<std::string> all = engine.gather_text(mine.str());

  MeasuredSteps m;
  struct Ev {
    int64_t rank, tid, start, end, step;
    std::string kind, name, where;
  };
  std::vector<Ev> events;
  std::vector<int64_t> origins;
  std::map<int64_t, int64_t> origin_of;  // per rank: its process's origin (-1: it traced nothing)
  for (size_t p = 0; p < all.size(); ++p) {
    std::vector<int64_t> ranks_here;
    for (const std::string& line : split(all[p], '\n')) {
      if (line.empty()) continue;
      const std::vector<std::string> f = split(line, '\t');
      if (f[0] == "rank" && f.size() == 9) {
        const size_t r = static_cast<size_t>(std::stoll(f[1]));
        if (m.ranks.size() <= r) m.ranks.resize(r + 1), m.peak_bytes.resize(r + 1);
        m.ranks[r] = {std::stod(f[2]), std::stod(f[3]), std::stod(f[4]), std::stod(f[5]), std::stod(f[6]), std::stod(f[7])};
        m.peak_bytes[r] = std::stoll(f[8]);
        ranks_here.push_back(static_cast<int64_t>(r));
      } else if (f[0] == "origin" && f.size() == 2) {  // after the process's rank lines
        const int64_t origin = std::stoll(f[1]);
        if (origin >= 0) origins.push_back(origin);
        for (int64_t r : ranks_here) origin_of[r] = origin;
      } else if (f.size() == 8) {
        events.push_back({std::stoll(f[0]), std::stoll(f[1]), std::stoll(f[2]), std::stoll(f[3]), std::stoll(f[5]), f[4],
                          f[6], f[7]});
      } else {
        throw Error("a process sent a malformed timeline line: '" + line.substr(0, 80) + "'");
      }
    }
  }
  for (size_t r = 0; r < m.ranks.size(); ++r)
    if (m.ranks[r].compute_s + m.ranks[r].optimizer_s >
        m.ranks[static_cast<size_t>(m.busiest)].compute_s + m.ranks[static_cast<size_t>(m.busiest)].optimizer_s)
      m.busiest = static_cast<int64_t>(r);
  if (events.empty()) return m;

  // Processes of one host share the monotonic clock: their times are comparable as they are.
  // Clocks of other hosts start elsewhere (their origins lie far apart): each process's
  // events are then shifted to start where the earliest process's do.
  const int64_t first = *std::min_element(origins.begin(), origins.end());
  const int64_t last = *std::max_element(origins.begin(), origins.end());
  const bool one_clock = last - first < 2'000'000'000;
  std::map<int64_t, int64_t> shift;  // per rank, ns to subtract
  for (auto [rank, origin] : origin_of) shift[rank] = one_clock || origin < 0 ? first : origin;
  std::map<int64_t, std::pair<int64_t, int64_t>> span;  // per traced step: earliest start, latest end
  for (const Ev& e : events) {
    if (e.kind != "step") continue;
    auto [it, fresh] = span.try_emplace(e.step, e.start - shift[e.rank], e.end - shift[e.rank]);
    if (!fresh) {
      it->second.first = std::min(it->second.first, e.start - shift[e.rank]);
      it->second.second = std::max(it->second.second, e.end - shift[e.rank]);
    }
  }
  for (auto& [step, s] : span) m.traced_step_s.push_back({step, 1e-9 * static_cast<double>(s.second - s.first)});
  if (!span.empty()) {
    const auto& [first_step, s] = *span.begin();
    for (const Ev& e : events)
      if (e.step == first_step && e.kind != "step")
        m.first_step.push_back({e.rank, e.tid ? "comm" : "compute", e.name, e.kind,
                                1e-9 * static_cast<double>(e.start - shift[e.rank] - s.first),
                                1e-9 * static_cast<double>(std::max<int64_t>(0, e.end - e.start))});
  }

  std::ostringstream os;
  os.precision(12);
  os << "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"step_ms_median\":" << json_number(step_ms_median)
     << ",\"clock\":" << json_quote(one_clock ? "one monotonic clock" : "per host, aligned at the first traced step")
     << ",\"traced_steps\":[";
  for (size_t i = 0; i < m.traced_step_s.size(); ++i)
    os << (i ? "," : "") << "{\"step\":" << m.traced_step_s[i].first + 1
       << ",\"ms\":" << json_number(1e3 * m.traced_step_s[i].second) << "}";
  os << "]},\n\"traceEvents\":[\n";
  bool comma = false;
  for (size_t r = 0; r < m.ranks.size(); ++r) {
    os << (comma ? ",\n" : "") << "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":" << r << ",\"args\":{\"name\":\"rank " << r
       << "\"}},\n{\"ph\":\"M\",\"name\":\"process_sort_index\",\"pid\":" << r << ",\"args\":{\"sort_index\":" << r
       << "}},\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":" << r
       << ",\"tid\":0,\"args\":{\"name\":\"compute\"}},\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":" << r
       << ",\"tid\":1,\"args\":{\"name\":\"comm\"}}";
    comma = true;
  }
  for (const Ev& e : events) {
    const double ts = 1e-3 * static_cast<double>(e.start - shift[e.rank]);
    const double dur = 1e-3 * static_cast<double>(std::max<int64_t>(0, e.end - e.start));
    os << ",\n{\"ph\":\"X\",\"pid\":" << e.rank << ",\"tid\":" << e.tid << ",\"ts\":" << ts << ",\"dur\":" << dur
       << ",\"name\":" << json_quote(e.name) << ",\"cat\":" << json_quote(e.kind) << ",\"args\":{\"step\":" << e.step + 1;
    if (!e.where.empty()) os << ",\"where\":" << json_quote(e.where);
    os << "}}";
  }
  os << "\n]}\n";
  m.trace_json = os.str();
  return m;
}

namespace {

std::string ms(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f ms", 1e3 * s);
  return b;
}

std::string off(double predicted, double measured) {
  if (measured <= 0) return "";
  char b[32];
  std::snprintf(b, sizeof b, "%+.0f %%", 100 * (predicted - measured) / measured);
  return b;
}

std::string mib(double b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f MiB", b / 1048576.0);
  return s;
}

double predicted_peak(const planner::PlanEstimate& p, const std::vector<int64_t>& rank_stage, size_t r) {
  const int64_t st = r < rank_stage.size() ? rank_stage[r] : 0;
  return st >= 0 && static_cast<size_t>(st) < p.stages.size() ? p.stages[static_cast<size_t>(st)].peak_memory_bytes : NAN;
}

// The rest of the reported step beside the busiest rank's measured parts: dispatch and host
// work. Each part is a median over the steps, as the step is; medians do not add up, so the
// rest is taken from the reported step and the parts add up to it.
double other_s(const MeasuredParts& b, double step_ms_median) {
  return std::max(0.0, step_ms_median / 1e3 - b.compute_s - b.optimizer_s - b.exposed_comm_s - b.bubble_s);
}
}  // namespace

void print_predicted_vs_measured(std::ostream& os, const planner::PlanEstimate& p, const std::vector<int64_t>& rank_stage,
                                 const MeasuredSteps& m, double step_ms_median) {
  if (m.ranks.empty()) return;
  const MeasuredParts& b = m.ranks[static_cast<size_t>(m.busiest)];
  char line[200];
  os << "predicted vs measured (median step; its parts on the busiest rank, rank " << m.busiest << "):\n";
  auto row = [&](const char* what, double pred, double meas) {
    pred = std::isnan(pred) ? pred : std::max(pred, 0.0);
    std::snprintf(line, sizeof line, "  %-14s %11s %11s  %s\n", what, std::isnan(pred) ? "-" : ms(pred).c_str(),
                  ms(meas).c_str(), std::isnan(pred) ? "" : off(pred, meas).c_str());
    os << line;
  };
  std::snprintf(line, sizeof line, "  %-14s %11s %11s\n", "", "predicted", "measured");
  os << line;
  row("step", p.step_time_s, step_ms_median / 1e3);
  row("compute", p.compute_s, b.compute_s);
  row("optimizer", p.optimizer_s, b.optimizer_s);
  row("exposed comm", p.exposed_comm_s, b.exposed_comm_s);
  row("bubble", p.bubble_s, b.bubble_s);
  row("other", NAN, other_s(b, step_ms_median));
  os << "  peak memory per rank (predicted / allocated):";
  for (size_t r = 0; r < m.peak_bytes.size(); ++r) {
    const double pred = predicted_peak(p, rank_stage, r);
    os << (r ? "," : "") << " " << r << ": " << mib(pred) << " / " << mib(static_cast<double>(m.peak_bytes[r])) << " ("
       << off(pred, static_cast<double>(m.peak_bytes[r])) << ")";
  }
  os << "\n";
}

std::string predicted_vs_measured_json(const planner::PlanEstimate& p, const std::vector<int64_t>& rank_stage,
                                       const MeasuredSteps& m, double step_ms_median) {
  std::ostringstream os;
  const MeasuredParts b = m.ranks.empty() ? MeasuredParts{} : m.ranks[static_cast<size_t>(m.busiest)];
  double pred_peak = 0;
  int64_t meas_peak = 0;
  for (size_t r = 0; r < m.peak_bytes.size(); ++r) {
    pred_peak = std::max(pred_peak, predicted_peak(p, rank_stage, r));
    meas_peak = std::max(meas_peak, m.peak_bytes[r]);
  }
  os << "\"predicted_step_ms\":" << json_number(1e3 * p.step_time_s) << ",\"predicted_peak_bytes\":" << json_number(pred_peak)
     << ",\"measured_peak_bytes\":" << meas_peak << ",\"predicted\":{\"step_ms\":" << json_number(1e3 * p.step_time_s)
     << ",\"compute_ms\":" << json_number(1e3 * p.compute_s) << ",\"optimizer_ms\":" << json_number(1e3 * p.optimizer_s)
     << ",\"exposed_comm_ms\":" << json_number(1e3 * p.exposed_comm_s) << ",\"bubble_ms\":" << json_number(1e3 * p.bubble_s)
     << "},\"measured\":{\"step_ms\":" << json_number(step_ms_median) << ",\"busiest_rank\":" << m.busiest
     << ",\"compute_ms\":" << json_number(1e3 * b.compute_s) << ",\"optimizer_ms\":" << json_number(1e3 * b.optimizer_s)
     << ",\"exposed_comm_ms\":" << json_number(1e3 * b.exposed_comm_s) << ",\"bubble_ms\":" << json_number(1e3 * b.bubble_s)
     << ",\"other_ms\":" << json_number(1e3 * other_s(b, step_ms_median)) << "},\"ranks\":[";
  for (size_t r = 0; r < m.ranks.size(); ++r) {
    const MeasuredParts& x = m.ranks[r];
    os << (r ? "," : "") << "{\"rank\":" << r << ",\"predicted_peak_bytes\":" << json_number(predicted_peak(p, rank_stage, r))
       << ",\"measured_peak_bytes\":" << m.peak_bytes[r] << ",\"step_ms\":" << json_number(1e3 * x.step_s)
       << ",\"compute_ms\":" << json_number(1e3 * x.compute_s) << ",\"optimizer_ms\":" << json_number(1e3 * x.optimizer_s)
       << ",\"exposed_comm_ms\":" << json_number(1e3 * x.exposed_comm_s) << ",\"bubble_ms\":" << json_number(1e3 * x.bubble_s)
       << ",\"other_ms\":" << json_number(1e3 * x.other_s) << "}";
  }
  os << "]";
  return os.str();
}

}  // namespace tessel
