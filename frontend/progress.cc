#include "frontend/progress.h"

#include <cmath>
#include <cstdio>

namespace tessel {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60), (long long)(t % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

Progress::Progress(std::ostream& out, bool terminal, int64_t total, std::string unit)
    : out_(out), terminal_(terminal), total_(total), unit_(std::move(unit)),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done, const std::string& status) {
  auto now = std::chrono::steady_clock::now();
  const double el = elapsed_s();
  const double eta = done > 0 && total_ > 0 ? el / done * (total_ - done) : NAN;
  if (terminal_) {
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const int width = 24;
    int filled = total_ > 0 ? static_cast<int>(width * done / total_) : 0;
    std::string bar = "[" + std::string(filled, '#') + std::string(width - filled, '.') + "]";
    std::string line = bar + " " + std::to_string(done) + "/" + std::to_string(total_) + " " + status +
                       "  ETA " + format_duration(eta);
    std::string pad = line.size() < last_width_ ? std::string(last_width_ - line.size(), ' ') : "";
    last_width_ = line.size();
    out_ << "\r" << line << pad << std::flush;
    return;
  }
  // Plain lines: about every tenth of the run, and at least every 10 s.
  const int64_t every = total_ > 0 ? std::max<int64_t>(1, total_ / 10) : 100;
  if (done != total_ && done - last_line_done_ < every && now - last_draw_ < std::chrono::seconds(10)) return;
  last_draw_ = now;
  last_line_done_ = done;
  out_ << unit_ << " " << done << "/" << total_ << " " << status << " elapsed " << format_duration(el)
       << " ETA " << format_duration(eta) << "\n" << std::flush;
}

void Progress::finish(const std::string& status) {
  if (terminal_) out_ << "\r" << std::string(last_width_, ' ') << "\r";
  out_ << status << "\n" << std::flush;
}

}  // namespace tessel
