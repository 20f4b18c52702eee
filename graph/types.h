// Values and their static types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "graph/dtype.h"
#include "graph/shape.h"

namespace tessel {

struct TensorType {
  DType dtype = DType::f32;
  Shape shape;

  int rank() const { return static_cast<int>(shape.size()); }
  int64_t numel() const { return tessel::numel(shape); }
  int64_t bytes() const { return numel() * static_cast<int64_t>(dtype_size(dtype)); }
  std::string str() const;  // "f32[256,1024]"
  bool operator==(const TensorType&) const = default;
};

// One output of one node.
struct Value {
  int32_t node = -1;
  int32_t index = 0;

  bool valid() const { return node >= 0; }
  bool operator==(const Value&) const = default;
};

struct ValueHash {
  size_t operator()(const Value& v) const {
    return std::hash<uint64_t>()((uint64_t(uint32_t(v.node)) << 32) | uint32_t(v.index));
  }
};

}  // namespace tessel
