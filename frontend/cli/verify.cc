#include <cstdio>
#include <iostream>

#include "frontend/cli/args.h"
#include "frontend/cli/commands.h"
#include "frontend/cli/pins.h"
#include "frontend/cli/verify.h"
#include "graph/error.h"
#include "ops/registry.h"
#include "planner/plan_file.h"
#include "runtime/process_env.h"

namespace tessel::cli {

std::optional<VerifyCommand> parse_verify(int argc, char** argv) {
  Args args("verify",
            "Check that a plan trains what one device trains: run the plan on N simulated devices\n"
            "(threads of this process, real collectives) and the whole batch on one device, from the\n"
            "same initial parameters on the same random inputs, for k optimizer steps; report the\n"
            "largest relative difference in the loss (per step) and in the parameters (after the last\n"
            "step, relative to the larger of the tensor's largest magnitude and the learning rate).\nExits 1 above the tolerance. "
            "Under a launcher (tessel launch, mpirun, srun, torchrun-style variables)\neach process runs one rank of the "
            "plan over Gloo (the world is the devices) and its own\none-device reference; rank 0 prints.",
            with_pin_flags({
                {"--model", "SPEC|FILE", "mlp:..., gpt:layers=..,d_model=..,heads=..,seq=..,vocab=.., llama:..,kv_heads=..,ffn=.., or a .tsg graph file (its batch is the batch)", ""},
                {"--batch", "N", "global batch (samples per optimizer step)", "8", ints(1)},
                {"--devices", "N", "simulated devices", "1", ints(1)},
                {"--auto", "", "let the planner choose everything the pins leave open (the default)", ""},
                {"--plan", "FILE", "run the configuration of a plan file written by `tessel plan --output`", ""},
                {"--steps", "K", "optimizer steps", "5", ints(1)},
                {"--optimizer", "NAME", "sgd or adamw. With adamw, a parameter whose gradient is zero in exact "
                                        "arithmetic (a GPT's key bias: softmax ignores a constant per query) moves by lr "
                                        "times the sign of rounding noise, which no two summation orders share: expect "
                                        "it to differ", "sgd"},
                {"--lr", "X", "learning rate", "0.01", positive()},
                {"--momentum", "X", "SGD momentum", "0.9", fraction_below_one()},
                {"--clip-norm", "X", "clip gradients to this global L2 norm (0: off)", "0", non_negative()},
                {"--seed", "N", "seed for initial parameters and inputs", "0", ints(0)},
                {"--tolerance", "X", "largest relative difference accepted", "1e-5", positive()},
                {"--bucket-mb", "X", "gradient all-reduce bucket size in MiB", "25", positive()},
                {"--no-overlap", "", "run collectives on the compute stream (no communication thread)", ""},
                {"--timeout", "S", "seconds a collective may wait for the other ranks", "300", positive()},
                {"--comm", "ENGINE", "inprocess or inproc (the ranks share memory), gloo (each rank its own endpoint over TCP), or mpi (under mpirun)",
                 "inprocess; gloo under a launcher"},
                {"--format", "FMT", "text, or json (keys: max_rel_diff_loss, max_rel_diff_params, ok, worst_parameter, "
                                    "losses_one_device, losses_plan, arena_bytes, memory_bytes: what each rank allocates, predicted_bytes: the plan's peak for it)", "text"},
            }, 3));
  if (!args.parse(argc, argv)) return std::nullopt;
  if (!args.has("--model")) throw Error("tessel verify: --model is required (see --help)");
  VerifyCommand c;
  c.format = args.str("--format", "text");
  if (c.format != "text" && c.format != "json") throw Error("tessel verify: --format must be text or json");

  VerifyOptions& o = c.options;
  o.spec = args.str("--model");
  o.batch = args.i64("--batch", 8);
  o.steps = args.i64("--steps", 5);
  o.seed = static_cast<uint64_t>(args.i64("--seed", 0));
  o.tolerance = args.f64("--tolerance", 1e-5);
  o.timeout_s = args.f64("--timeout", 300);
  o.comm = args.str("--comm", "");
  if (o.comm == "inproc") o.comm = "inprocess";  // the short name
  if (!o.comm.empty() && o.comm != "inprocess" && o.comm != "gloo" && o.comm != "mpi")
    throw Error("tessel verify: --comm must be inprocess, gloo or mpi, got '" + o.comm + "'");
  o.optimizer.kind = args.str("--optimizer", "sgd");
  o.optimizer.lr = args.f64("--lr", 0.01);
  o.optimizer.momentum = args.f64("--momentum", 0.9);
  o.optimizer.clip_norm = args.f64("--clip-norm", 0);
  o.rank.bucket_bytes = static_cast<int64_t>(args.f64("--bucket-mb", 25) * (1 << 20));
  o.rank.overlap = !args.has("--no-overlap");
  c.devices = args.i64("--devices", 1);
  c.devices_given = args.has("--devices");
  // Under a launcher the world is the devices, and this process one rank of it.
  if (auto role = runtime::process_role(); role && role->size > 1) {
    if (c.devices_given && c.devices != role->size)
      throw Error("tessel verify: --devices " + std::to_string(c.devices) + ", but this process is " + role->str());
    c.devices = role->size;
    c.devices_given = true;
    c.rank = role->rank;
  }
  c.batch_given = args.has("--batch");
  if (is_graph_file(c.options.spec) && !c.batch_given) c.options.batch = 0;  // the graph's own
  c.plan_file = args.str("--plan");
  c.pins = parse_pins(args, "verify");
  c.splits = args.str("--split");
  if (!c.plan_file.empty() && !c.splits.empty()) throw Error("tessel verify: give --plan or --split, not both");
  return c;
}

DevicePlan VerifyCommand::plan() {
  VerifyOptions& o = options;
  if (!plan_file.empty()) {
    const planner::PlanFile f = planner::load_plan(plan_file, ops::registry());
    if (f.global_batch != o.batch && batch_given)
      throw Error("tessel verify: " + plan_file + " was planned for batch " + std::to_string(f.global_batch) +
                  ", not " + std::to_string(o.batch));
    o.batch = f.global_batch;
    return device_plan(f, plan_file, devices_given ? devices : 0);
  }
  const Graph g = training_graph(o.spec, o.batch, o.optimizer);
  planner::Pins p = pins;
  if (!splits.empty()) p.splits = split_pins(g, splits);
  return plan_for_devices(g, devices, p);
}

int cmd_verify(int argc, char** argv) {
  std::optional<VerifyCommand> c = parse_verify(argc, argv);
  if (!c) return 0;
  const VerifyOptions& o = c->options;
  const std::string& format = c->format;

  const DevicePlan plan = c->plan();
  if (format == "text" && c->rank == 0) std::cout << plan.summary();
  VerifyReport r = verify_plan(o, plan);
  if (c->rank != 0) return r.ok ? 0 : 1;  // rank 0 reports for the job
  if (format == "json") {
    std::cout << r.json() << std::endl;
  } else {
    for (size_t s = 0; s < r.loss_one.size(); ++s) {
      char b[160];
      std::snprintf(b, sizeof b, "step %zu: loss one device %.7g, plan %.7g\n", s + 1, r.loss_one[s], r.loss_plan[s]);
      std::cout << b;
    }
    char b[240];
    std::snprintf(b, sizeof b, "max_rel_diff_loss %.3g  max_rel_diff_params %.3g (at %s)  tolerance %.3g: %s\n",
                  r.max_rel_diff_loss, r.max_rel_diff_params, r.worst_parameter.c_str(), o.tolerance,
                  r.ok ? "ok" : "NOT OK");
    std::cout << b;
  }
  return r.ok ? 0 : 1;
}

}  // namespace tessel::cli
