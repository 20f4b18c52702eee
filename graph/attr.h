// Typed node attributes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace tessel {

enum class AttrType : uint8_t { boolean, i64, f64, string, i64s, f64s };
using AttrValue =
    std::variant<bool, int64_t, double, std::string, std::vector<int64_t>, std::vector<double>>;
std::string_view attr_type_name(AttrType t);
inline AttrType attr_type(const AttrValue& v) { return static_cast<AttrType>(v.index()); }
std::string attr_value_str(const AttrValue& v);

// A small sorted map from name to value. Lookups by name are linear over a handful of
// entries; kernels read attributes once per step at most.
class Attrs {
 public:
  Attrs() = default;
  Attrs(std::initializer_list<std::pair<std::string, AttrValue>> init);

  void set(std::string_view name, AttrValue v);
  bool has(std::string_view name) const { return find(name) != nullptr; }
  const AttrValue* find(std::string_view name) const;

  // Typed getters throw tessel::Error naming the attribute when it is missing or of
  // another type; the *_or forms return a default when it is missing.
  bool get_bool(std::string_view name) const;
  int64_t get_i64(std::string_view name) const;
  double get_f64(std::string_view name) const;
  const std::string& get_str(std::string_view name) const;
  const std::vector<int64_t>& get_i64s(std::string_view name) const;
  const std::vector<double>& get_f64s(std::string_view name) const;
  bool get_bool_or(std::string_view name, bool def) const;
  int64_t get_i64_or(std::string_view name, int64_t def) const;
  double get_f64_or(std::string_view name, double def) const;
  std::string get_str_or(std::string_view name, std::string_view def) const;

  const std::vector<std::pair<std::string, AttrValue>>& items() const { return items_; }
  bool operator==(const Attrs&) const = default;
  std::string str() const;  // "{axis=1, keepdims=true}"

 private:
  template <class T>
  const T& get(std::string_view name, AttrType t) const;
  std::vector<std::pair<std::string, AttrValue>> items_;  // sorted by name
};

}  // namespace tessel
