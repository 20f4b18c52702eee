#include <cmath>
#include <filesystem>
#include <cstdio>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "frontend/cli/args.h"
#include "frontend/cli/commands.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "graph/text.h"
#include "graph/serialize.h"
#include "ops/registry.h"
#include "planner/cost.h"
#include "runtime/checkpoint.h"

namespace tessel::cli {

namespace {

std::string pad(std::string s, size_t w) {
  if (s.size() < w) s.resize(w, ' ');
  return s + " ";
}


std::string init_str(const Node& n) {
  if (n.op != "parameter") return "";
  std::string init = n.attrs.get_str("init");
  double scale = n.attrs.get_f64_or("scale", 0);
  if (init == "normal") return "normal(std=" + std::to_string(scale).substr(0, 7) + ")";
  if (init == "uniform") return "uniform(+-" + std::to_string(scale).substr(0, 7) + ")";
  if (init == "constant") return "constant(" + std::to_string(scale) + ")";
  return init;
}


std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", static_cast<unsigned char>(c));
      o += b;
      continue;
    }
    o += c;
  }
  return o + "\"";
}

// A checkpoint directory (a step's, or a root of them: its newest committed one).
int inspect_checkpoint(const std::string& path, bool json) {
  std::vector<std::string> ignored;
  runtime::latest_checkpoint(path, &ignored);
  const runtime::Checkpoint ck(path);  // checks the metadata against the files: complete, or an Error
  const auto& st = ck.state();
  if (json) {
    std::cout << "{\"checkpoint\":" << json_str(ck.dir()) << ",\"complete\":true,\"step\":" << st.step
              << ",\"seed\":" << st.seed << ",\"model\":" << json_str(st.model) << ",\"plan\":" << json_str(st.plan)
              << ",\"world\":" << st.world << ",\"bytes\":" << ck.bytes() << ",\"data\":{";
    bool first = true;
    for (auto& [k, v] : st.data) std::cout << (first ? "" : ",") << json_str(k) << ":" << json_str(v), first = false;
    std::cout << "},\"tensors\":[";
    first = true;
    for (const auto& t : ck.tensors()) {
      std::cout << (first ? "" : ",") << "{\"name\":" << json_str(t.name) << ",\"type\":" << json_str(t.type.str())
                << ",\"pieces\":" << t.pieces.size() << "}";
      first = false;
    }
    std::cout << "],\"ignored\":[";
    for (size_t i = 0; i < ignored.size(); ++i) std::cout << (i ? "," : "") << json_str(ignored[i]);
    std::cout << "]}\n";
    return 0;
  }
  std::cout << "checkpoint  " << ck.dir() << " (complete)\n"
            << "step        " << st.step << "\n"
            << "model       " << st.model << "\n"
            << "written by  " << st.plan << " (" << st.world << (st.world == 1 ? " rank" : " ranks") << "), seed " << st.seed
            << "\n";
  std::string data;
  for (auto& [k, v] : st.data) data += (data.empty() ? "" : ", ") + k + " " + v;
  std::cout << "data        " << data << "\n";
  std::set<std::string> files;
  for (const auto& t : ck.tensors())
    for (const auto& p : t.pieces) files.insert(p.file);
  std::cout << "tensors     " << ck.tensors().size() << ", " << bytes_str(ck.bytes()) << " whole, in " << files.size()
            << (files.size() == 1 ? " file" : " files") << "\n";
  for (const auto& t : ck.tensors())
    std::cout << "  " << pad(t.name, 40) << pad(t.type.str(), 18) << t.pieces.size()
              << (t.pieces.size() == 1 ? " piece" : " pieces") << "\n";
  for (const std::string& i : ignored) std::cout << "ignored     " << i << " (not committed: a save under way or cut off)\n";
  return 0;
}

}  // namespace

int cmd_inspect(int argc, char** argv) {
  Args args("inspect",
            "Show a graph file: inputs, outputs, parameters with shapes and initializers, op\n"
            "counts, and FLOPs per step (forward, and a full training step with SGD). Or a\n"
            "checkpoint directory (a step's, or the --checkpoint-dir of a run: its newest): step,\n"
            "plan, tensors with their whole shapes and pieces, and whether it is complete.",
            {{"--format", "FMT", "text or json", "text"},
             {"--nodes", "", "also list every node with its op, shapes and origin", ""}},
            {"FILE"});
  if (!args.parse(argc, argv)) return 0;
  const std::string path = args.positional()[0];
  const bool json = args.str("--format", "text") == "json";
  if (std::filesystem::is_directory(path)) return inspect_checkpoint(path, json);
  Graph g = load_graph(path, ops::registry());
  g.verify();

  auto pc = planner::count_parameters(g);
  std::map<std::string, int64_t> op_counts;
  for (auto& n : g.nodes()) op_counts[n.op]++;

  // FLOPs: forward of the loss (or of all outputs), and one training step. A graph that
  // has no optimizer yet gets one (plain SGD) on a copy, to count a real training step.
  std::vector<std::string> outs;
  for (auto& o : g.outputs()) outs.push_back(o.name);
  std::vector<Value> fwd_targets;
  if (auto l = g.output("loss")) fwd_targets.push_back(*l);
  else for (auto& o : g.outputs()) fwd_targets.push_back(o.value);
  double fwd_flops = fwd_targets.empty() ? 0 : planner::graph_cost(g, fwd_targets).flops;
  double train_flops = NAN;
  std::string train_note;
  if (!g.updates().empty()) {
    std::set<std::string> phases;
    for (auto& u : g.updates()) phases.insert(u.phase);
    train_flops = 0;
    for (auto& p : phases) train_flops += planner::phase_cost(g, p, {"loss"}).flops;
    train_note = "phases of the stored training graph";
  } else if (g.output("loss") && !g.parameters().empty()) {
    Graph t = g;
    add_training(t, "loss", OptimizerConfig{});
    train_flops = planner::phase_cost(t, "train", {"loss"}).flops;
    train_note = "forward + backward + SGD update";
  }

  if (json) {
    std::ostringstream os;
    os << "{\"file\":" << json_quote(path) << ",\"nodes\":" << g.size() << ",\"inputs\":[";
    bool first = true;
    for (int32_t id : g.nodes_of_kind(OpKind::input)) {
      os << (first ? "" : ",") << "{\"name\":" << json_quote(g.node(id).name) << ",\"type\":" << json_quote(g.node(id).outputs[0].str()) << "}";
      first = false;
    }
    os << "],\"outputs\":[";
    first = true;
    for (auto& o : g.outputs()) {
      os << (first ? "" : ",") << "{\"name\":" << json_quote(o.name) << ",\"type\":" << json_quote(g.type(o.value).str()) << "}";
      first = false;
    }
    os << "],\"parameters\":[";
    first = true;
    for (int32_t id : g.parameters()) {
      const Node& n = g.node(id);
      os << (first ? "" : ",") << "{\"name\":" << json_quote(n.name) << ",\"type\":" << json_quote(n.outputs[0].str())
         << ",\"elements\":" << n.outputs[0].numel() << ",\"init\":" << json_quote(init_str(n))
         << ",\"stored\":" << (g.data(id) ? "true" : "false") << "}";
      first = false;
    }
    os << "],\"parameter_elements\":" << pc.elements << ",\"parameter_bytes\":" << pc.bytes << ",\"ops\":{";
    first = true;
    for (auto& [op, c] : op_counts) {
      os << (first ? "" : ",") << json_quote(op) << ":" << c;
      first = false;
    }
    os << "},\"flops_forward\":" << fwd_flops << ",\"flops_train_step\":";
    if (std::isfinite(train_flops)) os << train_flops; else os << "null";
    os << "}";
    std::cout << os.str() << std::endl;
    return 0;
  }

  std::cout << path << ": " << g.size() << " nodes, " << g.parameters().size() << " parameters, "
            << g.updates().size() << " updates\n\ninputs:\n";
  for (int32_t id : g.nodes_of_kind(OpKind::input))
    std::cout << "  " << pad(g.node(id).name, 24) << g.node(id).outputs[0].str() << "\n";
  std::cout << "outputs:\n";
  for (auto& o : g.outputs()) std::cout << "  " << pad(o.name, 24) << g.type(o.value).str() << "\n";
  std::cout << "parameters: " << pc.elements << " elements, " << si_units(static_cast<double>(pc.bytes), "B") << "\n";
  for (int32_t id : g.parameters()) {
    const Node& n = g.node(id);
    std::cout << "  " << pad(n.name, 24) << pad(n.outputs[0].str(), 18) << pad(std::to_string(n.outputs[0].numel()), 10)
              << pad(init_str(n), 22) << (g.data(id) ? "stored " : "") << n.origin.str() << "\n";
  }
  std::cout << "ops:\n";
  for (auto& [op, c] : op_counts) std::cout << "  " << pad(op, 24) << c << "\n";
  std::cout << "FLOPs per step:\n  forward              " << si_units(fwd_flops, "FLOP") << "\n";
  if (std::isfinite(train_flops))
    std::cout << "  training step        " << si_units(train_flops, "FLOP") << "  (" << train_note << ")\n";
  if (args.has("--nodes")) {
    std::cout << "nodes:\n";
    for (auto& n : g.nodes()) {
      std::string ins;
      for (auto& v : n.inputs) ins += (ins.empty() ? "" : ", ") + g.node(v.node).name;
      std::cout << "  " << pad(std::to_string(n.id), 5) << pad(n.op, 14) << pad(n.name, 36)
                << pad(n.outputs.empty() ? "" : n.outputs[0].str(), 18) << "(" << ins << ") " << n.origin.str() << "\n";
    }
  }
  return 0;
}

}  // namespace tessel::cli
