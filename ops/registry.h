// The registry of every op tessel knows, filled on first use.
#pragma once

#include "graph/op_def.h"

namespace tessel::ops {

// Thread-safe; the registry is immutable once returned.
const OpRegistry& registry();

}  // namespace tessel::ops
