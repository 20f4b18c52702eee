// The plan pins shared by `tessel plan`, `tessel train` and `tessel verify`: one table for
// parsing and --help.
#pragma once

#include <string_view>
#include <vector>

#include "frontend/cli/args.h"
#include "planner/search.h"

namespace tessel::cli {

std::vector<Flag> pin_flags();
// `flags` with the pin flags inserted after its first `at` entries.
std::vector<Flag> with_pin_flags(std::vector<Flag> flags, size_t at);
// Throws tessel::Error naming `command` for a bad value.
planner::Pins parse_pins(const Args& args, std::string_view command);
bool any_pin(const planner::Pins& p);

}  // namespace tessel::cli
