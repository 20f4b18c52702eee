#include "runtime/memory_plan.h"

#include <algorithm>
#include <numeric>

namespace tessel::runtime {

MemoryPlan plan_memory(std::span<const BufferLifetime> buffers, int64_t alignment) {
  MemoryPlan plan;
  plan.offsets.assign(buffers.size(), 0);
  std::vector<size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (buffers[a].first != buffers[b].first) return buffers[a].first < buffers[b].first;
    return buffers[a].bytes > buffers[b].bytes;
  });
  struct Live {
    int64_t offset, end, last;
  };
  std::vector<Live> live;  // sorted by offset
  for (size_t idx : order) {
    const BufferLifetime& b = buffers[idx];
    const int64_t size = std::max<int64_t>(alignment, (b.bytes + alignment - 1) / alignment * alignment);
    std::erase_if(live, [&](const Live& l) { return l.last < b.first; });
    // Smallest gap that fits; otherwise after the last live buffer.
    int64_t best = -1, best_gap = 0, prev_end = 0;
    for (const Live& l : live) {
      const int64_t gap = l.offset - prev_end;
      if (gap >= size && (best < 0 || gap < best_gap)) {
        best = prev_end;
        best_gap = gap;
      }
      prev_end = std::max(prev_end, l.end);
    }
    if (best < 0) best = prev_end;
    plan.offsets[idx] = best;
    plan.arena_bytes = std::max(plan.arena_bytes, best + size);
    Live n{best, best + size, b.last};
    live.insert(std::upper_bound(live.begin(), live.end(), n,
                                 [](const Live& a, const Live& c) { return a.offset < c.offset; }),
                n);
  }
  return plan;
}

}  // namespace tessel::runtime
