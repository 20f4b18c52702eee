// The HTML plan report: one page with everything inline (CSS in a <style>, drawings as SVG
// written here), so it opens from a file, offline, and a test can render it headless.
#include "planner/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>

#include "graph/error.h"
#include "graph/text.h"

namespace tessel::planner {

std::vector<TimelineEvent> timeline_events(const Simulation& sim, const Simulation::Result& r) {
  const std::vector<Task>& tasks = sim.tasks();
  if (r.start_s.size() != tasks.size() || r.end_s.size() != tasks.size())
    throw Error("timeline: the result is for " + std::to_string(r.start_s.size()) + " tasks, the simulation has " +
                std::to_string(tasks.size()));
  std::vector<TimelineEvent> out;
  for (size_t t = 0; t < tasks.size(); ++t) {
    const Task& task = tasks[t];
    const double dur = r.end_s[t] - r.start_s[t];
    if (!(dur > 0)) continue;
    auto add = [&](int64_t rank) {
      out.push_back({rank, stream_name(task.stream), task.name, task_kind_name(task.kind), r.start_s[t], dur});
    };
    if (task.group.empty()) add(task.rank);
    for (int64_t rank : task.group) add(rank);
  }
  std::stable_sort(out.begin(), out.end(), [](const TimelineEvent& a, const TimelineEvent& b) {
    if (a.rank != b.rank) return a.rank < b.rank;
    if (a.stream != b.stream) return a.stream == "compute";
    return a.start_s < b.start_s;
  });
  return out;
}

namespace {

std::string esc(std::string_view s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  return o;
}

// Three significant digits or so, without exponents.
std::string digits(double v) {
  char b[40];
  const double a = std::fabs(v);
  std::snprintf(b, sizeof b, a >= 100 ? "%.0f" : a >= 10 ? "%.1f" : "%.2f", v);
  return b;
}

std::string fmt_time(double s) {
  if (!std::isfinite(s)) return "n/a";
  const double a = std::fabs(s);
  if (a == 0) return "0 ms";
  if (a >= 1) return digits(s) + " s";
  if (a >= 1e-3) return digits(s * 1e3) + " ms";
  return digits(s * 1e6) + " \xC2\xB5s";
}

std::string fmt_bytes(double b) {
  if (!std::isfinite(b)) return "n/a";
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (std::fabs(b) >= 1024 && i < 5) {
    b /= 1024;
    ++i;
  }
  return i == 0 ? std::to_string(static_cast<int64_t>(std::llround(b))) + " B" : digits(b) + " " + units[i];
}

std::string fmt_pct(double fraction) {
  if (!std::isfinite(fraction)) return "n/a";
  char b[40];
  std::snprintf(b, sizeof b, "%.1f %%", 100 * fraction);
  return b;
}

std::string fmt_change(double predicted, double measured) {
  if (!(predicted > 0) || !std::isfinite(measured)) return "n/a";
  char b[40];
  std::snprintf(b, sizeof b, "%+.1f %%", 100 * (measured / predicted - 1));
  return b;
}

// SVG coordinates: one decimal, no trailing ".0".
std::string px(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.1f", v);
  std::string s = b;
  if (s.size() > 2 && s.compare(s.size() - 2, 2, ".0") == 0) s.resize(s.size() - 2);
  return s == "-0" ? "0" : s;
}

std::string rect(double x, double y, double w, double h, std::string_view fill, std::string_view title = {}) {
  std::string s = "<rect x=\"" + px(x) + "\" y=\"" + px(y) + "\" width=\"" + px(w) + "\" height=\"" + px(h) +
                   "\" fill=\"" + std::string(fill) + "\"";
  return title.empty() ? s + "/>" : s + "><title>" + esc(title) + "</title></rect>";
}

std::string text(double x, double y, std::string_view s, std::string_view attrs = {}) {
  return "<text x=\"" + px(x) + "\" y=\"" + px(y) + "\"" + (attrs.empty() ? "" : " " + std::string(attrs)) + ">" +
         esc(s) + "</text>";
}

std::string svg_open(double w, double h, std::string_view label) {
  return "<svg viewBox=\"0 0 " + px(w) + " " + px(h) + "\" width=\"" + px(w) + "\" height=\"" + px(h) +
         "\" role=\"img\" aria-label=\"" + esc(label) + "\">";
}

std::string legend(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string s = "<div class=\"legend\">";
  for (auto& [name, colour] : entries) s += "<span><i style=\"background:" + colour + "\"></i>" + esc(name) + "</span>";
  return s + "</div>";
}

// "1 task", "3 tasks".
std::string counted(int64_t n, const std::string& noun) { return std::to_string(n) + " " + noun + (n == 1 ? "" : "s"); }

constexpr double kWidth = 1160;  // every drawing's viewBox width

const char* stage_colour(size_t s) {
  static const char* palette[] = {"#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#d9d2e9", "#fce5cd", "#d0e0e3", "#ead1dc"};
  return palette[s % 8];
}
const char* stage_edge(size_t s) {
  static const char* palette[] = {"#6d9eeb", "#93c47d", "#f1c232", "#e06666", "#8e7cc3", "#f6b26b", "#76a5af", "#c27ba0"};
  return palette[s % 8];
}

// Colours of task kinds: the simulator's and the runtime's, then any other kind a measured
// timeline brings, in the order first met.
class KindColours {
 public:
  const std::string& of(const std::string& kind) {
    auto it = colours_.find(kind);
    if (it != colours_.end()) return it->second;
    static const char* extra[] = {"#ff9da7", "#86bcb6", "#d4a6c8", "#8cd17d", "#f1ce63", "#a0cbe8", "#d37295"};
    return colours_.emplace(kind, extra[extra_++ % std::size(extra)]).first->second;
  }
  std::vector<std::pair<std::string, std::string>> legend_for(const std::vector<std::string>& kinds) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const char* k : kKnown)
      if (std::find(kinds.begin(), kinds.end(), k) != kinds.end()) out.push_back({k, of(k)});
    for (const std::string& k : kinds)
      if (std::find(std::begin(kKnown), std::end(kKnown), k) == std::end(kKnown)) out.push_back({k, of(k)});
    return out;
  }

 private:
  static constexpr const char* kKnown[] = {"forward", "backward",   "recompute", "optimizer", "collective",
                                           "send",    "recv",       "wait",      "other"};
  std::map<std::string, std::string> colours_ = {
      {"forward", "#4e79a7"}, {"backward", "#f28e2b"}, {"recompute", "#edc948"},
      {"optimizer", "#59a14f"}, {"collective", "#e15759"}, {"send", "#b07aa1"},
      {"recv", "#76b7b2"}, {"wait", "#bab0ac"}, {"other", "#9c755f"}};
  size_t extra_ = 0;
};

struct Lane {
  int64_t rank = 0;
  std::string stream;
  std::string rank_label;  // "stage 1" or "rank 3"
  std::string rank_title;  // tooltip of the label: which devices, which layers
};

// A timeline as SVG plus a note of what was merged or left out.
std::string timeline_svg(const std::vector<TimelineEvent>& events, const std::vector<Lane>& lanes, KindColours& colours,
                         const std::string& what) {
  const double label_w = 160, plot_x = label_w, plot_w = kWidth - label_w - 24, axis_h = 24;
  const size_t n_lanes = lanes.size();
  const double lane_h = n_lanes <= 32 ? 14 : n_lanes <= 128 ? 8 : 4;
  const double rank_gap = lane_h >= 8 ? 6 : 2;
  double span = 0;
  for (const TimelineEvent& e : events) span = std::max(span, e.start_s + e.dur_s);
  if (!(span > 0)) span = 1e-3;
  const double scale = plot_w / span;

  std::map<std::pair<int64_t, std::string>, size_t> lane_of;
  for (size_t i = 0; i < n_lanes; ++i) lane_of[{lanes[i].rank, lanes[i].stream}] = i;
  std::vector<std::vector<const TimelineEvent*>> per_lane(n_lanes);
  int64_t unplaced = 0;
  for (const TimelineEvent& e : events) {
    auto it = lane_of.find({e.rank, e.stream});
    if (it == lane_of.end()) ++unplaced;
    else per_lane[it->second].push_back(&e);
  }
  std::vector<double> lane_y(n_lanes);
  double y = axis_h;
  for (size_t i = 0; i < n_lanes; ++i) {
    if (i > 0 && lanes[i].rank != lanes[i - 1].rank) y += rank_gap;
    lane_y[i] = y;
    y += lane_h;
  }
  const double height = y + 8;

  std::string body, axis;
  // Time axis: about eight ticks at 1, 2 or 5 times a power of ten, grid lines down the plot.
  const double raw = span / 8, mag = std::pow(10, std::floor(std::log10(raw)));
  const double step = mag * (raw / mag < 1.5 ? 1 : raw / mag < 3.5 ? 2 : raw / mag < 7.5 ? 5 : 10);
  for (int i = 0; i * step <= span * 1.0001; ++i) {
    const double x = plot_x + i * step * scale;
    axis += "<line x1=\"" + px(x) + "\" y1=\"" + px(axis_h - 4) + "\" x2=\"" + px(x) + "\" y2=\"" + px(height - 8) +
            "\" stroke=\"#d5d9e0\" stroke-width=\"0.6\"/>";
    axis += text(x, 14, fmt_time(i * step), i == 0 ? "text-anchor=\"start\"" : "text-anchor=\"middle\"");
  }
  // Lane backgrounds and labels; with many lanes only some ranks are named.
  const double font = std::min(11.0, std::max(8.0, 2 * lane_h + rank_gap - 4));
  const size_t label_every = static_cast<size_t>(std::ceil(14 / (2 * lane_h + rank_gap)));
  size_t rank_index = 0;
  for (size_t i = 0; i < n_lanes; ++i) {
    body += rect(plot_x, lane_y[i], plot_w, lane_h - 1, "#f1f3f6");
    const bool first_of_rank = i == 0 || lanes[i].rank != lanes[i - 1].rank;
    if (first_of_rank) {
      if (rank_index % label_every == 0)
        body += "<text x=\"4\" y=\"" + px(lane_y[i] + std::min(lane_h, font) - 2) + "\" font-size=\"" + px(font) +
                "\">" + esc(lanes[i].rank_label) + (lanes[i].rank_title.empty() ? "" : "<title>" + esc(lanes[i].rank_title) + "</title>") +
                "</text>";
      ++rank_index;
    }
    if (lane_h >= 8)
      body += text(label_w - 6, lane_y[i] + lane_h - 3, lanes[i].stream,
                   "text-anchor=\"end\" font-size=\"" + px(std::min(10.0, lane_h - 1)) + "\" fill=\"#778\"");
  }

  body += axis;  // over the lanes' backgrounds, under the bars

  // Bars. Tasks at least a pixel wide are drawn alone. Narrower ones are binned: a bin takes
  // the tasks that follow each other less than a pixel apart until it spans a pixel, and
  // takes the colour of the kind that fills most of it; touching bins of one colour make one
  // bar. So a stretch of tiny tasks shows at the resolution of a pixel, and a lone tiny task
  // (a bin that never reaches a pixel, with no bar to join) is left out.
  int64_t drawn = 0, merged_tasks = 0, merged_bars = 0, left_narrow = 0, capped = 0;
  std::vector<std::string> kinds;
  auto note_kind = [&](const std::string& k) {
    if (std::find(kinds.begin(), kinds.end(), k) == kinds.end()) kinds.push_back(k);
  };
  struct Bin {
    double x0 = 0, x1 = 0, t0 = 0, t1 = 0;
    int64_t tasks = 0;
    std::vector<std::pair<std::string, double>> by_kind;  // time per kind
    std::string first, last, kind;
    void add(const Bin& o) {
      x1 = std::max(x1, o.x1);
      t1 = std::max(t1, o.t1);
      tasks += o.tasks;
      last = o.last;
      for (auto& [k, d] : o.by_kind) add_kind(k, d);
    }
    void add_kind(const std::string& k, double d) {
      auto it = std::find_if(by_kind.begin(), by_kind.end(), [&](auto& p) { return p.first == k; });
      if (it == by_kind.end()) by_kind.push_back({k, d});
      else it->second += d;
    }
    std::string top_kind() const {
      return std::max_element(by_kind.begin(), by_kind.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
    }
  };
  for (size_t i = 0; i < n_lanes; ++i) {
    auto& lane = per_lane[i];
    std::stable_sort(lane.begin(), lane.end(), [](auto* a, auto* b) { return a->start_s < b->start_s; });
    int64_t bars = 0;
    const double by = lane_y[i], bh = lane_h - 1;
    auto draw = [&](double x0, double x1, const std::string& kind, const std::string& title, int64_t tasks) {
      if (bars >= kMaxBarsPerLane) {
        capped += tasks;
        return false;
      }
      ++bars;
      ++drawn;
      note_kind(kind);
      // A hairline of background between bars that touch.
      const double w = x1 - x0 > 2 ? x1 - x0 - 0.4 : std::max(x1 - x0, 0.0);
      body += rect(x0, by, w, bh, colours.of(kind), title);
      return true;
    };
    Bin bin, run;  // the bin filling up; the bar of touching bins not drawn yet
    auto draw_run = [&] {
      if (run.tasks == 0) return;
      std::string title = std::to_string(run.tasks) + " tasks narrower than a pixel, " + fmt_time(run.t0) + " to " +
                          fmt_time(run.t1) + ":";
      for (auto& [k, d] : run.by_kind) title += " " + k + " " + fmt_time(d) + ";";
      title += " first " + run.first + ", last " + run.last;
      if (draw(run.x0, run.x1, run.kind, title, run.tasks)) {
        merged_tasks += run.tasks;
        ++merged_bars;
      }
      run = Bin{};
    };
    auto close_bin = [&] {  // the bin spans a pixel: onto the run, or a run of its own
      bin.kind = bin.top_kind();
      if (run.tasks > 0 && (run.kind != bin.kind || bin.x0 - run.x1 >= 1)) draw_run();
      if (run.tasks > 0) run.add(bin);
      else run = bin;
      bin = Bin{};
    };
    auto end_stretch = [&] {  // a gap or a wide task: what is left of the bin joins the run or is left out
      if (bin.tasks > 0) {
        if (run.tasks > 0 && bin.x0 - run.x1 < 1) run.add(bin);
        else left_narrow += bin.tasks;
        bin = Bin{};
      }
      draw_run();
    };
    for (const TimelineEvent* e : lane) {
      const double x0 = plot_x + e->start_s * scale, x1 = plot_x + (e->start_s + e->dur_s) * scale;
      if (x1 - x0 >= 1) {
        end_stretch();
        draw(x0, x1, e->kind, e->name + " (" + e->kind + "): " + fmt_time(e->dur_s) + " from " + fmt_time(e->start_s), 1);
        continue;
      }
      const double last_x = bin.tasks > 0 ? bin.x1 : run.tasks > 0 ? run.x1 : -1e300;
      if (x0 - last_x >= 1) end_stretch();
      if (bin.tasks == 0) {
        bin.x0 = x0;
        bin.t0 = e->start_s;
        bin.first = e->name;
      }
      bin.x1 = std::max(bin.x1, x1);
      bin.t1 = std::max(bin.t1, e->start_s + e->dur_s);
      bin.last = e->name;
      ++bin.tasks;
      bin.add_kind(e->kind, e->dur_s);
      if (bin.x1 - bin.x0 >= 1) close_bin();
    }
    end_stretch();
  }
  std::string out = legend(colours.legend_for(kinds));
  out += svg_open(kWidth, height, what) + body + "</svg>";
  std::string note = counted(static_cast<int64_t>(events.size()), "task") + " on " +
                     counted(static_cast<int64_t>(n_lanes), "stream") + " over " + fmt_time(span) + "; " +
                     counted(drawn, "bar") + " drawn.";
  if (merged_tasks) note += " " + counted(merged_tasks, "task") + " narrower than a pixel merged into " +
                            counted(merged_bars, "bar") + " (hover for what each holds).";
  if (left_narrow) note += " Left out: " + counted(left_narrow, "task") + " narrower than a pixel with no neighbour to merge with.";
  if (capped) note += " Not drawn: " + counted(capped, "task") + " beyond " + std::to_string(kMaxBarsPerLane) +
                      " bars on one rank's stream.";
  if (unplaced) note += " Not drawn: " + counted(unplaced, "task") + " on no listed rank.";
  return out + "<p class=\"note\">" + esc(note) + "</p>";
}

std::string ranks_str(int64_t first, int64_t count) {
  return count == 1 ? "rank " + std::to_string(first)
                    : "ranks " + std::to_string(first) + "\xE2\x80\x93" + std::to_string(first + count - 1);
}

// Stages as panels of dp rows by tp columns of devices, numbered by rank.
std::string mesh_svg(const PlanEstimate& e, const ClusterSpec* spec) {
  const PlanConfig& c = e.config;
  const int64_t per_stage = c.dp * c.tp;
  constexpr size_t kMaxPanels = 64;
  const size_t panels = std::min<size_t>(e.stages.size(), kMaxPanels);
  const bool cells = per_stage <= 1024;
  const double cell = cells ? std::clamp(std::floor(std::min(200.0 / c.tp, 140.0 / c.dp)), 4.0, 24.0) : 0;
  const double inner_w = cells ? cell * c.tp : 200, inner_h = cells ? cell * c.dp : 60;
  const double pw = std::max(inner_w + 24, 180.0), ph = inner_h + 58, gap = 14;
  const size_t per_row = std::max<size_t>(1, static_cast<size_t>((kWidth + gap) / (pw + gap)));
  const size_t rows = (panels + per_row - 1) / per_row;
  const double height = rows * (ph + gap) + 4;
  const int64_t node_size = spec && spec->levels.size() > 1 ? spec->levels[0].group_size : 0;
  std::string s = svg_open(kWidth, height, "device mesh");
  for (size_t p = 0; p < panels; ++p) {
    const StageEstimate& st = e.stages[p];
    const double x = (p % per_row) * (pw + gap), y = (p / per_row) * (ph + gap) + 2;
    const int64_t first = static_cast<int64_t>(p) * per_stage;
    s += "<rect x=\"" + px(x) + "\" y=\"" + px(y) + "\" width=\"" + px(pw) + "\" height=\"" + px(ph) +
         "\" rx=\"6\" fill=\"" + stage_colour(p) + "\" stroke=\"" + stage_edge(p) + "\"><title>" +
         esc("stage " + std::to_string(p) + ": " + ranks_str(first, per_stage) + ", layers " + st.layers) + "</title></rect>";
    s += text(x + 10, y + 16, "stage " + std::to_string(p), "font-weight=\"600\"");
    s += text(x + pw - 10, y + 16, ranks_str(first, per_stage), "text-anchor=\"end\" fill=\"#555\"");
    const double ix = x + (pw - inner_w) / 2, iy = y + 26;
    if (cells) {
      for (int64_t d = 0; d < c.dp; ++d)
        for (int64_t t = 0; t < c.tp; ++t) {
          const int64_t rank = first + d * c.tp + t;
          std::string title = "rank " + std::to_string(rank) + ": stage " + std::to_string(p) + ", dp " +
                              std::to_string(d) + ", tp " + std::to_string(t);
          if (node_size > 0) title += ", node " + std::to_string(rank / node_size);
          s += "<rect x=\"" + px(ix + t * cell + 1) + "\" y=\"" + px(iy + d * cell + 1) + "\" width=\"" + px(cell - 2) +
               "\" height=\"" + px(cell - 2) + "\" rx=\"2\" fill=\"#fff\" stroke=\"" + stage_edge(p) + "\"><title>" +
               esc(title) + "</title></rect>";
          if (cell >= 16 && rank < (cell >= 20 ? 1000 : 100))
            s += text(ix + t * cell + cell / 2, iy + d * cell + cell / 2 + 3, std::to_string(rank),
                      "text-anchor=\"middle\" font-size=\"" + std::string(cell >= 20 ? "9" : "8") + "\"");
        }
    } else {
      s += rect(ix, iy, inner_w, inner_h, "#fff");
      s += text(ix + inner_w / 2, iy + inner_h / 2 + 4, std::to_string(c.dp) + " x " + std::to_string(c.tp) + " devices",
                "text-anchor=\"middle\"");
    }
    std::string layers = "layers " + st.layers;
    if (layers.size() > static_cast<size_t>(pw / 6.2)) layers = layers.substr(0, static_cast<size_t>(pw / 6.2) - 1) + "\xE2\x80\xA6";
    s += text(x + 10, y + ph - 10, layers, "fill=\"#333\"");
  }
  s += "</svg>";
  std::string out = "<p>" + std::to_string(c.devices()) + " devices: pp=" + std::to_string(c.pp) + " pipeline stages, each a dp=" +
                    std::to_string(c.dp) + " \xC3\x97 tp=" + std::to_string(c.tp) +
                    " mesh (rows: data-parallel replicas; columns: the tensor-parallel group, innermost, so it stays in a node).</p>";
  out += s;
  if (panels < e.stages.size())
    out += "<p class=\"note\">" + std::to_string(e.stages.size() - panels) + " more stages are not drawn; the table below lists every stage.</p>";
  return out;
}

// The expanded layers, one band per stage.
std::string stage_strip_svg(const PlanEstimate& e) {
  const double total = e.stages.empty() ? 1 : static_cast<double>(std::max<int64_t>(1, e.stages.back().end_layer));
  std::string s = svg_open(kWidth, 40, "layers per stage");
  for (size_t i = 0; i < e.stages.size(); ++i) {
    const StageEstimate& st = e.stages[i];
    const double x0 = st.first_layer / total * kWidth, x1 = st.end_layer / total * kWidth;
    s += "<rect x=\"" + px(x0) + "\" y=\"2\" width=\"" + px(std::max(x1 - x0 - 1, 0.5)) + "\" height=\"36\" fill=\"" +
         stage_colour(i) + "\" stroke=\"" + stage_edge(i) + "\"><title>" +
         esc("stage " + std::to_string(i) + ": layers " + st.layers + " (" + std::to_string(st.end_layer - st.first_layer) +
             " of " + std::to_string(static_cast<int64_t>(total)) + ")") +
         "</title></rect>";
    const std::string label = std::to_string(i) + ": " + st.layers;
    if ((x1 - x0) > 6.5 * static_cast<double>(label.size()) + 8) s += text(x0 + 6, 25, label);
    else if ((x1 - x0) > 16) s += text(x0 + 4, 25, std::to_string(i));
  }
  return s + "</svg>";
}

struct MemoryPart {
  const char* name;
  const char* colour;
  double StageEstimate::*bytes;
};
constexpr MemoryPart kMemoryParts[] = {{"weights", "#3b6ea8", &StageEstimate::weight_bytes},
                                       {"gradients", "#e8a33d", &StageEstimate::grad_bytes},
                                       {"optimizer state", "#6aa84f", &StageEstimate::optimizer_bytes},
                                       {"activations", "#cc4b4b", &StageEstimate::activation_bytes},
                                       {"working", "#8e7cc3", &StageEstimate::working_bytes},
                                       {"inputs, outputs", "#999999", &StageEstimate::io_bytes}};

std::string memory_svg(const PlanEstimate& e, const MeasuredRun* measured) {
  const PlanConfig& c = e.config;
  const int64_t per_stage = c.dp * c.tp;
  constexpr size_t kMaxRows = 128;
  const size_t rows = std::min<size_t>(e.stages.size(), kMaxRows);
  // The busiest rank each stage measured.
  std::vector<double> measured_peak(rows, -1);
  if (measured)
    for (size_t rank = 0; rank < measured->peak_bytes.size(); ++rank) {
      const size_t s = static_cast<size_t>(static_cast<int64_t>(rank) / per_stage);
      if (s < rows) measured_peak[s] = std::max(measured_peak[s], measured->peak_bytes[rank]);
    }
  // Drawn to the capacity; or, when every stage uses under a quarter of it, to the largest
  // peak, so that the parts stay visible (the page says so).
  const double capacity = e.memory_capacity_bytes;
  double used = 0;
  for (size_t s = 0; s < rows; ++s) used = std::max({used, e.stages[s].peak_memory_bytes, measured_peak[s]});
  const bool zoomed = capacity > 0 && used > 0 && used < capacity / 4;
  double top = zoomed ? used : std::max(capacity, used);
  if (!(top > 0)) top = 1;
  const double label_w = 190, bar_w = 760, row_h = 24, axis_h = 22;
  const double scale = bar_w / (top * 1.02);
  const double bars_end = axis_h + rows * row_h, height = bars_end + 20;
  std::string s = svg_open(kWidth, height, "memory per device");
  for (int i = 0; i <= 4; ++i) {  // a scale: quarters of the drawn range
    const double x = label_w + top * i / 4 * scale;
    s += "<line x1=\"" + px(x) + "\" y1=\"" + px(axis_h) + "\" x2=\"" + px(x) + "\" y2=\"" + px(bars_end + 2) +
         "\" stroke=\"#d5d9e0\" stroke-width=\"0.6\"/>";
    s += text(x, height - 4, fmt_bytes(top * i / 4), i == 0 ? "fill=\"#778\"" : "text-anchor=\"middle\" fill=\"#778\"");
  }
  for (size_t i = 0; i < rows; ++i) {
    const StageEstimate& st = e.stages[i];
    const double y = axis_h + i * row_h;
    s += text(4, y + 15, "stage " + std::to_string(i) + " \xC2\xB7 " + ranks_str(static_cast<int64_t>(i) * per_stage, per_stage));
    s += rect(label_w, y + 2, std::min(bar_w, capacity > 0 ? capacity * scale : bar_w), row_h - 6, "#eef0f4");
    double x = label_w;
    for (const MemoryPart& part : kMemoryParts) {
      const double b = std::max(0.0, st.*part.bytes);
      if (b <= 0) continue;
      const double w = b * scale;
      s += rect(x, y + 2, w, row_h - 6, part.colour,
                "stage " + std::to_string(i) + " " + part.name + ": " + fmt_bytes(b) +
                    (e.memory_capacity_bytes > 0 ? " (" + fmt_pct(b / e.memory_capacity_bytes) + " of capacity)" : ""));
      x += w;
    }
    std::string value = fmt_bytes(st.peak_memory_bytes);
    if (e.memory_capacity_bytes > 0) value += " \xC2\xB7 " + fmt_pct(st.peak_memory_bytes / e.memory_capacity_bytes);
    s += text(label_w + bar_w + 10, y + 15, value, st.peak_memory_bytes > e.memory_capacity_bytes && e.memory_capacity_bytes > 0
                                                       ? "fill=\"#b00\" font-weight=\"600\""
                                                       : "");
    if (measured_peak[i] >= 0)
      s += rect(label_w + measured_peak[i] * scale - 1.5, y, 3, row_h - 2, "#111",
                "stage " + std::to_string(i) + " measured peak (busiest rank): " + fmt_bytes(measured_peak[i]));
  }
  if (zoomed) {
    s += text(label_w + bar_w, 13, "capacity " + fmt_bytes(capacity) + " is off this scale \xE2\x86\x92",
              "text-anchor=\"end\" fill=\"#c0392b\"");
  } else if (capacity > 0) {
    const double x = label_w + capacity * scale;
    s += "<line x1=\"" + px(x) + "\" y1=\"" + px(axis_h - 4) + "\" x2=\"" + px(x) + "\" y2=\"" + px(bars_end + 2) +
         "\" stroke=\"#c0392b\" stroke-width=\"2\" stroke-dasharray=\"5 3\"/>";
    s += text(x, 13, "capacity " + fmt_bytes(e.memory_capacity_bytes), "text-anchor=\"end\" fill=\"#c0392b\"");
  }
  s += "</svg>";
  std::vector<std::pair<std::string, std::string>> entries;
  for (const MemoryPart& part : kMemoryParts) entries.push_back({part.name, part.colour});
  if (measured) entries.push_back({"measured peak", "#111"});
  std::string out = legend(entries) + s;
  if (zoomed)
    out += "<p class=\"note\">Every stage uses under a quarter of the " + esc(fmt_bytes(capacity)) +
           " each device has: the bars are drawn to the largest peak, " + esc(fmt_bytes(used)) + ".</p>";
  if (rows < e.stages.size())
    out += "<p class=\"note\">" + std::to_string(e.stages.size() - rows) + " more stages are not drawn.</p>";
  return out;
}

// compute, optimizer, exposed comm, bubble: one stacked bar of the step.
std::string breakdown_svg(double compute, double optimizer, double comm, double bubble, const std::string& what) {
  const std::pair<double, const char*> parts[] = {
      {compute, "#4e79a7"}, {optimizer, "#59a14f"}, {comm, "#e15759"}, {bubble, "#bab0ac"}};
  static const char* names[] = {"compute", "optimizer", "exposed communication", "bubble"};
  double total = 0;
  for (auto& p : parts) total += std::max(0.0, p.first);
  std::string s = svg_open(kWidth, 26, what);
  double x = 0;
  for (size_t i = 0; i < 4; ++i) {
    const double v = std::max(0.0, parts[i].first);
    if (!(total > 0) || v <= 0) continue;
    const double w = v / total * kWidth;
    s += rect(x, 2, w, 22, parts[i].second, std::string(names[i]) + ": " + fmt_time(v) + " (" + fmt_pct(v / total) + ")");
    // The label that fits: name and time, the time alone, or none.
    for (const std::string& label : {std::string(names[i]) + " " + fmt_time(v), fmt_time(v)})
      if (6.2 * static_cast<double>(label.size()) + 12 < w) {
        s += text(x + 6, 17, label, "fill=\"#fff\"");
        break;
      }
    x += w;
  }
  return s + "</svg>";
}

std::string kv(const std::string& label, const std::string& value_html) {
  return "<div><span>" + esc(label) + "</span><b>" + value_html + "</b></div>";
}

constexpr const char* kStyle = R"(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","DejaVu Sans",Arial,sans-serif;color:#1d2330;background:#f4f5f8;margin:0}
main{max-width:1200px;margin:0 auto;padding:22px 20px 48px}
h1{font-size:23px;margin:0 0 2px}h2{font-size:17px;margin:0 0 10px}
.sub{color:#556;margin:0 0 6px}
section{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:14px 18px;margin:14px 0}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;width:100%}
th,td{padding:4px 10px;text-align:left;border-bottom:1px solid #eceef2;vertical-align:top}
th{font-size:12px;color:#556;font-weight:600}td.n,th.n{text-align:right;white-space:nowrap}
.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px 24px;margin:8px 0 12px}
.kv span{display:block;color:#667;font-size:12px}.kv b{font-size:16px;font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;margin:4px 0 8px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-2px}
svg{display:block;max-width:100%;height:auto;font-size:11px;fill:#333}
.note{color:#667;font-size:12px;margin:6px 0 0}
.warn{background:#fdecea;border:1px solid #f3bdb7;padding:8px 12px;border-radius:6px;margin:8px 0}
.ok{color:#2e7d32}.bad{color:#b00020}
.bar{height:10px;border-radius:2px;background:#4e79a7;min-width:2px}
tr.best td{background:#f2f7ee}
)";

}  // namespace

std::string report_html(const SearchResult& r, const ReportContext& ctx, const MeasuredRun* measured) {
  const PlanEstimate& e = r.best;
  const PlanConfig& c = e.config;
  const int64_t per_stage = c.dp * c.tp;
  KindColours colours;
  std::ostringstream os;
  const std::string title = "Plan for " + ctx.model;
  os << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
     << "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>" << esc(title)
     << "</title><style>" << kStyle << "</style></head><body><main>\n";

  // Summary.
  os << "<section id=\"summary\"><h1>" << esc(title) << "</h1><p class=\"sub\">global batch " << ctx.global_batch << " on "
     << esc(ctx.cluster);
  if (ctx.spec) os << " (" << ctx.spec->num_devices << " \xC3\x97 " << esc(ctx.spec->device.name) << ")";
  os << " \xC2\xB7 plan <code>" << esc(c.str()) << "</code></p>";
  if (!e.fits) os << "<div class=\"warn\"><b>No plan fits in memory.</b> Least memory needed: " << esc(e.fit_problem) << "</div>";
  os << "<div class=\"kv\">";
  os << kv("predicted step time", esc(fmt_time(e.step_time_s)));
  os << kv("mesh", "pp=" + std::to_string(c.pp) + " \xC3\x97 dp=" + std::to_string(c.dp) + " \xC3\x97 tp=" + std::to_string(c.tp) +
                       " (" + std::to_string(c.devices()) + " devices)");
  os << kv("microbatch", std::to_string(c.microbatches) + " per step, " +
                             std::to_string(ctx.global_batch / std::max<int64_t>(1, c.dp * c.microbatches)) + " samples per replica");
  os << kv("throughput", esc(digits(e.tflops_per_device)) + " TFLOP/s per device \xC2\xB7 MFU " + esc(fmt_pct(e.mfu)));
  os << kv("peak memory", esc(fmt_bytes(e.peak_memory_bytes)) + " of " + esc(fmt_bytes(e.memory_capacity_bytes)) +
                              (e.fits ? " <span class=\"ok\">fits</span>" : " <span class=\"bad\">does not fit</span>"));
  os << kv("FLOPs per step", esc(si_units(e.model_flops_per_step, "FLOP")) + " model \xC2\xB7 " +
                                 esc(si_units(e.hardware_flops_per_step, "FLOP")) + " hardware");
  if (ctx.spec && !e.traffic_bytes_per_level.empty()) {
    std::string t;
    for (size_t l = 0; l < e.traffic_bytes_per_level.size() && l < ctx.spec->levels.size(); ++l)
      t += (l ? " \xC2\xB7 " : "") + esc(ctx.spec->levels[l].name) + " " + esc(fmt_bytes(e.traffic_bytes_per_level[l]));
    os << kv("traffic per device per step", t);
  }
  os << kv("search", std::to_string(r.candidates) + " configurations, " + std::to_string(r.simulated) + " simulated, " +
                         esc(fmt_time(r.search_time_s)));
  os << "</div><p>Predicted step " << esc(fmt_time(e.step_time_s)) << " on the busiest device = compute "
     << esc(fmt_time(e.compute_s)) << " + optimizer " << esc(fmt_time(e.optimizer_s)) << " + exposed communication "
     << esc(fmt_time(e.exposed_comm_s)) << " + pipeline bubble " << esc(fmt_time(e.bubble_s)) << ".</p>";
  os << legend({{"compute", "#4e79a7"}, {"optimizer", "#59a14f"}, {"exposed communication", "#e15759"}, {"bubble", "#bab0ac"}});
  os << breakdown_svg(e.compute_s, e.optimizer_s, e.exposed_comm_s, e.bubble_s, "predicted step breakdown");
  for (const std::string& n : e.notes) os << "<p class=\"note\">note: " << esc(n) << "</p>";
  os << "</section>\n";

  // Mesh and stages.
  os << "<section id=\"mesh\"><h2>Device mesh</h2>" << mesh_svg(e, ctx.spec) << "</section>\n";
  os << "<section id=\"stages\"><h2>Pipeline stages</h2>" << stage_strip_svg(e)
     << "<table><tr><th>stage</th><th>ranks</th><th>layers</th><th class=\"n\">layer count</th><th class=\"n\">peak memory</th>"
        "<th class=\"n\">compute</th><th class=\"n\">optimizer</th><th class=\"n\">exposed comm</th><th class=\"n\">bubble</th>"
        "<th class=\"n\">FLOPs per device</th></tr>";
  for (size_t s = 0; s < e.stages.size(); ++s) {
    const StageEstimate& st = e.stages[s];
    os << "<tr><td><i style=\"display:inline-block;width:10px;height:10px;background:" << stage_edge(s)
       << ";margin-right:6px\"></i>" << s << "</td><td>" << esc(ranks_str(static_cast<int64_t>(s) * per_stage, per_stage))
       << "</td><td>" << esc(st.layers) << "</td><td class=\"n\">" << st.end_layer - st.first_layer << "</td><td class=\"n\">"
       << esc(fmt_bytes(st.peak_memory_bytes)) << "</td><td class=\"n\">" << esc(fmt_time(st.compute_s)) << "</td><td class=\"n\">"
       << esc(fmt_time(st.optimizer_s)) << "</td><td class=\"n\">" << esc(fmt_time(st.exposed_comm_s)) << "</td><td class=\"n\">"
       << esc(fmt_time(st.bubble_s)) << "</td><td class=\"n\">" << esc(si_units(st.flops, "FLOP")) << "</td></tr>";
  }
  os << "</table></section>\n";

  // Memory.
  os << "<section id=\"memory\"><h2>Memory per device</h2><p>Peak memory of each stage's devices (all devices of a stage "
        "hold the same), by what holds it, against the capacity of "
     << esc(fmt_bytes(e.memory_capacity_bytes)) << ".</p>" << memory_svg(e, measured) << "</section>\n";

  // Simulated timeline: the search keeps no simulation, so simulate the plan again in detail.
  os << "<section id=\"timeline-simulated\"><h2>Simulated step</h2>";
  std::shared_ptr<Simulation> sim = e.simulation;
  if (!sim && ctx.spec) {
    const CostOptions cost = ctx.cost ? *ctx.cost : CostOptions{};
    if (!r.best_profile.layers.empty()) {
      sim = estimate_plan(r.best_profile, c, *ctx.spec, cost, true).simulation;
    } else if (ctx.graph) {
      const ModelProfile mp = profile_model(*ctx.graph, find_layers(*ctx.graph, ctx.phase), c, *ctx.spec, cost);
      sim = estimate_plan(mp, c, *ctx.spec, cost, true).simulation;
    }
  }
  if (sim) {
    const Simulation::Result res = sim->run();
    const bool by_stage = sim->ranks() == c.pp && c.pp == static_cast<int64_t>(e.stages.size());
    std::vector<Lane> lanes;
    for (int64_t rank = 0; rank < sim->ranks(); ++rank)
      for (const char* stream : {"compute", "comm"}) {
        Lane l{rank, stream, "rank " + std::to_string(rank), ""};
        if (by_stage) {
          l.rank_label = "stage " + std::to_string(rank);
          l.rank_title = "stage " + std::to_string(rank) + ": stands for " + ranks_str(rank * per_stage, per_stage) +
                         ", layers " + e.stages[static_cast<size_t>(rank)].layers;
        }
        lanes.push_back(std::move(l));
      }
    os << "<p>One training step as the simulator runs it: each device's compute and communication streams";
    if (by_stage && per_stage > 1) os << " (one device per pipeline stage: the stage's dp \xC3\x97 tp devices run alike)";
    os << ". Hover a bar for the task.</p>";
    os << timeline_svg(timeline_events(*sim, res), lanes, colours, "simulated timeline");
  } else {
    os << "<p class=\"note\">No simulated timeline: the report was given no cluster to simulate the plan on.</p>";
  }
  os << "</section>\n";

  if (measured && !measured->timeline.empty()) {
    std::vector<int64_t> ranks;
    std::vector<std::string> streams = {"compute", "comm"};
    for (const TimelineEvent& ev : measured->timeline) {
      if (std::find(ranks.begin(), ranks.end(), ev.rank) == ranks.end()) ranks.push_back(ev.rank);
      if (std::find(streams.begin(), streams.end(), ev.stream) == streams.end()) streams.push_back(ev.stream);
    }
    std::sort(ranks.begin(), ranks.end());
    std::sort(streams.begin() + 2, streams.end());
    std::vector<Lane> lanes;
    for (int64_t rank : ranks)
      for (const std::string& stream : streams) {
        const bool used = std::any_of(measured->timeline.begin(), measured->timeline.end(),
                                      [&](const TimelineEvent& ev) { return ev.rank == rank && ev.stream == stream; });
        if (used || stream == "compute" || stream == "comm") {
          std::string t;
          if (per_stage > 0 && rank < c.devices()) t = "rank " + std::to_string(rank) + ": stage " + std::to_string(rank / per_stage);
          lanes.push_back({rank, stream, "rank " + std::to_string(rank), t});
        }
      }
    os << "<section id=\"timeline-measured\"><h2>Measured step</h2><p>One step of the run, every rank's streams as the "
          "runtime recorded them.</p>"
       << timeline_svg(measured->timeline, lanes, colours, "measured timeline") << "</section>\n";
  }

  // Alternatives.
  os << "<section id=\"alternatives\"><h2>Alternatives</h2>";
  if (r.alternatives.empty()) {
    os << "<p>None: the pins leave one configuration.</p>";
  } else {
    double longest = e.step_time_s;
    for (const Alternative& a : r.alternatives)
      if (std::isfinite(a.estimate.step_time_s)) longest = std::max(longest, a.estimate.step_time_s);
    auto bar = [&](double t, const char* colour) {
      const double w = longest > 0 && std::isfinite(t) ? 100 * t / longest : 0;
      return "<div class=\"bar\" style=\"width:" + px(w) + "%;background:" + colour + "\"></div>";
    };
    os << "<table><tr><th>plan</th><th class=\"n\">predicted step</th><th style=\"width:22%\"></th><th class=\"n\">vs chosen</th>"
          "<th class=\"n\">peak memory</th><th>why it lost</th></tr>";
    os << "<tr class=\"best\"><td><code>" << esc(c.str()) << "</code></td><td class=\"n\">" << esc(fmt_time(e.step_time_s))
       << "</td><td>" << bar(e.step_time_s, "#59a14f") << "</td><td class=\"n\">chosen</td><td class=\"n\">"
       << esc(fmt_bytes(e.peak_memory_bytes)) << "</td><td></td></tr>";
    for (const Alternative& a : r.alternatives)
      os << "<tr><td><code>" << esc(a.estimate.config.str()) << "</code></td><td class=\"n\">"
         << esc(fmt_time(a.estimate.step_time_s)) << "</td><td>" << bar(a.estimate.step_time_s, a.estimate.fits ? "#4e79a7" : "#e15759")
         << "</td><td class=\"n\">" << esc(fmt_change(e.step_time_s, a.estimate.step_time_s)) << "</td><td class=\"n\">"
         << esc(fmt_bytes(a.estimate.peak_memory_bytes)) << (a.estimate.fits ? "" : " <span class=\"bad\">does not fit</span>")
         << "</td><td>" << esc(a.why) << "</td></tr>";
    os << "</table>";
  }
  os << "</section>\n";

  // Predicted against measured.
  if (measured) {
    os << "<section id=\"predicted-vs-measured\"><h2>Predicted and measured</h2>"
          "<table><tr><th>step (busiest rank)</th><th class=\"n\">predicted</th><th class=\"n\">measured</th>"
          "<th class=\"n\">measured vs predicted</th></tr>";
    const std::pair<const char*, std::pair<double, double>> rows[] = {
        {"step time (median)", {e.step_time_s, measured->step_s}},
        {"compute", {e.compute_s, measured->compute_s}},
        {"optimizer", {e.optimizer_s, measured->optimizer_s}},
        {"exposed communication", {e.exposed_comm_s, measured->exposed_comm_s}},
        {"pipeline bubble", {e.bubble_s, measured->bubble_s}}};
    for (auto& [name, v] : rows)
      os << "<tr><td>" << name << "</td><td class=\"n\">" << esc(fmt_time(v.first)) << "</td><td class=\"n\">"
         << esc(fmt_time(v.second)) << "</td><td class=\"n\">" << esc(fmt_change(v.first, v.second)) << "</td></tr>";
    os << "</table>";
    os << breakdown_svg(measured->compute_s, measured->optimizer_s, measured->exposed_comm_s, measured->bubble_s,
                        "measured step breakdown");
    os << "<p class=\"note\">Bar: the measured step of the busiest rank, coloured as the predicted one above.</p>";
    if (!measured->peak_bytes.empty()) {
      os << "<table><tr><th>rank</th><th>stage</th><th class=\"n\">predicted peak memory</th><th class=\"n\">measured</th>"
            "<th class=\"n\">measured vs predicted</th></tr>";
      for (size_t rank = 0; rank < measured->peak_bytes.size(); ++rank) {
        const int64_t s = per_stage > 0 ? static_cast<int64_t>(rank) / per_stage : -1;
        const bool known = s >= 0 && s < static_cast<int64_t>(e.stages.size());
        const double predicted = known ? e.stages[static_cast<size_t>(s)].peak_memory_bytes : NAN;
        os << "<tr><td>" << rank << "</td><td>" << (known ? std::to_string(s) : "n/a") << "</td><td class=\"n\">"
           << esc(fmt_bytes(predicted)) << "</td><td class=\"n\">" << esc(fmt_bytes(measured->peak_bytes[rank]))
           << "</td><td class=\"n\">" << esc(fmt_change(predicted, measured->peak_bytes[rank])) << "</td></tr>";
      }
      os << "</table>";
    }
    os << "</section>\n";
  }
  os << "</main></body></html>\n";
  return os.str();
}

}  // namespace tessel::planner
