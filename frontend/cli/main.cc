// The tessel command line: train, inspect, export.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>

#include "frontend/cli/args.h"
#include "frontend/cli/commands.h"
#include "graph/error.h"

namespace {

const char* kUsage =
    "usage: tessel COMMAND [options]\n"
    "\n"
    "tessel trains neural networks written as static dataflow graphs.\n"
    "\n"
    "commands:\n"
    "  train     train a model (DSL builder spec or .tsg file) on a dataset\n"
    "  inspect   show a graph file's ops, parameters, shapes and FLOPs per step\n"
    "  export    write a DSL model to a .tsg graph file\n"
    "  plan      plan parallel training of a model on a cluster (search, report, trace)\n"
    "  verify    run a plan on simulated devices and compare it with one device\n"
    "  launch    start a job's ranks, one process each (tessel launch --nproc N -- tessel train ...)\n"
    "  calibrate measure this host (products, bandwidth, dispatch, all-reduce) for the planner's local:N\n"
    "\n"
    "Run 'tessel COMMAND --help' for a command's options.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  if (cmd == "--version") {
    std::cout << "tessel 0.1.0\n";
    return 0;
  }
  try {
    using Fn = int (*)(int, char**);
    static const std::map<std::string, Fn> commands = {
        {"train", tessel::cli::cmd_train},
        {"inspect", tessel::cli::cmd_inspect},
        {"export", tessel::cli::cmd_export},
        {"plan", tessel::cli::cmd_plan},
        {"verify", tessel::cli::cmd_verify},
        {"launch", tessel::cli::cmd_launch},
        {"calibrate", tessel::cli::cmd_calibrate},
    };
    auto it = commands.find(cmd);
    if (it == commands.end()) {
      std::cerr << "tessel: unknown command '" << cmd << "'\n\n" << kUsage;
      return 2;
    }
    return it->second(argc - 2, argv + 2);
  } catch (const tessel::Error& e) {
    // Messages may already name the command ("tessel train: ..."): say it once.
    std::string m = e.what();
    const std::string prefix = "tessel " + cmd + ": ";
    if (m.rfind(prefix, 0) == 0) m.erase(0, prefix.size());
    std::cerr << prefix << "error: " << m << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "tessel " << cmd << ": internal error: " << e.what() << "\n";
    return 3;
  }
}
