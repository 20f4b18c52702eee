// Small text helpers every layer's reports share.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tessel {

// `s` as a JSON string literal, quotes included; control characters escaped.
std::string json_quote(std::string_view s);
// A JSON number with `digits` significant digits; null for NaN and infinities.
std::string json_number(double v, int digits = 9);
// v with an SI prefix and a unit, 3 significant digits: "1.86 MB", "2.45 GFLOP".
std::string si_units(double v, std::string_view unit);
// A byte count in binary units: "512.0 KiB", "3.5 MiB", "1.25 GiB".
std::string bytes_str(int64_t bytes);

}  // namespace tessel
