#include "frontend/distributed.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <random>
#include <sstream>

#include "frontend/models.h"
#include "graph/error.h"
#include "graph/serialize.h"
#include "graph/text.h"
#include "ops/registry.h"
#include "planner/cluster.h"
#include "runtime/executor.h"
#include "runtime/local_run.h"
#include "runtime/thread_pool.h"
#include "runtime/process_env.h"

namespace tessel {

namespace {


std::string mib(double b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.1f MiB", b / (1 << 20));
  return s;
}

OptimizerConfig one_step(OptimizerConfig oc) {
  oc.accumulate = 1;  // the runtime accumulates microbatches itself
  return oc;
}

}  // namespace

bool is_graph_file(const std::string& model) {
  auto ends = [&](std::string_view s) { return model.size() >= s.size() && model.compare(model.size() - s.size(), s.size(), s) == 0; };
  return ends(".tsg") || ends(".tsg.txt") || model.find(':') == std::string::npos;
}

Graph training_graph(const std::string& spec, int64_t global_batch, const OptimizerConfig& oc) {
  if (is_graph_file(spec)) {
    Graph g = load_graph(spec, ops::registry());
    const int64_t b = planner::graph_batch(g);
    if (global_batch > 0 && global_batch != b)
      throw Error(spec + ": the graph takes batch " + std::to_string(b) + ", not " + std::to_string(global_batch) +
                  " (a graph file fixes its batch; drop --batch or export it at another)");
    if (g.updates().empty()) add_training(g, "loss", one_step(oc));
    return g;
  }
  if (global_batch < 1) throw Error("the batch must be >= 1, got " + std::to_string(global_batch));
  models::Built m = models::from_spec(spec, global_batch, true);
  add_training(m.model->graph(), "loss", one_step(oc));
  return std::move(m.model->graph());
}

std::string DevicePlan::summary() const {
  std::ostringstream os;
  const planner::PlanEstimate& e = search.best;
  os << "plan: " << config.str() << " on " << cluster
     << (calibrated.empty() ? " (not calibrated: datasheet estimates; `tessel calibrate` measures this host)"
                            : " (calibrated " + calibrated + ")")
     << "\n";
  for (size_t s = 0; s < e.stages.size(); ++s) {
    const int64_t per = config.dp * config.tp;
    os << "  stage " << s << " (ranks " << s * per << "-" << (s + 1) * per - 1 << "): " << e.stages[s].layers << "\n";
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "  predicted: step %.3g ms, peak memory %s per device\n", e.step_time_s * 1e3,
                mib(e.peak_memory_bytes).c_str());
  os << buf;
  return os.str();
}

std::vector<planner::RankProgram> DevicePlan::programs(const Graph& training) const {
  return planner::partition(training, config, stage_bounds);
}

DevicePlan device_plan(const planner::PlanFile& f, const std::string& path, int64_t devices) {
  if (devices > 0 && f.config.devices() != devices)
    throw Error(path + " is a plan for " + std::to_string(f.config.devices()) + " devices (" + f.config.str() +
                "), not " + std::to_string(devices));
  DevicePlan p;
  p.config = f.config;
  p.cluster = f.cluster;
  p.search.best = f.estimate;
  for (auto& st : f.estimate.stages) p.stage_bounds.push_back(st.first_layer);
  if (!f.estimate.stages.empty()) p.stage_bounds.push_back(f.estimate.stages.back().end_layer);
  return p;
}

namespace {

// `*` matches any run of characters, everything else itself.
bool glob_match(std::string_view pattern, std::string_view name) {
  size_t p = 0, n = 0, star = std::string_view::npos, resume = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = n;
    } else if (p < pattern.size() && pattern[p] == name[n]) {
      ++p, ++n;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      n = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace

std::map<int32_t, int8_t> split_pins(const Graph& g, const std::string& list) {
  struct Rule {
    std::string pattern;
    int dim;
    bool used = false;
  };
  std::vector<Rule> rules;
  size_t at = 0;
  while (at < list.size()) {
    const size_t comma = std::min(list.find(',', at), list.size());
    const std::string item = list.substr(at, comma - at);
    at = comma + 1;
    const size_t eq = item.rfind('=');
    const std::string pattern = eq == std::string::npos ? "" : item.substr(0, eq);
    const std::string dim = eq == std::string::npos ? "" : item.substr(eq + 1);
    char* end = nullptr;
    const long d = dim == "none" ? -1 : std::strtol(dim.c_str(), &end, 10);
    if (pattern.empty() || dim.empty() || (dim != "none" && (*end != 0 || d < 0 || d > 7)))
      throw Error("--split wants PATTERN=DIM items (DIM a dim number or none) separated by commas, got '" + item + "'");
    rules.push_back({pattern, static_cast<int>(d)});
  }
  std::map<int32_t, int8_t> pins;
  for (int32_t id : g.parameters()) {
    const Node& n = g.node(id);
    bool applied = false;
    for (Rule& r : rules) {
      if (!glob_match(r.pattern, n.name)) continue;
      r.used = true;
      if (applied) continue;
      if (r.dim >= n.outputs[0].rank())
        throw Error("--split " + r.pattern + "=" + std::to_string(r.dim) + ": " + n.name + " " + n.outputs[0].str() +
                    " (" + n.where() + ") has no dim " + std::to_string(r.dim));
      pins[id] = static_cast<int8_t>(r.dim);
      applied = true;
    }
  }
  for (const Rule& r : rules)
    if (!r.used) {
      std::string names;
      int shown = 0;
      for (int32_t id : g.parameters())
        if (shown++ < 6) names += (names.empty() ? "" : ", ") + g.node(id).name;
      if (shown > 6) names += ", ... (" + std::to_string(shown) + " in all; `tessel inspect` lists them)";
      throw Error("--split " + r.pattern + ": no parameter has that name (the pattern covers whole names, `*` any "
                  "run of characters; parameters: " + names + ")");
    }
  return pins;
}

planner::Pins pins_for(const planner::PlanConfig& c, const std::vector<planner::StageEstimate>& stages) {
  planner::Pins p;
  p.dp = c.dp, p.tp = c.tp, p.pp = c.pp, p.zero = c.zero, p.microbatches = c.microbatches;
  p.schedule = c.schedule, p.recompute = c.recompute, p.sequence_parallel = c.sequence_parallel;
  if (c.pp > 1)
    for (const auto& s : stages) p.stage_layers.push_back(s.end_layer - s.first_layer);
  return p;
}

DevicePlan plan_for_devices(const Graph& training, int64_t devices, const planner::Pins& pins, int alternatives) {
  if (devices < 1) throw Error("--devices must be >= 1");
  DevicePlan p;
  p.cluster = "local:" + std::to_string(devices);
  const planner::ClusterSpec cluster = planner::parse_cluster(p.cluster);
  p.calibrated = cluster.calibration.when;
  planner::SearchOptions so = planner::default_search_options(training, cluster);  // what `tessel plan` searches with
  so.alternatives = std::max(so.alternatives, alternatives);
  const std::string phase = training.updates().empty() ? "train" : training.updates().front().phase;
  p.search = planner::search_plan(training, phase, cluster, pins, so);
  p.config = p.search.best.config;
  if (p.config.devices() != devices)
    throw Error("the plan " + p.config.str() + " uses " + std::to_string(p.config.devices()) + " of the " +
                std::to_string(devices) + " devices: pin dp, tp and pp so that dp x tp x pp = " + std::to_string(devices));
  for (auto& st : p.search.best.stages) p.stage_bounds.push_back(st.first_layer);
  if (!p.search.best.stages.empty()) p.stage_bounds.push_back(p.search.best.stages.back().end_layer);
  return p;
}

std::string VerifyReport::json() const {
  std::ostringstream os;
  os << "{\"max_rel_diff_loss\":" << json_number(max_rel_diff_loss) << ",\"max_rel_diff_params\":" << json_number(max_rel_diff_params)
     << ",\"worst_parameter\":" << json_quote(worst_parameter) << ",\"ok\":" << (ok ? "true" : "false")
     << ",\"losses_one_device\":[";
  for (size_t i = 0; i < loss_one.size(); ++i) os << (i ? "," : "") << json_number(loss_one[i]);
  os << "],\"losses_plan\":[";
  for (size_t i = 0; i < loss_plan.size(); ++i) os << (i ? "," : "") << json_number(loss_plan[i]);
  os << "],\"arena_bytes\":[";
  for (size_t i = 0; i < arena_bytes.size(); ++i) os << (i ? "," : "") << arena_bytes[i];
  os << "],\"memory_bytes\":[";
  for (size_t i = 0; i < memory_bytes.size(); ++i) os << (i ? "," : "") << memory_bytes[i];
  os << "],\"predicted_bytes\":[";
  for (size_t i = 0; i < predicted_bytes.size(); ++i) os << (i ? "," : "") << json_number(predicted_bytes[i]);
  os << "]}";
  return os.str();
}

VerifyReport verify_plan(const VerifyOptions& opt, const DevicePlan& plan) {
  const Graph one_g = training_graph(opt.spec, opt.batch, opt.optimizer);

  runtime::ExecutorOptions eo;
  eo.seed = opt.seed;
  eo.use_blas = opt.rank.use_blas;
  eo.parallel = &runtime::ThreadPool::shared();
  runtime::Executor one(planner::one_device(one_g), eo);
  one.initialize();

  runtime::ExecutorOptions ro = opt.rank;
  ro.seed = opt.seed;
  runtime::CommOptions co;
  co.timeout_s = opt.timeout_s;
  std::vector<planner::RankProgram> programs = plan.programs(one_g);
  if (opt.rewrite_programs) opt.rewrite_programs(programs);
  // Under a launcher this process runs its rank (and a one-device reference of its own).
  std::optional<runtime::ProcessRole> role = runtime::process_role();
  if (role && role->size == 1) role.reset();
  co.engine = opt.comm.empty() ? (role ? "gloo" : "inprocess") : opt.comm;
  if (role && co.engine == "inprocess")
    throw Error("this process is " + role->str() + "; ranks in separate processes talk over gloo or mpi");
  std::optional<runtime::LocalRun> run_storage;
  if (role) {
    if (plan.config.devices() != role->size)
      throw Error("the plan " + plan.config.str() + " is for " + std::to_string(plan.config.devices()) +
                  " devices, but this process is " + role->str());
    run_storage.emplace(std::move(programs), plan.config, role->rank, runtime::connect_ranks(*role, co), ro,
                        runtime::threads_per_rank(*role));
  } else {
    run_storage.emplace(std::move(programs), plan.config, ro, co);
  }
  runtime::LocalRun& run = *run_storage;
  run.initialize();

  VerifyReport rep;
  const auto& stages = plan.search.best.stages;
  const std::vector<runtime::RankMemory> memory = run.memory();
  for (size_t i = 0; i < memory.size(); ++i) {
    const runtime::RankMemory& m = memory[i];
    rep.arena_bytes.push_back(m.arena_bytes);
    rep.memory_bytes.push_back(m.total());
    const int64_t st = run.programs()[static_cast<size_t>(run.first_rank()) + i].stage;
    rep.predicted_bytes.push_back(st >= 0 && static_cast<size_t>(st) < stages.size() ? stages[static_cast<size_t>(st)].peak_memory_bytes
                                                                                      : NAN);
  }
  std::mt19937 rng(static_cast<uint32_t>(opt.seed * 7919 + 5));
  const auto logits = one_g.output("logits");
  if (!logits) throw Error(opt.spec + ": the model has no 'logits' output to draw labels for");
  const int64_t classes = one_g.type(*logits).shape.back();
  for (int64_t step = 0; step < opt.steps; ++step) {
    for (int32_t id : one_g.nodes_of_kind(OpKind::input)) {
      const Node& n = one_g.node(id);
      const TensorType& t = n.outputs[0];
      TensorRef dst = one.input(n.name);
      for (int64_t i = 0; i < t.numel(); ++i) {
        if (t.dtype == DType::f32) dst.as<float>()[i] = std::uniform_real_distribution<float>(-1, 1)(rng);
        else if (t.dtype == DType::i32) dst.as<int32_t>()[i] = static_cast<int32_t>(rng() % static_cast<uint32_t>(classes));
        else throw Error(n.where() + ": verify feeds f32 and i32 inputs, this one is " + t.str());
      }
      run.feed(n.name, t, std::span<const std::byte>(static_cast<const std::byte*>(dst.data), static_cast<size_t>(t.bytes())));
    }
    one.step();
    run.step();
    const double want = one.output("loss").as<float>()[0], got = run.scalar_output("loss");
    rep.loss_one.push_back(want);
    rep.loss_plan.push_back(got);
    rep.max_rel_diff_loss = std::max(rep.max_rel_diff_loss, std::fabs(got - want) / std::max(std::fabs(want), 1e-12));
  }
  for (int32_t id : one_g.parameters()) {
    const Node& n = one_g.node(id);
    const std::vector<std::byte> got_b = run.gather_variable(n.name, n.outputs[0]);
    const float* got = reinterpret_cast<const float*>(got_b.data());
    const float* want = one.variable(n.name).as<float>();
    // Relative to the tensor's largest magnitude, or to the learning rate (how far one step
    // moves a parameter) for tensors that stay near zero.
    double scale = opt.optimizer.lr;
    for (int64_t i = 0; i < n.outputs[0].numel(); ++i) scale = std::max(scale, std::fabs(double(want[i])));
    for (int64_t i = 0; i < n.outputs[0].numel(); ++i) {
      const double d = std::fabs(double(got[i]) - want[i]) / std::max(scale, 1e-30);
      if (d > rep.max_rel_diff_params || rep.worst_parameter.empty()) {
        rep.max_rel_diff_params = d;
        rep.worst_parameter = n.name + "[" + std::to_string(i) + "]";
      }
    }
  }
  rep.ok = rep.max_rel_diff_loss <= opt.tolerance && rep.max_rel_diff_params <= opt.tolerance;
  return rep;
}

}  // namespace tessel
