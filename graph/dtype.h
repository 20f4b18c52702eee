// Element types of tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tessel {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, i64, boolean };
inline constexpr int kNumDTypes = 7;

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);
std::optional<DType> parse_dtype(std::string_view name);
inline bool is_floating(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16;
}
inline bool is_integral(DType t) { return t == DType::i32 || t == DType::i64; }

}  // namespace tessel
