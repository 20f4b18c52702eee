// `tessel verify`'s command line as values. The CLI and the randomized equivalence search
// (tests/runtime/equivalence_fuzz_test.cc) both go through it, so the command line a search
// case prints runs exactly what the case ran.
#pragma once

#include <optional>
#include <string>

#include "frontend/distributed.h"
#include "planner/search.h"

namespace tessel::cli {

struct VerifyCommand {
  VerifyOptions options;
  planner::Pins pins;
  std::string splits;  // --split, resolved against the training graph
  int64_t devices = 1;
  bool devices_given = false, batch_given = false;
  std::string plan_file;  // --plan; empty: plan under the pins
  std::string format = "text";
  int64_t rank = 0;  // under a launcher, this process's rank (rank 0 prints)
  // The plan to check: the --plan file's configuration (options.batch becomes its batch), or
  // the planner's under the pins. Throws tessel::Error saying why when there is none.
  DevicePlan plan();
};

// argv holds the options after `tessel verify`. Throws tessel::Error for a bad option;
// nullopt after --help (printed).
std::optional<VerifyCommand> parse_verify(int argc, char** argv);

}  // namespace tessel::cli
