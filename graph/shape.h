// Static shapes: a list of non-negative dims. Rank 0 is a scalar.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tessel {

using Shape = std::vector<int64_t>;

inline constexpr int kMaxRank = 8;
// Largest element count a tensor may declare (2^48): shapes beyond it are rejected when a
// graph is built or loaded, so a hostile file cannot make anyone allocate from it.
inline constexpr int64_t kMaxElements = int64_t{1} << 48;

// Product of dims; throws tessel::Error when negative dims or overflow past kMaxElements.
int64_t checked_numel(std::span<const int64_t> shape);
// Product of dims without checks, for shapes already verified.
inline int64_t numel(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
// "[256,1024]"
std::string shape_str(std::span<const int64_t> shape);
// Normalises a possibly negative axis against rank; throws on out of range.
int normalize_axis(int64_t axis, int rank);

}  // namespace tessel
