#include "planner/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "graph/error.h"
#include "graph/text.h"

namespace tessel::planner {

namespace {

std::string num(double v, int prec = 4) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*g", prec, v);
  return b;
}



std::string jnum(double v) { return std::isfinite(v) ? num(v, 10) : "null"; }

// The mesh of the whole plan, outermost first.
std::string mesh_str(const PlanConfig& c) {
  return "pp=" + std::to_string(c.pp) + " x dp=" + std::to_string(c.dp) + " x tp=" + std::to_string(c.tp);
}

// Placements of every parameter, on one stage's dp x tp mesh.
std::vector<std::pair<std::string, std::string>> placements(const SearchResult& r, const ReportContext& ctx) {
  std::vector<std::pair<std::string, std::string>> out;
  if (!ctx.graph) return out;
  const Graph& g = *ctx.graph;
  const Mesh m = stage_mesh(r.best.config);
  const LayerStructure ls = find_layers(g, ctx.phase);
  std::vector<int64_t> members(ls.layers.size(), 0);
  for (const Layer& l : ls.layers) members[static_cast<size_t>(l.klass)]++;
  for (int32_t id : g.parameters()) {
    const Node& n = g.node(id);
    const int layer = ls.layer_of[id];
    if (layer >= 0 && ls.layers[layer].klass != layer) continue;  // shown once per class
    ParameterPlacement p = parameter_placement(g, n, r.best.config, m, false);
    ParameterPlacement o = parameter_placement(g, n, r.best.config, m, true);
    std::string s = n.outputs[0].str() + " " + sharding_str(p.stored);
    if (!(o.stored == p.stored)) s += ", optimizer state " + sharding_str(o.stored);
    if (layer >= 0 && members[layer] > 1) s += "  (one of " + std::to_string(members[layer]) + " identical layers)";
    out.push_back({n.name, s});
  }
  return out;
}

}  // namespace

std::string report_text(const SearchResult& r, const ReportContext& ctx) {
  const PlanEstimate& e = r.best;
  const PlanConfig& c = e.config;
  std::ostringstream os;
  os << "plan for " << ctx.model << ", global batch " << ctx.global_batch << ", on " << ctx.cluster;
  if (ctx.spec) os << " (" << ctx.spec->num_devices << " x " << ctx.spec->device.name << ")";
  os << "\n";
  if (!e.fits) os << "\n!! NO PLAN FITS IN MEMORY. Least memory needed: " << e.fit_problem << "\n";
  os << "\nmesh        " << mesh_str(c) << "  (dp x tp per stage; tp innermost)\n";
  os << "config      " << c.str() << "  (microbatch of "
     << ctx.global_batch / (c.dp * c.microbatches) << " samples per replica)\n";
  os << "\nstages\n";
  for (size_t s = 0; s < e.stages.size(); ++s) {
    const StageEstimate& st = e.stages[s];
    os << "  " << s << "  layers " << st.layers << "\n      memory " << si_units(st.peak_memory_bytes, "B") << " per device = weights "
       << si_units(st.weight_bytes, "B") << " + gradients " << si_units(st.grad_bytes, "B") << " + optimizer "
       << si_units(st.optimizer_bytes, "B") << " + activations " << si_units(st.activation_bytes, "B") << " + working "
       << si_units(st.working_bytes, "B") << " + inputs/outputs " << si_units(st.io_bytes, "B") << "\n      busy " << num(st.compute_s + st.optimizer_s) << " s, "
       << si_units(st.flops, "FLOP") << " per device per step\n";
  }
  os << "\nplacements (per parameter, over [dp, tp] of its stage)\n";
  for (auto& [name, p] : placements(r, ctx)) os << "  " << name << "  " << p << "\n";
  os << "\npredicted step time  " << num(e.step_time_s) << " s = compute " << num(e.compute_s) << " + optimizer "
     << num(e.optimizer_s) << " + exposed comm " << num(e.exposed_comm_s) << " + bubble " << num(e.bubble_s)
     << "  (busiest device)\n";
  os << "FLOPs per step       model " << si_units(e.model_flops_per_step, "FLOP") << ", hardware "
     << si_units(e.hardware_flops_per_step, "FLOP") << "\n";
  os << "throughput           " << num(e.tflops_per_device) << " TFLOP/s per device, MFU " << num(100 * e.mfu, 3) << " %\n";
  os << "peak memory          " << si_units(e.peak_memory_bytes, "B") << " of " << si_units(e.memory_capacity_bytes, "B")
     << " per device\n";
  if (ctx.spec) {
    os << "traffic per device   ";
    for (size_t l = 0; l < e.traffic_bytes_per_level.size(); ++l)
      os << (l ? ", " : "") << ctx.spec->levels[l].name << " " << si_units(e.traffic_bytes_per_level[l], "B");
    os << " per step\n";
  }
  for (auto& n : e.notes) os << "note: " << n << "\n";
  os << "\nalternatives\n";
  if (r.alternatives.empty()) os << "  (none: the pins leave one configuration)\n";
  // Alternatives predicted exactly as an earlier line (the chosen plan or another
  // alternative) differ in a setting that changes nothing for this model: one line says so.
  auto same = [](const PlanEstimate& a, const PlanEstimate& b) {
    auto eq = [](double x, double y) { return std::abs(x - y) <= 1e-9 * std::max(std::abs(x), std::abs(y)); };
    return eq(a.step_time_s, b.step_time_s) && eq(a.peak_memory_bytes, b.peak_memory_bytes);
  };
  auto settings = [](const PlanConfig& c) {  // "dp=2 tp=1 ... recompute=selective" -> its words
    std::vector<std::string> w;
    std::istringstream in(c.str());
    for (std::string s; in >> s;) w.push_back(s);
    return w;
  };
  std::vector<std::string> lines;
  std::vector<std::pair<const PlanEstimate*, size_t>> shown;  // an alternative's own line
  for (auto& a : r.alternatives) {
    const PlanEstimate* twin = same(a.estimate, e) ? &e : nullptr;
    size_t line = 0;
    for (size_t i = 0; !twin && i < shown.size(); ++i)
      if (same(a.estimate, *shown[i].first)) twin = shown[i].first, line = shown[i].second;
    if (twin) {
      std::string differs;
      const auto theirs = settings(twin->config);
      for (const std::string& s : settings(a.estimate.config))
        if (std::find(theirs.begin(), theirs.end(), s) == theirs.end()) differs += (differs.empty() ? "" : " ") + s;
      const std::string note = "  (" + (differs.empty() ? a.estimate.config.str() : differs) + ": the same prediction, it changes nothing here)";
      if (twin == &e) lines.push_back("  " + a.estimate.config.str() + "   as the chosen plan" + note);
      else lines[line] += note;
      continue;
    }
    shown.push_back({&a.estimate, lines.size()});
    lines.push_back("  " + a.estimate.config.str() + "   " + num(a.estimate.step_time_s) + " s   " + a.why);
  }
  for (auto& l : lines) os << l << "\n";
  os << "\nsearch: " << r.candidates << " configurations, " << r.simulated << " simulated, " << num(r.search_time_s, 3)
     << " s\n";
  return os.str();
}

std::string report_json(const SearchResult& r, const ReportContext& ctx) {
  const PlanEstimate& e = r.best;
  const PlanConfig& c = e.config;
  auto config_json = [](const PlanConfig& k) {
    return "{\"dp\":" + std::to_string(k.dp) + ",\"tp\":" + std::to_string(k.tp) + ",\"pp\":" + std::to_string(k.pp) +
           ",\"zero\":" + std::to_string(k.zero) + ",\"microbatches\":" + std::to_string(k.microbatches) +
           ",\"schedule\":" + json_quote(std::string(schedule_name(k.schedule))) + ",\"recompute\":" +
           json_quote(std::string(recompute_name(k.recompute))) + ",\"sequence_parallel\":" +
           (k.sequence_parallel ? "true" : "false") + [&] {
             if (k.stage_layers.empty()) return std::string();
             std::string s = ",\"stage_layers\":[";
             for (size_t i = 0; i < k.stage_layers.size(); ++i) s += (i ? "," : "") + std::to_string(k.stage_layers[i]);
             return s + "]";
           }() + "}";
  };
  std::ostringstream os;
  os << "{\"model\":" << json_quote(ctx.model) << ",\"cluster\":" << json_quote(ctx.cluster) << ",\"global_batch\":" << ctx.global_batch
     << ",\"fits\":" << (e.fits ? "true" : "false");
  if (!e.fits) os << ",\"fit_problem\":" << json_quote(e.fit_problem);
  os << ",\"config\":" << config_json(c) << ",\"mesh\":{\"pp\":" << c.pp << ",\"dp\":" << c.dp << ",\"tp\":" << c.tp
     << ",\"devices\":" << c.devices() << "}";
  os << ",\"step_time_s\":" << jnum(e.step_time_s) << ",\"breakdown\":{\"compute_s\":" << jnum(e.compute_s)
     << ",\"optimizer_s\":" << jnum(e.optimizer_s) << ",\"exposed_comm_s\":" << jnum(e.exposed_comm_s)
     << ",\"bubble_s\":" << jnum(e.bubble_s) << "}";
  os << ",\"model_flops_per_step\":" << jnum(e.model_flops_per_step) << ",\"hardware_flops_per_step\":"
     << jnum(e.hardware_flops_per_step) << ",\"tflops_per_device\":" << jnum(e.tflops_per_device)
     << ",\"mfu\":" << jnum(e.mfu) << ",\"peak_memory_bytes\":" << jnum(e.peak_memory_bytes)
     << ",\"memory_capacity_bytes\":" << jnum(e.memory_capacity_bytes);
  os << ",\"stages\":[";
  for (size_t s = 0; s < e.stages.size(); ++s) {
    const StageEstimate& st = e.stages[s];
    os << (s ? "," : "") << "{\"layers\":" << json_quote(st.layers) << ",\"first_layer\":" << st.first_layer
       << ",\"end_layer\":" << st.end_layer << ",\"peak_memory_bytes\":" << jnum(st.peak_memory_bytes)
       << ",\"weight_bytes\":" << jnum(st.weight_bytes) << ",\"grad_bytes\":" << jnum(st.grad_bytes)
       << ",\"optimizer_bytes\":" << jnum(st.optimizer_bytes) << ",\"activation_bytes\":" << jnum(st.activation_bytes)
       << ",\"working_bytes\":" << jnum(st.working_bytes) << ",\"io_bytes\":" << jnum(st.io_bytes)
       << ",\"compute_s\":" << jnum(st.compute_s) << ",\"flops_per_device\":" << jnum(st.flops) << "}";
  }
  os << "],\"placements\":{";
  bool first = true;
  for (auto& [name, p] : placements(r, ctx)) {
    os << (first ? "" : ",") << json_quote(name) << ":" << json_quote(p);
    first = false;
  }
  os << "},\"traffic_bytes_per_level\":{";
  for (size_t l = 0; ctx.spec && l < e.traffic_bytes_per_level.size(); ++l)
    os << (l ? "," : "") << json_quote(ctx.spec->levels[l].name) << ":" << jnum(e.traffic_bytes_per_level[l]);
  os << "},\"alternatives\":[";
  for (size_t i = 0; i < r.alternatives.size(); ++i) {
    const auto& a = r.alternatives[i];
    os << (i ? "," : "") << "{\"pins\":" << config_json(a.estimate.config) << ",\"step_time_s\":"
       << jnum(a.estimate.step_time_s) << ",\"fits\":" << (a.estimate.fits ? "true" : "false")
       << ",\"why\":" << json_quote(a.why) << "}";
  }
  os << "],\"search_time_s\":" << jnum(r.search_time_s) << ",\"candidates\":" << r.candidates
     << ",\"simulated\":" << r.simulated << "}";
  return os.str();
}

std::string plan_dot(const SearchResult& r, const ReportContext& ctx) {
  if (!ctx.graph) throw Error("plan_dot needs the model graph");
  const Graph& g = *ctx.graph;
  const PlanConfig& c = r.best.config;
  LayerStructure ls = find_layers(g, ctx.phase);
  std::vector<int> stage_of_layer(ls.layers.size(), 0);
  for (size_t l = 0; l < ls.layers.size(); ++l)
    for (size_t s = 0; s < r.best.stages.size(); ++s)
      if (static_cast<int64_t>(l) >= r.best.stages[s].first_layer && static_cast<int64_t>(l) < r.best.stages[s].end_layer)
        stage_of_layer[l] = static_cast<int>(s);
  const Mesh m = stage_mesh(c);
  std::vector<int32_t> nodes;
  for (int32_t id = 0; id < g.size(); ++id)
    if (ls.layer_of[id] >= 0 || std::find(ls.global.begin(), ls.global.end(), id) != ls.global.end()) nodes.push_back(id);
  GraphPlacement gp = place_graph(g, c, m, nodes);
  static const char* palette[] = {"#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#d9d2e9", "#fce5cd", "#d0e0e3", "#ead1dc"};
  std::ostringstream os;
  os << "digraph plan {\n  rankdir=TB;\n  node [shape=box, style=filled, fontname=\"Helvetica\", fontsize=10];\n";
  os << "  label=" << json_quote(ctx.model + " on " + ctx.cluster + ": " + c.str()) << ";\n";
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    const int l = ls.layer_of[id];
    const int stage = l >= 0 ? stage_of_layer[l] : 0;
    os << "  n" << id << " [label=" << json_quote(n.name + "\\n" + n.op + " " + n.outputs[0].str() + "\\n" + sharding_str(gp.values[id][0]))
       << ", fillcolor=\"" << (l >= 0 ? palette[stage % 8] : "#eeeeee") << "\"];\n";
  }
  std::set<std::pair<int32_t, int>> via_collective;
  for (size_t k = 0; k < gp.reshards.size(); ++k) {
    const auto& rs = gp.reshards[k];
    std::string label;
    for (auto& s : rs.steps) label += (label.empty() ? "" : "\\n") + std::string(reshard_name(s)) + " over " + m.names[s.axis];
    os << "  c" << k << " [shape=diamond, fillcolor=\"#e06666\", fontcolor=white, label=" << json_quote(label) << "];\n";
    os << "  n" << rs.value.node << " -> c" << k << " [color=\"#e06666\"];\n";
    for (auto& [node, input] : rs.consumers) {
      os << "  c" << k << " -> n" << node << " [color=\"#e06666\"" << (input < 0 ? ", style=dashed, label=update" : "") << "];\n";
      if (input >= 0) via_collective.insert({node, input});
    }
  }
  for (int32_t id : nodes) {
    const Node& n = g.node(id);
    for (size_t i = 0; i < n.inputs.size(); ++i)
      if (!via_collective.count({id, static_cast<int>(i)})) os << "  n" << n.inputs[i].node << " -> n" << id << ";\n";
  }
  os << "}\n";
  return os.str();
}

}  // namespace tessel::planner
