#include "frontend/cli/pins.h"

#include <algorithm>
#include <cstdlib>

#include "graph/error.h"

namespace tessel::cli {

std::vector<Flag> pin_flags() {
  return {
      {"--dp", "N", "pin data-parallel replicas", "", ints(1)},
      {"--tp", "N", "pin tensor-parallel degree", "", ints(1)},
      {"--pp", "N", "pin pipeline stages", "", ints(1)},
      {"--zero", "N", "pin ZeRO stage", "", ints(0, 3)},
      {"--microbatches", "N", "pin microbatches per step and replica", "", ints(1)},
      {"--stage-layers", "N,N,...", "pin the layers of each pipeline stage, in the order the stage report lists "
                                    "them (embedding, blocks, final norm, loss); pins --pp to their count", ""},
      {"--pipeline-schedule", "NAME", "pipeline schedule: 1f1b or gpipe", "1f1b"},
      {"--recompute", "WHAT", "pin activation recomputation: none, full (rerun each layer's forward) or selective (rerun only the attention core)", ""},
      {"--sp", "", "pin sequence parallelism on: norm, dropout and residual regions split along the sequence over tp "
                   "(default: the search decides when tp > 1)", ""},
      {"--no-sp", "", "pin sequence parallelism off", ""},
      {"--split", "PATTERN=DIM,...", "pin tensor-parallel splits of parameters: a whole name, `*` matching any run "
                                     "of characters, and the dim tp splits, or none to keep it whole "
                                     "(\"*/attn/proj/weight=0,wpe/weight=none\"); the first pattern a parameter "
                                     "matches applies, the search chooses the rest", ""},
  };
}

std::vector<Flag> with_pin_flags(std::vector<Flag> flags, size_t at) {
  const std::vector<Flag> pins = pin_flags();
  flags.insert(flags.begin() + static_cast<std::ptrdiff_t>(std::min(at, flags.size())), pins.begin(), pins.end());
  return flags;
}

planner::Pins parse_pins(const Args& args, std::string_view command) {
  const std::string cmd = "tessel " + std::string(command) + ": ";
  // The ranges in pin_flags() were checked by Args::parse.
  auto opt = [&](const std::string& name) -> std::optional<int64_t> {
    if (!args.has(name)) return std::nullopt;
    return args.i64(name, 0);
  };
  planner::Pins pins;
  pins.dp = opt("--dp");
  pins.tp = opt("--tp");
  pins.pp = opt("--pp");
  pins.zero = opt("--zero");
  pins.microbatches = opt("--microbatches");
  if (args.has("--pipeline-schedule")) {
    const std::string sched = args.str("--pipeline-schedule");
    if (sched != "1f1b" && sched != "gpipe")
      throw Error(cmd + "--pipeline-schedule must be 1f1b or gpipe, got '" + sched + "'");
    pins.schedule = sched == "gpipe" ? planner::Schedule::gpipe : planner::Schedule::one_f_one_b;
  }
  if (args.has("--recompute")) {
    const auto rc = planner::recompute_from_name(args.str("--recompute"));
    if (!rc) throw Error(cmd + "--recompute must be none, full or selective");
    pins.recompute = *rc;
  }
  if (args.has("--stage-layers")) {
    const std::string list = args.str("--stage-layers");
    size_t at = 0;
    while (at <= list.size()) {
      const size_t comma = std::min(list.find(',', at), list.size());
      const std::string item = list.substr(at, comma - at);
      char* end = nullptr;
      const long long v = std::strtoll(item.c_str(), &end, 10);
      if (item.empty() || *end != 0 || v < 1)
        throw Error(cmd + "--stage-layers wants positive layer counts separated by commas, got '" + list + "'");
      pins.stage_layers.push_back(v);
      at = comma + 1;
    }
    const int64_t n = static_cast<int64_t>(pins.stage_layers.size());
    if (pins.pp && *pins.pp != n)
      throw Error(cmd + "--stage-layers gives " + std::to_string(n) + " stages but --pp is " + std::to_string(*pins.pp));
    pins.pp = n;
  }
  if (args.has("--sp") && args.has("--no-sp")) throw Error(cmd + "--sp and --no-sp contradict each other");
  if (args.has("--sp")) pins.sequence_parallel = true;
  if (args.has("--no-sp")) pins.sequence_parallel = false;
  return pins;
}

bool any_pin(const planner::Pins& p) {
  return p.dp || p.tp || p.pp || p.zero || p.microbatches || p.schedule || p.recompute || p.sequence_parallel ||
         !p.stage_layers.empty();
}

}  // namespace tessel::cli
