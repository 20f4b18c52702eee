#include "runtime/memory_plan.h"

#include <algorithm>
#include <numeric>

namespace tessel::runtime {

namespace {

int64_t rounded(int64_t bytes, int64_t alignment) {
  return std::max<int64_t>(alignment, (bytes + alignment - 1) / alignment * alignment);
}

// Places buffers in `order`, each at the smallest gap among the already placed buffers
// whose lifetimes overlap its own, or after the highest of them.
MemoryPlan place(std::span<const BufferLifetime> buffers, const std::vector<size_t>& order, int64_t alignment) {
  MemoryPlan plan;
  plan.offsets.assign(buffers.size(), 0);
  struct Placed {
    int64_t offset, end, first, last;
  };
  std::vector<Placed> placed;  // sorted by offset
  std::vector<const Placed*> around;
  for (size_t idx : order) {
    const BufferLifetime& b = buffers[idx];
    const int64_t size = rounded(b.bytes, alignment);
    around.clear();
    for (const Placed& p : placed)
      if (p.first <= b.last && b.first <= p.last) around.push_back(&p);
    int64_t best = -1, best_gap = 0, prev_end = 0;
    for (const Placed* p : around) {
      const int64_t gap = p->offset - prev_end;
      if (gap >= size && (best < 0 || gap < best_gap)) {
        best = prev_end;
        best_gap = gap;
      }
      prev_end = std::max(prev_end, p->end);
    }
    if (best < 0) best = prev_end;
    plan.offsets[idx] = best;
    plan.arena_bytes = std::max(plan.arena_bytes, best + size);
    Placed n{best, best + size, b.first, b.last};
    placed.insert(std::upper_bound(placed.begin(), placed.end(), n,
                                   [](const Placed& a, const Placed& c) { return a.offset < c.offset; }),
                  n);
  }
  return plan;
}

}  // namespace

MemoryPlan plan_memory(std::span<const BufferLifetime> buffers, int64_t alignment) {
  std::vector<size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), 0);
  // In order of first use: a buffer's neighbours are those it lives beside, so a dead
  // tenant's space goes to the next one written.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (buffers[a].first != buffers[b].first) return buffers[a].first < buffers[b].first;
    return buffers[a].bytes > buffers[b].bytes;
  });
  MemoryPlan by_time = place(buffers, order, alignment);
  // Largest first: the big buffers settle low and the small ones fill the gaps between
  // them, where placing by time leaves holes too small for what comes later.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (buffers[a].bytes != buffers[b].bytes) return buffers[a].bytes > buffers[b].bytes;
    return buffers[a].first < buffers[b].first;
  });
  MemoryPlan best = place(buffers, order, alignment);
  if (by_time.arena_bytes < best.arena_bytes) best = std::move(by_time);
  // Longest-lived first, and largest footprint (bytes x lifetime) first: the buffers that
  // constrain the most others placed before them.
  auto length = [&](size_t i) { return buffers[i].last - buffers[i].first + 1; };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (length(a) != length(b)) return length(a) > length(b);
    return buffers[a].bytes > buffers[b].bytes;
  });
  if (MemoryPlan p = place(buffers, order, alignment); p.arena_bytes < best.arena_bytes) best = std::move(p);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const double fa = static_cast<double>(buffers[a].bytes) * static_cast<double>(length(a));
    const double fb = static_cast<double>(buffers[b].bytes) * static_cast<double>(length(b));
    if (fa != fb) return fa > fb;
    return buffers[a].first < buffers[b].first;
  });
  if (MemoryPlan p = place(buffers, order, alignment); p.arena_bytes < best.arena_bytes) best = std::move(p);
  return best;
}

}  // namespace tessel::runtime
