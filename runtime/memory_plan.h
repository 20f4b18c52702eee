// Static memory planning: buffers with known lifetimes get offsets in one arena, reusing
// space whose previous tenant is dead. Computed once before the first step.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace tessel::runtime {

struct BufferLifetime {
  int64_t bytes = 0;
  int64_t first = 0;  // first time step the buffer is written
  int64_t last = 0;   // last time step it is read (inclusive)
};

struct MemoryPlan {
  std::vector<int64_t> offsets;  // per buffer, aligned
  int64_t arena_bytes = 0;       // high-water mark
};

// Greedy best-fit over offsets, in order of first use and largest first; the smaller arena
// of the two.
// Buffers whose lifetimes overlap never share bytes.
MemoryPlan plan_memory(std::span<const BufferLifetime> buffers, int64_t alignment = 64);

}  // namespace tessel::runtime
