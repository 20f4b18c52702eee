// dtype, shape, origin and type helpers.
#include <array>
#include <filesystem>
#include <sstream>

#include "graph/dtype.h"
#include "graph/error.h"
#include "graph/origin.h"
#include "graph/shape.h"
#include "graph/tensor_ref.h"
#include "graph/types.h"

namespace tessel {

namespace {
constexpr std::array<std::string_view, kNumDTypes> kDTypeNames = {"f32", "f64", "bf16", "f16",
                                                                  "i32", "i64", "bool"};
constexpr std::array<size_t, kNumDTypes> kDTypeSizes = {4, 8, 2, 2, 4, 8, 1};
static_assert(static_cast<int>(DType::boolean) + 1 == kNumDTypes, "dtype tables out of step");
}  // namespace

size_t dtype_size(DType t) { return kDTypeSizes.at(static_cast<size_t>(t)); }
std::string_view dtype_name(DType t) { return kDTypeNames.at(static_cast<size_t>(t)); }
std::optional<DType> parse_dtype(std::string_view name) {
  for (int i = 0; i < kNumDTypes; ++i)
    if (kDTypeNames[i] == name) return static_cast<DType>(i);
  return std::nullopt;
}

int64_t checked_numel(std::span<const int64_t> shape) {
  if (shape.size() > kMaxRank)
    throw Error("rank " + std::to_string(shape.size()) + " exceeds the maximum of " +
                std::to_string(kMaxRank));
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("negative dimension in shape " + shape_str(shape));
    if (d != 0 && n > kMaxElements / d)
      throw Error("shape " + shape_str(shape) + " has more than 2^48 elements");
    n *= d;
  }
  // A zero dim makes the product 0 even when other dims are absurd; still refuse those.
  for (int64_t d : shape)
    if (d > kMaxElements) throw Error("shape " + shape_str(shape) + " has a dimension over 2^48");
  return n;
}

std::string shape_str(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

int normalize_axis(int64_t axis, int rank) {
  int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank)
    throw Error("axis " + std::to_string(axis) + " is out of range for rank " +
                std::to_string(rank));
  return static_cast<int>(a);
}

std::string TensorType::str() const { return std::string(dtype_name(dtype)) + shape_str(shape); }

int64_t TensorRef::bytes() const { return numel * static_cast<int64_t>(dtype_size(dtype)); }

std::string Origin::str() const {
  if (file.empty()) return "<unknown>";
  std::string base = std::filesystem::path(file).filename().string();
  if (line == 0) return base;
  return base + ":" + std::to_string(line);
}

}  // namespace tessel
