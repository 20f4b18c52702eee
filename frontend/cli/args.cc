#include "frontend/cli/args.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "graph/error.h"

namespace tessel::cli {

namespace {

std::string number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

// Options that were removed, and the ones that replace them.
struct Retired {
  const char* name;
  std::vector<const char*> replacements;
};
const std::vector<Retired>& retired() {
  static const std::vector<Retired> r{{"--schedule", {"--lr-schedule", "--pipeline-schedule"}}};
  return r;
}

}  // namespace

std::string Range::str() const {
  const bool low = std::isfinite(lo), high = std::isfinite(hi);
  if (low && high)
    return std::string("in ") + (lo_open ? "(" : "[") + number(lo) + ", " + number(hi) + (hi_open ? ")" : "]");
  if (low) return (lo_open ? "> " : ">= ") + number(lo);
  if (high) return (hi_open ? "< " : "<= ") + number(hi);
  return "any";
}

bool Range::contains(double v) const {
  return std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
}

Range ints(int64_t lo) { return Range{true, static_cast<double>(lo)}; }
Range ints(int64_t lo, int64_t hi) { return Range{true, static_cast<double>(lo), static_cast<double>(hi)}; }
Range positive() { return Range{false, 0, std::numeric_limits<double>::infinity(), true}; }
Range non_negative() { return Range{false, 0}; }
Range fraction_below_one() { return Range{false, 0, 1, false, true}; }
Range fraction_up_to_one() { return Range{false, 0, 1, true, false}; }

Args::Args(std::string command, std::string summary, std::vector<Flag> flags,
           std::vector<std::string> positional)
    : command_(std::move(command)), summary_(std::move(summary)), flags_(std::move(flags)),
      positional_names_(std::move(positional)) {
  flags_.push_back({"--help", "", "show this help and exit", ""});
}

std::string Args::help() const {
  std::string s = "usage: tessel " + command_;
  for (auto& p : positional_names_) s += " " + p;
  s += " [options]\n\n" + summary_ + "\n\noptions:\n";
  for (auto& f : flags_) {
    std::string left = "  " + f.name + (f.value.empty() ? "" : " " + f.value);
    if (left.size() < 28) left.resize(28, ' ');
    else left += "\n" + std::string(28, ' ');
    s += left + f.help;
    std::string notes = f.def.empty() ? "" : "default: " + f.def;
    if (f.range) notes += (notes.empty() ? "" : "; ") + f.range->str();
    if (!notes.empty()) s += " (" + notes + ")";
    s += "\n";
  }
  return s;
}

bool Args::parse(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << help();
      return false;
    }
    if (a.rfind("--", 0) == 0 || (a.size() == 2 && a[0] == '-' && a != "-")) {
      std::string name = a, value;
      bool inline_value = false;
      if (auto eq = a.find('='); eq != std::string::npos && a.rfind("--", 0) == 0) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        inline_value = true;
      }
      const Flag* f = nullptr;
      for (auto& x : flags_)
        if (x.name == name || (name == "-o" && x.name == "--output")) f = &x;
      if (!f)
        for (const Retired& r : retired()) {
          if (name != r.name) continue;
          std::vector<std::string> here;
          for (const char* rep : r.replacements)
            for (auto& x : flags_)
              if (x.name == rep) here.push_back(rep);
          if (here.size() == 1) throw Error("tessel " + command_ + ": " + name + " was renamed: use " + here[0]);
          if (here.size() > 1) {
            std::string m = "tessel " + command_ + ": " + name + " is ambiguous: use " + here[0];
            for (size_t k = 1; k < here.size(); ++k) m += (k + 1 == here.size() ? " or " : ", ") + here[k];
            throw Error(m);
          }
        }
      if (!f) throw Error("tessel " + command_ + ": unknown option '" + name + "' (see tessel " + command_ + " --help)");
      if (f->value.empty()) {
        if (inline_value) throw Error("tessel " + command_ + ": " + f->name + " takes no value");
        values_[f->name] = "1";
      } else {
        if (!inline_value) {
          if (i + 1 >= argc) throw Error("tessel " + command_ + ": " + f->name + " needs a value (" + f->value + ")");
          value = argv[++i];
        }
        check_range(*f, value);
        values_[f->name] = value;
      }
    } else {
      pos_.push_back(a);
    }
  }
  if (pos_.size() < positional_names_.size())
    throw Error("tessel " + command_ + ": missing " + positional_names_[pos_.size()] + " (see tessel " + command_ + " --help)");
  if (pos_.size() > positional_names_.size())
    throw Error("tessel " + command_ + ": unexpected argument '" + pos_[positional_names_.size()] + "'");
  return true;
}

void Args::check_range(const Flag& f, const std::string& s) const {
  if (!f.range) return;
  const Range& r = *f.range;
  const std::string at = "tessel " + command_ + ": " + f.name;
  double v = 0;
  if (r.integer) {
    int64_t n = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc() || p != s.data() + s.size())
      throw Error(at + " expects an integer " + r.str() + ", got '" + s + "'");
    v = static_cast<double>(n);
  } else {
    char* end = nullptr;
    v = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size())
      throw Error(at + " expects a number " + r.str() + ", got '" + s + "'");
    if (!std::isfinite(v)) throw Error(at + " expects a finite number " + r.str() + ", got '" + s + "'");
  }
  if (!r.contains(v)) throw Error(at + " must be " + r.str() + ", got " + s);
}

std::string Args::str(const std::string& name, const std::string& def) const {
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

int64_t Args::i64(const std::string& name, int64_t def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  int64_t v = 0;
  const std::string& s = it->second;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size())
    throw Error("tessel " + command_ + ": " + name + " expects an integer, got '" + s + "'");
  return v;
}

double Args::f64(const std::string& name, double def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  const std::string& s = it->second;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size())
    throw Error("tessel " + command_ + ": " + name + " expects a number, got '" + s + "'");
  return v;
}

}  // namespace tessel::cli
