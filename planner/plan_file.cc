#include "planner/plan_file.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "graph/error.h"
#include "graph/serialize.h"
#include "planner/plan.pb.h"

namespace tessel::planner {

namespace {

constexpr uint32_t kPlanVersion = 1;

void to_proto(const std::string& name, const Sharding& s, proto::NamedShardingProto* p) {
  p->set_name(name);
  for (const Placement& pl : s) {
    auto* a = p->add_axes();
    a->set_kind(pl.kind == Placement::Kind::shard ? "S" : pl.kind == Placement::Kind::partial ? "P" : "R");
    a->set_dim(pl.dim);
    if (pl.is_partial()) a->set_reduce(pl.reduce == FactorReduce::max ? "max" : "sum");
  }
}

std::pair<std::string, Sharding> from_proto(const proto::NamedShardingProto& p, const std::string& path) {
  Sharding s;
  for (auto& a : p.axes()) {
    if (a.kind() == "R") s.push_back(Placement::R());
    else if (a.kind() == "S") s.push_back(Placement::S(a.dim()));
    else if (a.kind() == "P") s.push_back(Placement::P(a.reduce() == "max" ? FactorReduce::max : FactorReduce::sum));
    else throw Error(path + ": placement of '" + p.name() + "' has unknown kind '" + a.kind() + "'");
  }
  return {p.name(), s};
}

}  // namespace

void save_plan(const PlanFile& f, const std::string& path) {
  proto::PlanProto p;
  p.set_format("tessel.plan");
  p.set_format_version(kPlanVersion);
  p.set_model(f.model);
  p.set_cluster(f.cluster);
  p.set_global_batch(f.global_batch);
  const PlanConfig& c = f.config;
  p.set_dp(c.dp);
  p.set_tp(c.tp);
  p.set_pp(c.pp);
  p.set_zero(c.zero);
  p.set_microbatches(c.microbatches);
  p.set_schedule(std::string(schedule_name(c.schedule)));
  p.set_recompute(std::string(recompute_name(c.recompute)));
  p.set_sequence_parallel(c.sequence_parallel);
  for (int64_t n : c.stage_layers) p.add_stage_layers(n);
  p.set_tp_dims(std::string(c.tp_dims.begin(), c.tp_dims.end()));
  const Mesh m = stage_mesh(c);
  for (size_t a = 0; a < m.names.size(); ++a) {
    p.add_mesh_axes(m.names[a]);
    p.add_mesh_sizes(m.sizes[a]);
  }
  for (auto& [name, s] : f.parameters) to_proto(name, s, p.add_parameters());
  const PlanEstimate& e = f.estimate;
  for (const StageEstimate& st : e.stages) {
    auto* sp = p.add_stages();
    sp->set_first_layer(st.first_layer);
    sp->set_end_layer(st.end_layer);
    sp->set_layers(st.layers);
    sp->set_peak_memory_bytes(st.peak_memory_bytes);
    sp->set_weight_bytes(st.weight_bytes);
    sp->set_grad_bytes(st.grad_bytes);
    sp->set_optimizer_bytes(st.optimizer_bytes);
    sp->set_activation_bytes(st.activation_bytes);
    sp->set_compute_s(st.compute_s);
  }
  p.set_step_time_s(e.step_time_s);
  p.set_compute_s(e.compute_s);
  p.set_optimizer_s(e.optimizer_s);
  p.set_exposed_comm_s(e.exposed_comm_s);
  p.set_bubble_s(e.bubble_s);
  p.set_model_flops_per_step(e.model_flops_per_step);
  p.set_hardware_flops_per_step(e.hardware_flops_per_step);
  p.set_mfu(e.mfu);
  p.set_peak_memory_bytes(e.peak_memory_bytes);
  for (const RankProgram& r : f.programs) {
    auto* rp = p.add_programs();
    rp->set_rank(r.rank);
    rp->set_stage(r.stage);
    for (int64_t x : r.coords) rp->add_coords(x);
    rp->set_program(serialize_graph(r.graph, SaveOptions{}));
    for (auto& [n, s] : r.input_placements) to_proto(n, s, rp->add_inputs());
    for (auto& [n, s] : r.variable_placements) to_proto(n, s, rp->add_variables());
    for (auto& [n, s] : r.output_placements) to_proto(n, s, rp->add_outputs());
    std::string sec(r.section.size(), '\0');
    for (size_t i = 0; i < r.section.size(); ++i) sec[i] = static_cast<char>(r.section[i]);
    rp->set_sections(sec);
    for (int32_t l : r.layer) rp->add_layers(l);
    rp->set_recompute(std::string(r.recompute.begin(), r.recompute.end()));
    rp->set_summed(std::string(r.summed.begin(), r.summed.end()));
    rp->set_microbatch_dims(std::string(r.microbatch_dim.begin(), r.microbatch_dim.end()));
    for (const ScheduleStep& st : r.schedule) {
      auto* sp = rp->add_schedule();
      sp->set_section(std::string(section_name(st.section)));
      sp->set_microbatch(st.microbatch);
    }
  }
  for (auto& n : f.notes) p.add_notes(n);
  std::string bytes;
  if (!p.SerializeToString(&bytes)) throw Error(path + ": cannot serialise the plan (over 2 GiB?)");
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out || !out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())) || !out.flush())
      throw Error(path + ": cannot write");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(path + ": cannot write (rename failed)");
  }
}

PlanFile load_plan(const std::string& path, const OpRegistry& registry) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  proto::PlanProto p;
  if (bytes.size() > (size_t(1) << 31) - 1 || !p.ParseFromString(bytes)) throw Error(path + ": not a plan file (cannot parse)");
  if (p.format() != "tessel.plan") throw Error(path + ": not a tessel plan file");
  if (p.format_version() != kPlanVersion)
    throw Error(path + ": plan format version " + std::to_string(p.format_version()) + ", this tessel reads " +
                std::to_string(kPlanVersion));
  PlanFile f;
  f.model = p.model();
  f.cluster = p.cluster();
  f.global_batch = p.global_batch();
  PlanConfig& c = f.config;
  c.dp = p.dp();
  c.tp = p.tp();
  c.pp = p.pp();
  c.zero = static_cast<int>(p.zero());
  c.microbatches = p.microbatches();
  c.schedule = p.schedule() == "gpipe" ? Schedule::gpipe : Schedule::one_f_one_b;
  const std::optional<Recompute> rc = recompute_from_name(p.recompute());
  if (!rc) throw Error(path + ": unknown recompute '" + p.recompute() + "'");
  c.recompute = *rc;
  c.sequence_parallel = p.sequence_parallel();
  c.stage_layers.assign(p.stage_layers().begin(), p.stage_layers().end());
  for (char d : p.tp_dims()) {
    if (d < -1) throw Error(path + ": bad tensor-parallel split " + std::to_string(int(d)));
    c.tp_dims.push_back(static_cast<int8_t>(d));
  }
  if (c.dp < 1 || c.tp < 1 || c.pp < 1 || c.microbatches < 1 || c.zero < 0 || c.zero > 3)
    throw Error(path + ": invalid configuration " + c.str());
  for (auto& np : p.parameters()) f.parameters.push_back(from_proto(np, path));
  PlanEstimate& e = f.estimate;
  e.config = c;
  for (auto& sp : p.stages()) {
    StageEstimate st;
    st.first_layer = sp.first_layer();
    st.end_layer = sp.end_layer();
    st.layers = sp.layers();
    st.peak_memory_bytes = sp.peak_memory_bytes();
    st.weight_bytes = sp.weight_bytes();
    st.grad_bytes = sp.grad_bytes();
    st.optimizer_bytes = sp.optimizer_bytes();
    st.activation_bytes = sp.activation_bytes();
    st.compute_s = sp.compute_s();
    e.stages.push_back(st);
  }
  e.step_time_s = p.step_time_s();
  e.compute_s = p.compute_s();
  e.optimizer_s = p.optimizer_s();
  e.exposed_comm_s = p.exposed_comm_s();
  e.bubble_s = p.bubble_s();
  e.model_flops_per_step = p.model_flops_per_step();
  e.hardware_flops_per_step = p.hardware_flops_per_step();
  e.mfu = p.mfu();
  e.peak_memory_bytes = p.peak_memory_bytes();
  for (auto& rp : p.programs()) {
    RankProgram r{rp.rank(), rp.stage(), {rp.coords().begin(), rp.coords().end()},
                  parse_graph(rp.program(), registry, path + " (rank " + std::to_string(rp.rank()) + ")"), {}, {}, {}, {}, {}, {}, {}, {}, {}};
    const std::string where = path + " (rank " + std::to_string(rp.rank()) + ")";
    if (!rp.sections().empty() && static_cast<int64_t>(rp.sections().size()) != r.graph.size())
      throw Error(where + ": " + std::to_string(rp.sections().size()) + " sections for " + std::to_string(r.graph.size()) + " nodes");
    for (char ch : rp.sections()) {
      if (static_cast<unsigned char>(ch) > 2) throw Error(where + ": bad section " + std::to_string(int(ch)));
      r.section.push_back(static_cast<Section>(ch));
    }
    if (rp.layers_size() != r.graph.size() || static_cast<int64_t>(rp.recompute().size()) != r.graph.size())
      throw Error(where + ": " + std::to_string(rp.layers_size()) + " layer marks and " + std::to_string(rp.recompute().size()) +
                  " recompute marks for " + std::to_string(r.graph.size()) + " nodes");
    for (int32_t l : rp.layers()) {
      if (l < -1) throw Error(where + ": bad layer " + std::to_string(l));
      r.layer.push_back(l);
    }
    for (char ch : rp.recompute()) r.recompute.push_back(ch != 0);
    if (static_cast<int64_t>(rp.summed().size()) != r.graph.size())
      throw Error(where + ": " + std::to_string(rp.summed().size()) + " microbatch-sum marks for " + std::to_string(r.graph.size()) + " nodes");
    for (char ch : rp.summed()) r.summed.push_back(ch != 0);
    if (!rp.microbatch_dims().empty() && static_cast<int64_t>(rp.microbatch_dims().size()) != r.graph.size())
      throw Error(where + ": " + std::to_string(rp.microbatch_dims().size()) + " microbatch dims for " +
                  std::to_string(r.graph.size()) + " nodes");
    for (char ch : rp.microbatch_dims()) r.microbatch_dim.push_back(static_cast<int8_t>(ch));
    for (auto& sp : rp.schedule()) {
      ScheduleStep st{Section::apply, sp.microbatch()};
      if (sp.section() == "forward") st.section = Section::forward;
      else if (sp.section() == "backward") st.section = Section::backward;
      else if (sp.section() != "apply") throw Error(where + ": bad schedule step '" + sp.section() + "'");
      if (st.microbatch < 0) throw Error(where + ": negative microbatch in the schedule");
      r.schedule.push_back(st);
    }
    for (auto& x : rp.inputs()) r.input_placements.push_back(from_proto(x, path));
    for (auto& x : rp.variables()) r.variable_placements.push_back(from_proto(x, path));
    for (auto& x : rp.outputs()) r.output_placements.push_back(from_proto(x, path));
    f.programs.push_back(std::move(r));
  }
  for (auto& n : p.notes()) f.notes.push_back(n);
  return f;
}

}  // namespace tessel::planner
