// What a member of a collective calls, as engines compare it across members before any
// data moves (the Gloo and MPI engines), and the block packing engines use around libraries
// that move contiguous buffers only.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "graph/op_def.h"
#include "graph/shape.h"
#include "graph/tensor_ref.h"
#include "runtime/block_copy.h"
#include "runtime/communicator.h"

namespace tessel::runtime {

// What one member calls, as the members compare it before any data moves.
struct Call {
  Collective op;
  std::span<const TensorRef> tensors;  // the inputs
  int dim = -1, dim2 = -1;
  int reduce = -1;
  int64_t root = -1;

  uint64_t fingerprint() const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](uint64_t v) {
      for (int b = 0; b < 8; ++b) h = (h ^ ((v >> (8 * b)) & 0xFF)) * 1099511628211ull;
    };
    mix(static_cast<uint64_t>(op));
    mix(tensors.size());
    for (const TensorRef& t : tensors) {
      mix(static_cast<uint64_t>(t.dtype));
      mix(t.shape.size());
      for (int64_t d : t.shape) mix(static_cast<uint64_t>(d));
    }
    mix(static_cast<uint64_t>(dim)), mix(static_cast<uint64_t>(dim2)), mix(static_cast<uint64_t>(reduce));
    mix(static_cast<uint64_t>(root));
    return h;
  }
  // "all_reduce (sum) of f32[4,8], f32[8]", "all_gather along dim 1 of f32[2,3]"
  std::string str() const {
    std::string s(collective_name(op));
    if (reduce >= 0) s += std::string(" (") + std::string(reduce_op_name(static_cast<ReduceOp>(reduce))) + ")";
    if (dim >= 0) s += " along dim " + std::to_string(dim);
    if (dim2 >= 0) s += " into dim " + std::to_string(dim2);
    if (root >= 0) s += " from member " + std::to_string(root);
    if (!tensors.empty()) s += " of";
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (i == 4) {
        s += " and " + std::to_string(tensors.size() - 4) + " more";
        break;
      }
      s += (i ? ", " : " ") + std::string(dtype_name(tensors[i].dtype)) + shape_str(tensors[i].shape);
    }
    return s;
  }
};

// A tensor seen as [outer, dim, inner] around one of its dims.
struct Around {
  int64_t outer = 1, dim = 1, inner = 1;
};
inline Around around(std::span<const int64_t> shape, int d) {
  Around a;
  for (int i = 0; i < d; ++i) a.outer *= shape[i];
  a.dim = shape[d];
  for (size_t i = static_cast<size_t>(d) + 1; i < shape.size(); ++i) a.inner *= shape[i];
  return a;
}

// Moves k equal blocks along dim `d` between a tensor and k contiguous chunks: chunk j holds
// block j ([outer, dim / k, inner]). `pack` copies tensor -> chunks, otherwise chunks -> tensor.
inline void blocks(std::byte* tensor, std::byte* chunks, const Around& a, int k, size_t es, bool pack) {
  const int64_t part = a.dim / k * a.inner;  // elements of one block per outer index
  for (int j = 0; j < k; ++j)
    for (int64_t o = 0; o < a.outer; ++o) {
      std::byte* t = tensor + static_cast<size_t>(o * a.dim * a.inner + j * part) * es;
      std::byte* c = chunks + static_cast<size_t>((j * a.outer + o) * part) * es;
      if (pack) copy_bytes(c, t, static_cast<size_t>(part) * es);
      else copy_bytes(t, c, static_cast<size_t>(part) * es);
    }
}


// "[0,1,3]"
std::string ranks_str(std::span<const int64_t> ranks);

// Why a call is malformed for a group of k members, or "" when it is well formed: the
// checks an engine makes before anything moves (each message starts with the op).
std::string malformed_all_reduce(std::span<const TensorRef> in, std::span<const TensorRef> out);
std::string malformed_reduce_scatter(const TensorRef& in, const TensorRef& out, int dim, int64_t k);
std::string malformed_all_gather(const TensorRef& in, const TensorRef& out, int dim, int64_t k);
std::string malformed_all_to_all(const TensorRef& in, const TensorRef& out, int split_dim, int concat_dim, int64_t k);
std::string malformed_broadcast(const TensorRef& in, const TensorRef& out, int64_t root, int64_t k);
// Why `peer` is not another rank of a world of `size` seen from `rank` ("" if it is).
std::string malformed_peer(int64_t peer, int64_t rank, int64_t size, std::string_view op);

}  // namespace tessel::runtime
