// Row-major block copies between tensors of different shapes: a shard into or out of the
// whole tensor, one member's slice of a collective.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace tessel::runtime {

// memcpy that takes empty tensors (whose data may be null: memcpy's arguments may not be).
inline void copy_bytes(void* dst, const void* src, size_t n) {
  if (n) std::memcpy(dst, src, n);
}

// Copies the block of shape `block` at offset `src_off` of src (shape src_shape) to offset
// `dst_off` of dst (shape dst_shape); elem bytes per element.
void copy_block(const std::byte* src, std::span<const int64_t> src_shape, std::span<const int64_t> src_off,
                std::byte* dst, std::span<const int64_t> dst_shape, std::span<const int64_t> dst_off,
                std::span<const int64_t> block, size_t elem);

}  // namespace tessel::runtime
