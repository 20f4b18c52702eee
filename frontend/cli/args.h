// A small command-line parser whose --help is generated from the same table that parsing
// uses, so the help cannot drift from what is accepted.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tessel::cli {

struct Flag {
  std::string name;       // "--batch"
  std::string value;      // value placeholder, e.g. "N"; empty for a switch
  std::string help;
  std::string def;        // default shown in help; empty: none
};

class Args {
 public:
  Args(std::string command, std::string summary, std::vector<Flag> flags,
       std::vector<std::string> positional = {});
  // Throws tessel::Error for unknown flags, missing values or missing positionals.
  // Returns false when --help was given (help already printed to stdout).
  bool parse(int argc, char** argv);

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string str(const std::string& name, const std::string& def = "") const;
  int64_t i64(const std::string& name, int64_t def) const;
  double f64(const std::string& name, double def) const;
  const std::vector<std::string>& positional() const { return pos_; }
  std::string help() const;

 private:
  std::string command_, summary_;
  std::vector<Flag> flags_;
  std::vector<std::string> positional_names_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> pos_;
};

}  // namespace tessel::cli
