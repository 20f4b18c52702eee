#include "ops/kernel_util.h"

#include <bit>
#include <cmath>

namespace tessel::ops {

void unsupported_dtype(const Node& n, DType t) {
  throw Error(n.where() + ": the reference kernel does not support dtype " +
              std::string(dtype_name(t)));
}

uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

uint16_t f32_to_f16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (absx >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absx < 0x38800000u) {  // subnormal or zero in f16
    float a = std::bit_cast<float>(absx);
    uint32_t m = static_cast<uint32_t>(std::nearbyint(a * 0x1.0p24f));  // units of 2^-24
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t exp = ((absx >> 23) - 112) << 10;
  uint32_t mant = absx & 0x7fffffu;
  uint32_t h = exp | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // round to nearest even
  return static_cast<uint16_t>(sign | h);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    float v = static_cast<float>(mant) * 0x1.0p-24f;
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

Broadcast::Broadcast(std::span<const int64_t> out, std::span<const std::span<const int64_t>> ins) {
  const int R = static_cast<int>(out.size());
  const int K = static_cast<int>(ins.size());
  std::array<int64_t, kMaxRank> d{};
  std::array<std::array<int64_t, kMaxRank>, 3> st{};
  for (int k = 0; k < K; ++k) {
    const auto& s = ins[k];
    int off = R - static_cast<int>(s.size());
    int64_t stride = 1;
    for (int i = R - 1; i >= 0; --i) {
      int j = i - off;
      int64_t dim = j >= 0 ? s[j] : 1;
      st[k][i] = (dim == 1 && out[i] != 1) ? 0 : stride;
      stride *= dim;
    }
  }
  total = 1;
  for (int i = 0; i < R; ++i) {
    d[i] = out[i];
    total *= out[i];
  }
  // Drop size-1 dims, then merge neighbours that every input walks the same way.
  rank = 0;
  for (int i = 0; i < R; ++i) {
    if (d[i] == 1) continue;
    if (rank > 0) {
      bool mergeable = true;
      for (int k = 0; k < K; ++k)
        if (strides[k][rank - 1] != st[k][i] * d[i]) mergeable = false;
      if (mergeable) {
        dims[rank - 1] *= d[i];
        for (int k = 0; k < K; ++k) strides[k][rank - 1] = st[k][i];
        continue;
      }
    }
    dims[rank] = d[i];
    for (int k = 0; k < K; ++k) strides[k][rank] = st[k][i];
    ++rank;
  }
}

void Broadcast::offsets(int64_t i, std::array<int64_t, 3>& off) const {
  off = {0, 0, 0};
  for (int d = rank - 1; d >= 0 && i > 0; --d) {
    int64_t q = i / dims[d];
    int64_t r = i - q * dims[d];
    for (int k = 0; k < 3; ++k) off[k] += r * strides[k][d];
    i = q;
  }
}

Shape broadcast_shapes(std::span<const int64_t> a, std::span<const int64_t> b) {
  Dims d = broadcast_dims(a, b);
  return Shape(d.begin(), d.end());
}

Dims broadcast_dims(std::span<const int64_t> a, std::span<const int64_t> b) {
  size_t r = std::max(a.size(), b.size());
  Dims out;
  for (size_t i = 0; i < r; ++i) {
    int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (da != db && da != 1 && db != 1)
      throw Error("shapes " + shape_str(a) + " and " + shape_str(b) +
                  " do not broadcast (dim " + std::to_string(i) + ": " + std::to_string(da) +
                  " vs " + std::to_string(db) + ")");
    out.push_back(da == 1 ? db : da);
  }
  return out;
}

void copy_kernel(const Node&, std::span<const TensorRef> in, std::span<const TensorRef> out,
                 const KernelCtx&) {
  if (out[0].data != in[0].data && out[0].bytes() > 0)
    std::memcpy(out[0].data, in[0].data, static_cast<size_t>(out[0].bytes()));
}

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

double rand_normal(uint64_t seed, uint64_t index) {
  // Box-Muller from two independent uniforms of this element.
  double u1 = (static_cast<double>(rand_bits(seed, 2 * index) >> 11) + 1.0) * 0x1.0p-53;
  double u2 = rand_uniform(seed, 2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

uint64_t hash_name(std::string_view s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace tessel::ops
