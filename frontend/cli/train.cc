#include <unistd.h>

#include <iostream>

#include "frontend/cli/args.h"
#include "frontend/cli/commands.h"
#include "frontend/cli/pins.h"
#include "frontend/trainer.h"
#include "runtime/process_env.h"
#include "graph/error.h"

namespace tessel::cli {

int cmd_train(int argc, char** argv) {
  Args args("train",
            "Train a model on one CPU device, or with --devices N on N simulated devices (threads of\n"
            "this process with real collectives between them) under a plan: searched automatically,\n"
            "pinned in part (--dp, --tp, --pp, ...), or loaded from `tessel plan --output`. Under a\n"
            "launcher (tessel launch, mpirun, srun, or torchrun-style RANK/WORLD_SIZE/MASTER_ADDR/\n"
            "MASTER_PORT) each process is one rank of the launcher's world, over Gloo; the pins apply\n"
            "to that world and --devices is not needed; rank 0 prints. The model\n"
            "is a builder spec (mlp:784-1024-10, gpt:layers=4,d_model=256,heads=4,seq=128,vocab=256,\n"
            "llama:layers=4,d_model=256,heads=8,kv_heads=2,ffn=768,seq=128,vocab=256)\n"
            "or, on one device, a .tsg graph file with inputs x/labels (images) or tokens/targets\n"
            "(text) and a scalar 'loss' output.",
            with_pin_flags({
                {"--model", "SPEC|FILE", "model to train", ""},
                {"--dataset", "NAME", "fashion-mnist, or text:FILE (byte-level language modelling)", ""},
                {"--data-dir", "DIR", "directory of the fashion-mnist idx files", "/usr/share/datasets/fashion-mnist"},
                {"--epochs", "N", "passes over the training set", "1 when --steps is not given", ints(1)},
                {"--steps", "N", "optimizer steps (instead of --epochs)", "", ints(1)},
                {"--batch", "N", "samples per optimizer step", "64, or the graph file's batch", ints(1)},
                {"--accumulate", "K", "split each batch into K microbatches and accumulate gradients", "1", ints(1)},
                {"--optimizer", "NAME", "sgd or adamw", "sgd"},
                {"--lr", "X", "learning rate", "0.01", positive()},
                {"--momentum", "X", "SGD momentum", "0", fraction_below_one()},
                {"--beta1", "X", "AdamW beta1", "0.9", fraction_below_one()},
                {"--beta2", "X", "AdamW beta2", "0.999", fraction_below_one()},
                {"--weight-decay", "X", "weight decay for weights of rank >= 2 (decoupled for AdamW)", "0", non_negative()},
                {"--lr-schedule", "NAME", "learning-rate schedule: constant or cosine (needs --steps)", "constant"},
                {"--warmup", "N", "linear warmup steps", "0", ints(0)},
                {"--min-lr", "X", "final learning rate of the cosine schedule", "0", non_negative()},
                {"--clip-norm", "X", "clip gradients to this global L2 norm (0: off)", "0", non_negative()},
                {"--seed", "N", "seed for initialization, shuffling and dropout", "0", ints(0)},
                {"--threads", "N", "CPU threads (0: all cores)", "0", ints(0)},
                {"--no-blas", "", "use the reference matmul kernel instead of OpenBLAS", ""},
                {"--no-jit", "", "run every op on its reference kernel: no fusion, no compiled kernels (for debugging)", ""},
                {"--eval-batches", "N", "validation batches for text datasets", "50", ints(0)},
                {"--save", "FILE", "write the trained model (graph + parameters) to FILE", ""},
                {"--checkpoint-dir", "DIR", "save checkpoints under DIR (each rank's blocks of every variable, in "
                                            "safetensors files, with a metadata file written last)", ""},
                {"--checkpoint-every", "S", "with --checkpoint-dir: save after every S steps (0: only after the last)", "0", ints(0)},
                {"--keep", "K", "with --checkpoint-dir: keep the newest K checkpoints (0: all)", "0", ints(0)},
                {"--resume", "DIR", "continue from the newest committed checkpoint in DIR (or that step directory), "
                                    "saved under any plan; --steps and --epochs count the whole run", ""},
                {"--init", "FILE", "start from the parameters in a safetensors file (saved by PyTorch's safetensors.torch.save_file "
                                   "or tessel export): by name, or with '/' as '.', or as --init-map says", ""},
                {"--init-map", "FILE", "with --init: lines `TESSEL_NAME = FILE_NAME [transpose]` (transpose: PyTorch's "
                                       "nn.Linear [out, in] for tessel's [in, out])", ""},
                {"--input", "NAME=ROLE,...", "feed input NAME the dataset's ROLE (data, labels for images; tokens, targets "
                                             "for text), over the roles the graph declares", ""},
                {"--format", "FMT", "text, or json: end with one line of JSON (keys: test_accuracy, final_loss, "
                                    "samples_per_s, step_ms_median, steps, ...)", "text"},
                {"--quiet", "", "no progress output", ""},
                {"--devices", "N", "simulated devices to train on (threads of this process); the plan is searched "
                                   "unless pinned or given", "", ints(1)},
                {"--auto", "", "with --devices: let the planner choose what the pins leave open (the default)", ""},
                {"--plan", "FILE", "with --devices: run this plan (from `tessel plan --output`)", ""},
                {"--verbose", "", "with --devices: each rank's planned memory (arena + variables) against the planner's prediction", ""},
                {"--trace", "FILE", "write a Chrome-trace / Perfetto JSON file of timed steps of every rank: compute and "
                                    "communication streams, each op with its node and source line, waits as such", ""},
                {"--trace-steps", "K", "with --trace: how many steps (the first timed ones)", "3", ints(1)},
                {"--tune", "K", "with --devices: run the K best plans of the search on this data (three passes of at "
                                "least 5 steps and 0.2 s each) and train the fastest measured, the simulator's pick unless "
                                "another measures 3 % faster (reported with each one's predicted and measured step)", "0", ints(0)},
                {"--html", "FILE", "with --devices: write the plan's HTML report with this run's measurements beside "
                                   "its predictions (timeline, step and its parts, memory per rank)", ""},
                {"--bucket-mb", "X", "with --devices: gradient all-reduce bucket size in MiB", "25", positive()},
                {"--no-overlap", "", "with --devices: run collectives on the compute stream", ""},
                {"--comm-timeout", "S", "with --devices: seconds a collective waits for the other ranks before failing", "300", positive()},
                {"--comm", "ENGINE", "inprocess or inproc (simulated devices share memory), gloo (each rank its own endpoint over TCP), or mpi (under mpirun)",
                 "inprocess with --devices, gloo under a launcher"},
            }, 24));
  if (!args.parse(argc, argv)) return 0;
  if (!args.has("--model")) throw Error("tessel train: --model is required (see --help)");
  if (!args.has("--dataset")) throw Error("tessel train: --dataset is required (see --help)");
  const std::string format = args.str("--format", "text");
  if (format != "text" && format != "json") throw Error("tessel train: --format must be text or json");

  TrainOptions o;
  o.model = args.str("--model");
  o.dataset = args.str("--dataset");
  o.data_dir = args.str("--data-dir");
  o.epochs = args.i64("--epochs", 0);
  o.steps = args.i64("--steps", 0);
  o.batch = args.i64("--batch", 0);
  o.optimizer.accumulate = args.i64("--accumulate", 1);
  o.optimizer.kind = args.str("--optimizer", "sgd");
  o.optimizer.lr = args.f64("--lr", 0.01);
  o.optimizer.momentum = args.f64("--momentum", 0);
  o.optimizer.beta1 = args.f64("--beta1", 0.9);
  o.optimizer.beta2 = args.f64("--beta2", 0.999);
  o.optimizer.weight_decay = args.f64("--weight-decay", 0);
  o.optimizer.schedule = args.str("--lr-schedule", "constant");
  if (o.optimizer.schedule != "constant" && o.optimizer.schedule != "cosine")
    throw Error("tessel train: --lr-schedule must be constant or cosine, got '" + o.optimizer.schedule + "'");
  o.optimizer.warmup_steps = args.i64("--warmup", 0);
  o.optimizer.min_lr = args.f64("--min-lr", 0);
  o.optimizer.clip_norm = args.f64("--clip-norm", 0);
  o.seed = static_cast<uint64_t>(args.i64("--seed", 0));
  o.threads = static_cast<int>(args.i64("--threads", 0));
  o.use_blas = !args.has("--no-blas");
  o.jit = !args.has("--no-jit");
  o.eval_batches = args.i64("--eval-batches", 50);
  o.save = args.str("--save");
  o.checkpoint_dir = args.str("--checkpoint-dir");
  o.checkpoint_every = args.i64("--checkpoint-every", 0);
  o.keep = static_cast<int>(args.i64("--keep", 0));
  o.resume = args.str("--resume");
  o.init = args.str("--init");
  o.init_map = args.str("--init-map");
  if (o.checkpoint_dir.empty() && (args.has("--checkpoint-every") || args.has("--keep")))
    throw Error("tessel train: --checkpoint-every and --keep need --checkpoint-dir");
  if (args.has("--input")) {
    const std::string list = args.str("--input");
    for (size_t pos = 0; pos <= list.size();) {
      const size_t comma = std::min(list.find(',', pos), list.size());
      const std::string item = list.substr(pos, comma - pos);
      const size_t eq = item.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == item.size())
        throw Error("tessel train: --input expects NAME=ROLE[,NAME=ROLE...], got '" + item + "'");
      const std::string role = item.substr(eq + 1);
      if (role != "data" && role != "labels" && role != "tokens" && role != "targets")
        throw Error("tessel train: --input " + item + ": the roles are data, labels, tokens and targets");
      o.input_roles[item.substr(0, eq)] = role;
      pos = comma + 1;
    }
  }
  o.quiet = args.has("--quiet");
  o.progress_terminal = isatty(STDERR_FILENO);
  o.pins = parse_pins(args, "train");
  const bool launched = runtime::process_role().has_value();
  if (args.has("--devices")) {
    o.devices = args.i64("--devices", 1);
  } else if (!launched && (args.has("--plan") || args.has("--auto") || any_pin(o.pins) || args.has("--split"))) {
    throw Error("tessel train: --plan, --auto and the plan pins go with --devices N (or a launcher: tessel launch)");
  }
  if (args.has("--plan") && (any_pin(o.pins) || args.has("--split")))
    throw Error("tessel train: give --plan or pins, not both");
  o.splits = args.str("--split");
  o.plan_file = args.str("--plan");
  o.verbose = args.has("--verbose");
  o.trace = args.str("--trace");
  o.trace_steps = args.i64("--trace-steps", 3);
  o.html = args.str("--html");
  o.tune = args.i64("--tune", 0);
  if (o.trace.empty() && args.has("--trace-steps")) throw Error("tessel train: --trace-steps goes with --trace");
  o.bucket_bytes = static_cast<int64_t>(args.f64("--bucket-mb", 25) * (1 << 20));
  o.overlap = !args.has("--no-overlap");
  o.comm_timeout_s = args.f64("--comm-timeout", 300);
  o.comm = args.str("--comm", "");
  if (o.comm == "inproc") o.comm = "inprocess";  // the short name
  if (!o.comm.empty() && o.comm != "inprocess" && o.comm != "gloo" && o.comm != "mpi")
    throw Error("tessel train: --comm must be inprocess, gloo or mpi, got '" + o.comm + "'");
  if (o.optimizer.schedule == "cosine" && o.steps > 0) o.optimizer.total_steps = o.steps;
  if (o.optimizer.schedule == "cosine" && o.steps == 0)
    throw Error("tessel train: --lr-schedule cosine needs --steps (the length of the decay)");

  TrainReport r = train(o, std::cerr);
  if (launched && runtime::process_role()->rank != 0) return 0;  // rank 0 reports for the job
  if (format == "json") std::cout << r.json() << std::endl;
  else {
    std::cout << "final_loss " << r.final_loss;
    if (std::isfinite(r.test_accuracy)) std::cout << "  test_accuracy " << r.test_accuracy;
    if (std::isfinite(r.test_loss)) std::cout << "  test_loss " << r.test_loss;
    std::cout << "  samples_per_s " << r.samples_per_s << "  step_ms_median " << r.step_ms_median << "\n";
  }
  return 0;
}

}  // namespace tessel::cli
