#include "graph/attr.h"

#include <algorithm>
#include <sstream>

#include "graph/error.h"

namespace tessel {

std::string_view attr_type_name(AttrType t) {
  static constexpr std::string_view names[] = {"bool", "int", "float", "string", "ints", "floats"};
  return names[static_cast<int>(t)];
}

namespace {
std::string fmt_double(double v) {
  std::ostringstream os;
  os.precision(9);
  os << v;
  return os.str();
}
}  // namespace

std::string attr_value_str(const AttrValue& v) {
  switch (attr_type(v)) {
    case AttrType::boolean: return std::get<bool>(v) ? "true" : "false";
    case AttrType::i64: return std::to_string(std::get<int64_t>(v));
    case AttrType::f64: return fmt_double(std::get<double>(v));
    case AttrType::string: return "\"" + std::get<std::string>(v) + "\"";
    case AttrType::i64s: {
      std::string s = "[";
      for (auto x : std::get<std::vector<int64_t>>(v)) s += (s.size() > 1 ? "," : "") + std::to_string(x);
      return s + "]";
    }
    case AttrType::f64s: {
      std::string s = "[";
      for (auto x : std::get<std::vector<double>>(v)) s += (s.size() > 1 ? "," : "") + fmt_double(x);
      return s + "]";
    }
  }
  return "?";
}

Attrs::Attrs(std::initializer_list<std::pair<std::string, AttrValue>> init) {
  for (auto& [k, v] : init) set(k, v);
}

void Attrs::set(std::string_view name, AttrValue v) {
  auto it = std::lower_bound(items_.begin(), items_.end(), name,
                             [](const auto& p, std::string_view n) { return p.first < n; });
  if (it != items_.end() && it->first == name)
    it->second = std::move(v);
  else
    items_.insert(it, {std::string(name), std::move(v)});
}

const AttrValue* Attrs::find(std::string_view name) const {
  for (auto& [k, v] : items_)
    if (k == name) return &v;
  return nullptr;
}

template <class T>
const T& Attrs::get(std::string_view name, AttrType t) const {
  const AttrValue* v = find(name);
  if (!v) throw Error("missing attribute '" + std::string(name) + "'");
  if (attr_type(*v) != t)
    throw Error("attribute '" + std::string(name) + "' is " +
                std::string(attr_type_name(attr_type(*v))) + ", expected " +
                std::string(attr_type_name(t)));
  return std::get<T>(*v);
}

bool Attrs::get_bool(std::string_view n) const { return get<bool>(n, AttrType::boolean); }
int64_t Attrs::get_i64(std::string_view n) const { return get<int64_t>(n, AttrType::i64); }
double Attrs::get_f64(std::string_view n) const { return get<double>(n, AttrType::f64); }
const std::string& Attrs::get_str(std::string_view n) const {
  return get<std::string>(n, AttrType::string);
}
const std::vector<int64_t>& Attrs::get_i64s(std::string_view n) const {
  return get<std::vector<int64_t>>(n, AttrType::i64s);
}
const std::vector<double>& Attrs::get_f64s(std::string_view n) const {
  return get<std::vector<double>>(n, AttrType::f64s);
}
bool Attrs::get_bool_or(std::string_view n, bool d) const { return has(n) ? get_bool(n) : d; }
int64_t Attrs::get_i64_or(std::string_view n, int64_t d) const { return has(n) ? get_i64(n) : d; }
double Attrs::get_f64_or(std::string_view n, double d) const { return has(n) ? get_f64(n) : d; }
std::string Attrs::get_str_or(std::string_view n, std::string_view d) const {
  return has(n) ? get_str(n) : std::string(d);
}

std::string Attrs::str() const {
  std::string s = "{";
  for (auto& [k, v] : items_) s += (s.size() > 1 ? ", " : "") + k + "=" + attr_value_str(v);
  return s + "}";
}

}  // namespace tessel
