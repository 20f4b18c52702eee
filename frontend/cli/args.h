// A small command-line parser whose --help is generated from the same table that parsing
// uses, so the help cannot drift from what is accepted.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tessel::cli {

// The values a numeric option accepts: integers or finite reals between lo and hi, each end
// included unless marked open. Every option with a range is checked when the command line
// is parsed, so no command can forget one.
struct Range {
  bool integer = true;
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;
  std::string str() const;  // ">= 1", "> 0", "in [0, 1)", "in [0, 3]"
  bool contains(double v) const;
};
// Integers >= lo, or in [lo, hi].
Range ints(int64_t lo);
Range ints(int64_t lo, int64_t hi);
// Reals > 0, >= 0, and in [lo, hi) / (lo, hi].
Range positive();
Range non_negative();
Range fraction_below_one();  // [0, 1): momentum, betas
Range fraction_up_to_one();  // (0, 1]

struct Flag {
  std::string name;       // "--batch"
  std::string value;      // value placeholder, e.g. "N"; empty for a switch
  std::string help;
  std::string def;        // default shown in help; empty: none
  std::optional<Range> range = std::nullopt;  // numeric options: the values accepted
};

class Args {
 public:
  Args(std::string command, std::string summary, std::vector<Flag> flags,
       std::vector<std::string> positional = {});
  // Throws tessel::Error for unknown flags, missing values, numeric values outside their
  // range or missing positionals. Returns false when --help was given (help already
  // printed to stdout).
  bool parse(int argc, char** argv);

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string str(const std::string& name, const std::string& def = "") const;
  int64_t i64(const std::string& name, int64_t def) const;
  double f64(const std::string& name, double def) const;
  const std::vector<std::string>& positional() const { return pos_; }
  std::string help() const;

 private:
  void check_range(const Flag& f, const std::string& value) const;

  std::string command_, summary_;
  std::vector<Flag> flags_;
  std::vector<std::string> positional_names_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> pos_;
};

}  // namespace tessel::cli
