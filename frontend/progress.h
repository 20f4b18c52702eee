// Progress for long work: a redrawn bar with rate and ETA on a terminal, plain lines at a
// modest rate otherwise (logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace tessel {

class Progress {
 public:
  // `total` units of work (0: unknown); lines go to `out`.
  Progress(std::ostream& out, bool terminal, int64_t total, std::string unit = "step");
  // Reports that `done` units are finished; `status` is extra text (loss, rate).
  void update(int64_t done, const std::string& status);
  void finish(const std::string& status);
  double elapsed_s() const;

 private:
  std::ostream& out_;
  bool terminal_;
  int64_t total_;
  std::string unit_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t last_line_done_ = -1;
  size_t last_width_ = 0;
};

std::string format_duration(double seconds);  // "1:05" or "1:02:03"

}  // namespace tessel
