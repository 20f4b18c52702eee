// Helpers for tests that run the tessel binary.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <system_error>
#include <vector>

namespace tessel::testing {

struct RunResult {
  int status = -1;   // exit status
  std::string out;   // stdout
  std::string err;   // stderr
};

// A fresh directory under the system's temporary directory, removed with everything in it when
// the test program exits.
inline std::string temp_dir() {
  struct Made {
    std::vector<std::string> dirs;
    ~Made() {
      std::error_code ec;
      for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
    }
  };
  static Made made;
  std::string t = (std::filesystem::temp_directory_path() / "tessel_test_XXXXXX").string();
  if (!mkdtemp(t.data())) std::abort();
  made.dirs.push_back(t);
  return t;
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Runs `PREFIX ARGS` (PREFIX: the tessel binary, or a launcher's command line ending with
// it) with stdout and stderr captured.
inline RunResult run_cli_as(const std::string& prefix, const std::string& args) {
  static const std::string dir = temp_dir();
  const std::string out = dir + "/stdout", err = dir + "/stderr";
  std::string cmd = prefix + " " + args + " >" + out + " 2>" + err;
  int rc = std::system(cmd.c_str());
  RunResult r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// Runs `tessel ARGS` with stdout and stderr captured.
inline RunResult run_cli(const std::string& args) { return run_cli_as(TESSEL_CLI, args); }

// The number after "key": in a JSON line (NaN when absent or null).
inline double json_value(const std::string& json, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\":(-?[0-9.eE+-]+)");
  if (!std::regex_search(json, m, re)) return NAN;
  return std::stod(m[1]);
}

// The last non-empty line.
inline std::string last_line(const std::string& s) {
  size_t end = s.find_last_not_of('\n');
  if (end == std::string::npos) return "";
  size_t start = s.rfind('\n', end);
  return s.substr(start == std::string::npos ? 0 : start + 1, end - (start == std::string::npos ? 0 : start + 1) + 1);
}

}  // namespace tessel::testing
