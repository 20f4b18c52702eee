#include <fstream>
#include <iostream>

#include "frontend/cli/args.h"
#include "frontend/cli/commands.h"
#include "frontend/cli/pins.h"
#include "frontend/distributed.h"
#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "graph/serialize.h"
#include "ops/registry.h"
#include "planner/partition.h"
#include "planner/plan_file.h"
#include "planner/report.h"

namespace tessel::cli {

namespace {

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  if (!f) throw Error("cannot write " + path);
  f << text;
  if (!f.flush()) throw Error("cannot write " + path);
}

}  // namespace

int cmd_plan(int argc, char** argv) {
  Args args("plan",
            "Plan how to train a model on a cluster: search data, tensor, sequence and pipeline\n"
            "parallelism, ZeRO, microbatches and recomputation for the best predicted step time that\n"
            "fits in memory; print the plan, why it won, and the next best alternatives. Pins fix any part.",
            with_pin_flags({
                {"--model", "SPEC|FILE", "mlp:..., gpt:layers=..,d_model=..,heads=..,seq=..,vocab=.., llama:..., or a .tsg file", ""},
                {"--batch", "N", "global batch (samples per optimizer step)", "256", ints(1)},
                {"--cluster", "SPEC|FILE", "a100-80g:nodes=N[,ib=200|400], h100-80g:nodes=N, local:N, or a .pbtxt file", "local:1"},
                {"--precision", "P", "f32, mixed (bf16 compute, f32 master weights), or auto (mixed on GPUs)", "auto"},
                {"--f32-gradients", "", "with mixed precision, accumulate and reduce gradients in f32 (Megatron with bf16, "
                                        "DeepSpeed's BF16_Optimizer)", ""},
                {"--grad-accumulation", "HOW", "how each microbatch's weight gradients join the step's sum: add (a pass "
                                                "reading the gradient and the sum; tessel's runtime), in-gemm (the weight-gradient "
                                                "product accumulates in place, as Megatron-LM's gradient_accumulation_fusion) or "
                                                "cast-add (a converted copy, then the add: DeepSpeed's BF16_Optimizer)", "add"},
                {"--blocking-p2p", "", "pipeline transfers hold both stages' compute streams (to compare with DeepSpeed's "
                                       "pipeline engine; tessel overlaps them)", ""},
                {"--grad-reduce-after-backward", "", "gradient reductions start after the whole backward (to compare with "
                                                     "Megatron-LM's allreduce_gradients of 2021-22 and DeepSpeed ZeRO-1 without "
                                                     "overlap_comm; tessel starts each as its gradients are final)", ""},
                {"--fusion", "HOW", "how far elementwise fusion reaches: groups (a value stays in the kernel when all its "
                                    "readers are in it: tessel's fusion pass) or chains (one value into one reader: "
                                    "eager frameworks' hand-fused kernels, to compare with Megatron-LM's runs)", "groups"},
                {"--optimizer", "NAME", "sgd or adamw (decides optimizer state)", "adamw"},
                {"--momentum", "X", "SGD momentum (a momentum buffer per parameter when > 0)", "0", fraction_below_one()},
                {"--gemm-efficiency", "X", "fraction of peak that large GEMMs reach (overrides the cluster's measured figure)", "the device's",
                 fraction_up_to_one()},
                {"--format", "FMT", "text or json (keys: step_time_s, model_flops_per_step, hardware_flops_per_step, "
                                    "tflops_per_device, mfu, peak_memory_bytes, mesh, stages, search_time_s, alternatives, ...)", "text"},
                {"--dot", "FILE", "write the graph coloured by stage, collectives drawn as red diamonds (Graphviz)", ""},
                {"--trace", "FILE", "write the simulated step as a Chrome trace (chrome://tracing, Perfetto)", ""},
                {"--html", "FILE", "write a self-contained HTML report (no network needed): summary, mesh and stages "
                                   "drawn, memory per device against capacity, the simulated timeline of every stage's "
                                   "streams, the alternatives and why they lost", ""},
                {"--output", "FILE", "write the plan (.tsp): config, placements, stages, predicted costs and, "
                                     "on up to 64 devices, every rank's program (forward/backward/apply sections and its stage's schedule)", ""},
            }, 3),
            {});
  // The model may also be given as the first positional argument.
  std::vector<char*> rest;
  std::string positional_model;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (positional_model.empty() && a.rfind("-", 0) != 0 && (i == 0 || std::string(argv[i - 1]).rfind("--", 0) != 0 ||
                                                              std::string(argv[i - 1]) == "--sp" ||
                                                              std::string(argv[i - 1]) == "--no-sp"))
      positional_model = a;
    else
      rest.push_back(argv[i]);
  }
  if (!args.parse(static_cast<int>(rest.size()), rest.data())) return 0;
  std::string spec = args.has("--model") ? args.str("--model") : positional_model;
  if (spec.empty()) throw Error("tessel plan: give a model (--model SPEC or a .tsg file; see --help)");
  const std::string format = args.str("--format", "text");
  if (format != "text" && format != "json") throw Error("tessel plan: --format must be text or json");
  int64_t batch = args.i64("--batch", 256);
  const std::string cluster_spec = args.str("--cluster", "local:1");
  planner::ClusterSpec cluster = planner::parse_cluster(cluster_spec);

  planner::Pins pins = parse_pins(args, "plan");
  if (!pins.schedule) pins.schedule = planner::Schedule::one_f_one_b;

  const std::string precision = args.str("--precision", "auto");
  if (precision != "mixed" && precision != "f32" && precision != "auto")
    throw Error("tessel plan: --precision must be f32, mixed or auto");
  OptimizerConfig oc;
  oc.kind = args.str("--optimizer", "adamw");
  oc.momentum = args.f64("--momentum", 0);

  // The training graph at the global batch: a DSL spec built at --batch, or a graph file
  // (whose batched inputs fix the batch).
  std::string description = spec;
  const bool is_file = spec.find(':') == std::string::npos;
  Graph g = [&] {
    if (!is_file) {
      description = models::from_spec(spec, 1, true).description;
      return training_graph(spec, batch, oc);
    }
    Graph loaded = load_graph(spec, ops::registry());
    if (loaded.updates().empty()) add_training(loaded, "loss", oc);
    return loaded;
  }();
  if (is_file) {
    const int64_t b = planner::graph_batch(g);
    if (args.has("--batch") && b != batch)
      throw Error(spec + ": the graph takes batch " + std::to_string(b) + ", not --batch " + std::to_string(batch));
    batch = b;
  }
  const std::string phase = g.updates().front().phase;
  // The same search `tessel train` runs (planner::default_search_options), then the flags.
  planner::SearchOptions so = planner::default_search_options(g, cluster);
  if (precision == "mixed") so.cost.precision = planner::Precision::mixed;
  if (precision == "f32") so.cost.precision = planner::Precision::f32;
  if (args.has("--f32-gradients")) {
    if (so.cost.precision != planner::Precision::mixed)
      throw Error("tessel plan: --f32-gradients goes with mixed precision (gradients are f32 anyway with --precision f32)");
    so.cost.f32_gradients = true;
  }
  if (args.has("--grad-accumulation")) {
    const std::string a = args.str("--grad-accumulation");
    const auto ga = planner::grad_accumulation_from_name(a);
    if (!ga) throw Error("tessel plan: --grad-accumulation must be add, in-gemm or cast-add (got '" + a + "')");
    so.cost.grad_accumulation = *ga;
  }
  so.cost.blocking_p2p = args.has("--blocking-p2p");
  so.cost.grad_reduce_after_backward = args.has("--grad-reduce-after-backward");
  if (args.has("--fusion")) {
    const std::string f = args.str("--fusion", "groups");
    if (f != "groups" && f != "chains") throw Error("tessel plan: --fusion must be groups or chains, got '" + f + "'");
    so.cost.fuse_groups = f == "groups";
  }
  if (args.has("--gemm-efficiency")) {
    so.cost.gemm_efficiency = args.f64("--gemm-efficiency", 1);
  }
  if (args.has("--split")) pins.splits = split_pins(g, args.str("--split"));

  planner::SearchResult result = planner::search_plan(g, phase, cluster, pins, so);
  planner::ReportContext ctx{description, cluster_spec, batch, &cluster, &so.cost, &g, phase};
  if (format == "json") std::cout << planner::report_json(result, ctx) << std::endl;
  else std::cout << planner::report_text(result, ctx);

  if (args.has("--dot")) {
    write_file(args.str("--dot"), planner::plan_dot(result, ctx));
    std::cerr << "wrote " << args.str("--dot") << "\n";
  }
  if (args.has("--trace")) {
    const planner::ModelProfile mp =
        planner::profile_model(g, planner::find_layers(g, phase), result.best.config, cluster, so.cost);
    planner::PlanEstimate detailed = planner::estimate_plan(mp, result.best.config, cluster, so.cost, true);
    write_file(args.str("--trace"), detailed.simulation->chrome_trace_json(detailed.simulation->run()));
    std::cerr << "wrote " << args.str("--trace") << "\n";
  }
  if (args.has("--html")) {
    write_file(args.str("--html"), planner::report_html(result, ctx));
    std::cerr << "wrote " << args.str("--html") << "\n";
  }
  if (args.has("--output")) {
    planner::PlanFile f;
    f.model = description;
    f.cluster = cluster_spec;
    f.global_batch = batch;
    f.config = result.best.config;
    f.estimate = result.best;
    const planner::Mesh mesh = planner::stage_mesh(f.config);
    for (int32_t id : g.parameters())
      f.parameters.push_back({g.node(id).name, planner::parameter_placement(g, g.node(id), f.config, mesh, false).stored});
    if (f.config.devices() > 64) {
      f.notes.push_back("per-rank programs not included for more than 64 devices");
    } else {
      std::vector<int64_t> bounds;
      for (auto& st : result.best.stages) bounds.push_back(st.first_layer);
      bounds.push_back(result.best.stages.back().end_layer);
      f.programs = planner::partition(g, f.config, bounds);
    }
    planner::save_plan(f, args.str("--output"));
    std::cerr << "wrote " << args.str("--output") << " (" << f.programs.size() << " rank programs)\n";
  }
  return result.best.fits ? 0 : 4;
}

}  // namespace tessel::cli
