#include "runtime/block_copy.h"

#include <cstring>
#include <stdexcept>

#include "graph/shape.h"

namespace tessel::runtime {

void copy_block(const std::byte* src, std::span<const int64_t> ss, std::span<const int64_t> so, std::byte* dst,
                std::span<const int64_t> ds, std::span<const int64_t> doff, std::span<const int64_t> block, size_t es) {
  const int r = static_cast<int>(block.size());
  if (r == 0) {
    std::memcpy(dst, src, es);
    return;
  }
  const int64_t total = numel(block);
  if (total == 0) return;
  const int64_t run = block[r - 1];
  int64_t idx[32] = {};  // on the stack: a copy allocates nothing
  if (r > 32) throw std::length_error("copy_block: more than 32 dims");
  for (int64_t done = 0; done < total; done += run) {
    int64_t s = 0, d = 0;
    for (int i = 0; i < r; ++i) {
      s = s * ss[i] + idx[i] + so[i];
      d = d * ds[i] + idx[i] + doff[i];
    }
    std::memcpy(dst + static_cast<size_t>(d) * es, src + static_cast<size_t>(s) * es, static_cast<size_t>(run) * es);
    for (int i = r - 2; i >= 0; --i) {
      if (++idx[i] < block[i]) break;
      idx[i] = 0;
    }
  }
}

}  // namespace tessel::runtime
