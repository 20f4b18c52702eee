#include <cstdio>
#include <iostream>

#include "frontend/cli/args.h"
#include "frontend/cli/commands.h"
#include "frontend/models.h"
#include "graph/error.h"
#include "graph/serialize.h"
#include "runtime/checkpoint.h"
#include "runtime/executor.h"
#include "runtime/safetensors.h"

namespace tessel::cli {

int cmd_export(int argc, char** argv) {
  Args args("export",
            "Build a model from a DSL builder spec and write its graph (inputs, forward pass,\n"
            "loss, seeded parameter initializers) to a file. Binary .tsg unless --text. Or, with\n"
            "--checkpoint, write a checkpoint's trained parameters whole (from the pieces of\n"
            "whatever plan saved them) to one safetensors file, for inference or other frameworks.",
            {{"--model", "SPEC", "mlp:784-1024-1024-10, gpt:layers=..,d_model=..,heads=..,seq=..,vocab=.. or llama:..,kv_heads=..,ffn=..[,rope_theta=..]", ""},
             {"--batch", "N", "batch size the graph is built for", "256", ints(1)},
             {"--output", "FILE", "where to write (also -o)", ""},
             {"--text", "", "write protobuf text format instead of binary", ""},
             {"--with-params", "", "embed initial parameter values (runs the initializers)", ""},
             {"--seed", "N", "seed for --with-params", "0", ints(0)},
             {"--checkpoint", "DIR", "a checkpoint (or a --checkpoint-dir: its newest) to export as safetensors", ""}});
  if (!args.parse(argc, argv)) return 0;
  if (!args.has("--output")) throw Error("tessel export: -o FILE is required (see --help)");
  if (args.has("--checkpoint")) {
    // The trained parameters, whole, gathered from the pieces of whatever plan wrote them.
    const runtime::Checkpoint ck(args.str("--checkpoint"));
    std::vector<std::vector<std::byte>> data;
    std::vector<runtime::safetensors::TensorView> views;
    for (const auto& t : ck.tensors()) {
      if (!t.parameter) continue;
      data.emplace_back(static_cast<size_t>(t.type.bytes()));
      ck.read(t.name, t.type, std::vector<int64_t>(t.type.shape.size(), 0), t.type.shape, data.back().data());
      views.push_back({t.name, t.type.dtype, t.type.shape, data.back().data()});
    }
    if (views.empty()) throw Error(ck.dir() + ": the checkpoint marks no tensor as a parameter");
    const std::string out = args.str("--output");
    const std::string tmp = out + ".partial";
    runtime::safetensors::write(tmp, views, {{"format", "pt"}, {"step", std::to_string(ck.state().step)},
                                             {"model", ck.state().model}});
    if (std::rename(tmp.c_str(), out.c_str()) != 0) throw Error(out + ": cannot rename " + tmp + " into place");
    std::cerr << "wrote the " << views.size() << " parameters of " << ck.dir() << " (step " << ck.state().step << ") to "
              << out << "\n";
    return 0;
  }
  if (!args.has("--model")) throw Error("tessel export: --model or --checkpoint is required (see --help)");
  models::Built b = models::from_spec(args.str("--model"), args.i64("--batch", 256), true);
  Graph& g = b.model->graph();
  g.verify();
  if (args.has("--with-params")) {
    runtime::ExecutorOptions eo;
    eo.seed = static_cast<uint64_t>(args.i64("--seed", 0));
    runtime::Executor ex(planner::one_device(g, {"loss"}, ""), eo);
    ex.initialize();
    ex.export_variables(g);
  }
  SaveOptions so;
  so.text = args.has("--text");
  // Always: constants' stored data (rotary tables) is part of the model. Variables have data
  // only after export_variables, i.e. with --with-params.
  so.with_data = true;
  save_graph(g, args.str("--output"), so);
  std::cerr << "wrote " << b.description << " (" << g.size() << " nodes) to " << args.str("--output") << "\n";
  return 0;
}

}  // namespace tessel::cli
