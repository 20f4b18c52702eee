#include "frontend/cli/args.h"

#include <charconv>
#include <cstdio>
#include <iostream>

#include "graph/error.h"

namespace tessel::cli {

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
    if (!f.def.empty()) s += " (default: " + f.def + ")";
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
      if (!f) throw Error("tessel " + command_ + ": unknown option '" + name + "' (see tessel " + command_ + " --help)");
      if (f->value.empty()) {
        if (inline_value) throw Error("tessel " + command_ + ": " + f->name + " takes no value");
        values_[f->name] = "1";
      } else {
        if (!inline_value) {
          if (i + 1 >= argc) throw Error("tessel " + command_ + ": " + f->name + " needs a value (" + f->value + ")");
          value = argv[++i];
        }
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
