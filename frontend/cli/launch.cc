// tessel launch: starts the local ranks of a job, one process each, and supervises them.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "frontend/cli/args.h"
#include "frontend/cli/commands.h"
#include "graph/error.h"
#include "runtime/tcp_store.h"

namespace tessel::cli {

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<int> g_signal{0};
void on_signal(int s) { g_signal = s; }

std::string random_token() {
  unsigned char b[16] = {};
  std::ifstream f("/dev/urandom", std::ios::binary);
  f.read(reinterpret_cast<char*>(b), sizeof b);
  if (!f) throw Error("tessel launch: cannot read /dev/urandom for the job token");
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) s += hex[c >> 4], s += hex[c & 15];
  return s;
}

struct Rank {
  int64_t rank = 0;
  pid_t pid = -1;
  int out = -1, err = -1;            // read ends of its stdout and stderr
  std::string out_part, err_part;    // an unfinished line of each
  std::string last_error;            // its last stderr line that says error, else its last one
  bool running = true, stopped_by_us = false;
  int status = 0;
  std::unique_ptr<std::ofstream> log;
};

// Forwards complete lines of `part` + `data` with the rank's prefix; keeps the rest.
void forward(Rank& r, std::string& part, const char* data, size_t n, bool is_err, bool flush) {
  part.append(data, n);
  size_t start = 0;
  for (;;) {
    size_t nl = part.find('\n', start);
    if (nl == std::string::npos) {
      if (!flush || start >= part.size()) break;
      nl = part.size();
    }
    const std::string line = part.substr(start, nl - start);
    const std::string out = "[rank " + std::to_string(r.rank) + "] " + line + "\n";
    std::fwrite(out.data(), 1, out.size(), is_err ? stderr : stdout);
    if (r.log) *r.log << line << std::endl;  // flushed: a log is read while the job runs
    if (is_err && !line.empty() && (line.find("error") != std::string::npos || r.last_error.find("error") == std::string::npos))
      r.last_error = line;
    start = nl + 1;
  }
  part.erase(0, std::min(start, part.size()));
  std::fflush(is_err ? stderr : stdout);
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "stopped (status " + std::to_string(status) + ")";
}

bool failed(int status) { return !(WIFEXITED(status) && WEXITSTATUS(status) == 0); }

}  // namespace

int cmd_launch(int argc, char** argv) {
  int split = argc;
  for (int i = 0; i < argc; ++i)
    if (std::strcmp(argv[i], "--") == 0) {
      split = i;
      break;
    }
  Args args("launch",
            "Start the local ranks of a job, one process each: tessel launch --nproc N -- tessel train ...\n"
            "Each rank gets its identity (TESSEL_RANK, TESSEL_WORLD_SIZE, TESSEL_LOCAL_RANK, ...), the\n"
            "address of the job's store (served by this launcher on node 0) and the job's token, and a\n"
            "share of the host's cores (TESSEL_THREADS_PER_RANK and OMP_NUM_THREADS, unless set). Their\n"
            "output is streamed with a [rank i] prefix. When a rank fails, the others are stopped and the\n"
            "launcher exits non-zero naming the rank and its error. Several hosts: run one launcher per\n"
            "host with the same --nnodes, --master and --token and each its --node-rank.",
            {
                {"--nproc", "N", "ranks on this host", "", ints(1, 1024)},
                {"--nnodes", "M", "hosts in the job", "1", ints(1, 4096)},
                {"--node-rank", "I", "this host's index (0 serves the store)", "0", ints(0)},
                {"--master", "HOST:PORT", "where node 0's launcher serves the store (all hosts give the same)",
                 "127.0.0.1, a free port (one host)"},
                {"--token", "T", "the job's token, the same on every host", "random (one host), TESSEL_JOB_TOKEN"},
                {"--grace", "S", "seconds the other ranks get to stop on their own after one fails, before SIGTERM (then SIGKILL 2 s later)", "5", positive()},
                {"--log-dir", "DIR", "also write each rank's output to DIR/rank-I.log", ""},
                {"--max-restarts", "K", "when a rank fails, stop the job and start it again, up to K times (one host): each "
                                        "rank gets TESSEL_RESTART=k, and `tessel train --checkpoint-dir D` then resumes "
                                        "from D's newest checkpoint", "0", ints(0)},
            });
  if (!args.parse(split, argv)) return 0;
  if (!args.has("--nproc")) throw Error("tessel launch: --nproc is required (see --help)");
  if (split + 1 >= argc) throw Error("tessel launch: give the command to run after --, e.g. -- tessel train ...");
  const int64_t nproc = args.i64("--nproc", 1), nnodes = args.i64("--nnodes", 1), node = args.i64("--node-rank", 0);
  if (node >= nnodes)
    throw Error("tessel launch: --node-rank " + std::to_string(node) + " is not below --nnodes " + std::to_string(nnodes));
  const int64_t world = nproc * nnodes;
  std::string host = "127.0.0.1";
  int port = 0;
  if (args.has("--master")) std::tie(host, port) = runtime::parse_host_port(args.str("--master"), "tessel launch --master");
  else if (nnodes > 1) throw Error("tessel launch: several hosts need --master HOST:PORT (node 0's address and a free port)");
  std::string token = args.str("--token");
  if (token.empty() && std::getenv("TESSEL_JOB_TOKEN")) token = std::getenv("TESSEL_JOB_TOKEN");
  if (token.empty()) {
    if (nnodes > 1) throw Error("tessel launch: several hosts need the same --token T on each (or TESSEL_JOB_TOKEN)");
    token = random_token();
  }
  const double grace = args.f64("--grace", 5);
  const std::string log_dir = args.str("--log-dir");
  const int64_t max_restarts = args.i64("--max-restarts", 0);
  if (max_restarts > 0 && nnodes > 1) throw Error("tessel launch: --max-restarts is for one host (--nnodes 1) so far");
  const int master_port = port;

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  for (int64_t attempt = 0;; ++attempt) {
    port = master_port;
    std::unique_ptr<runtime::TcpStoreServer> store;
    if (node == 0) {
      store = std::make_unique<runtime::TcpStoreServer>(host, port, token);
      port = store->port();
    }
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const std::string threads = std::to_string(std::max<int64_t>(1, cores / nproc));

    std::vector<Rank> ranks(static_cast<size_t>(nproc));
    for (int64_t i = 0; i < nproc; ++i) {
      Rank& r = ranks[static_cast<size_t>(i)];
      r.rank = node * nproc + i;
      if (!log_dir.empty()) {
        r.log = std::make_unique<std::ofstream>(log_dir + "/rank-" + std::to_string(r.rank) + ".log",
                                                attempt ? std::ios::app : std::ios::trunc);  // a restart adds to it
        if (!*r.log) throw Error("tessel launch: cannot write " + log_dir + "/rank-" + std::to_string(r.rank) + ".log");
      }
      // The rank's environment, made before fork: the child of a process with threads (the
      // store's) may only call async-signal-safe functions until it execs.
      std::vector<std::string> env;
      auto put = [&](const std::string& k, const std::string& v, bool overwrite = true) {
        if (!overwrite && std::getenv(k.c_str())) return;
        env.push_back(k + "=" + v);
      };
      put("TESSEL_RANK", std::to_string(r.rank));
      put("TESSEL_WORLD_SIZE", std::to_string(world));
      put("TESSEL_LOCAL_RANK", std::to_string(i));
      put("TESSEL_LOCAL_WORLD_SIZE", std::to_string(nproc));
      put("TESSEL_STORE", "tcp:" + host + ":" + std::to_string(port));
      put("TESSEL_STORE_SERVED", "1");
      put("TESSEL_JOB_TOKEN", token);
      if (attempt > 0) put("TESSEL_RESTART", std::to_string(attempt));
      put("TESSEL_THREADS_PER_RANK", threads, false);
      put("OMP_NUM_THREADS", threads, false);
      for (char** e = environ; *e; ++e) {
        const std::string kv = *e;
        const std::string key = kv.substr(0, kv.find('='));
        bool replaced = false;
        for (const std::string& mine : env) replaced |= mine.compare(0, key.size() + 1, key + "=") == 0;
        if (!replaced) env.push_back(kv);
      }
      std::vector<char*> envp;
      for (std::string& kv : env) envp.push_back(kv.data());
      envp.push_back(nullptr);
      const std::string cannot = std::string("tessel launch: cannot run ") + argv[split + 1] + "\n";
      int out[2], err[2];
      if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
        throw Error(std::string("tessel launch: pipe: ") + std::strerror(errno));
      const pid_t pid = ::fork();
      if (pid < 0) throw Error(std::string("tessel launch: fork: ") + std::strerror(errno));
      if (pid == 0) {
        // The rank: its own process group (stopped as a whole), killed if the launcher dies.
        ::setpgid(0, 0);
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        ::dup2(out[1], STDOUT_FILENO);
        ::dup2(err[1], STDERR_FILENO);
        ::execvpe(argv[split + 1], argv + split + 1, envp.data());
        (void)!::write(STDERR_FILENO, cannot.data(), cannot.size());
        ::_exit(127);
      }
      ::setpgid(pid, pid);
      ::close(out[1]);
      ::close(err[1]);
      r.pid = pid;
      r.out = out[0];
      r.err = err[0];
    }

    {
      std::string pids;
      for (const Rank& r : ranks) pids += (pids.empty() ? "" : " ") + std::to_string(r.pid);
      std::fprintf(stderr, "tessel launch: ranks %lld-%lld of %lld on this host (pids %s), store at %s:%d\n",
                   static_cast<long long>(node * nproc), static_cast<long long>(node * nproc + nproc - 1),
                   static_cast<long long>(world), pids.c_str(), host.c_str(), port);
    }
    const Rank* first_failure = nullptr;
    std::optional<Clock::time_point> term_at, kill_at;
    auto stop_others = [&](int sig) {
      for (Rank& r : ranks)
        if (r.running) {
          r.stopped_by_us = true;
          ::kill(-r.pid, sig);
        }
    };
    char buf[65536];
    for (;;) {
      // Output first, so that a rank's last words come before the verdict.
      std::vector<pollfd> fds;
      std::vector<std::pair<Rank*, bool>> who;
      for (Rank& r : ranks) {
        if (r.out >= 0) fds.push_back({r.out, POLLIN, 0}), who.emplace_back(&r, false);
        if (r.err >= 0) fds.push_back({r.err, POLLIN, 0}), who.emplace_back(&r, true);
      }
      if (!fds.empty()) ::poll(fds.data(), fds.size(), 20);
      for (size_t k = 0; k < fds.size(); ++k) {
        if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        auto [r, is_err] = who[k];
        const ssize_t n = ::read(fds[k].fd, buf, sizeof buf);
        if (n > 0) {
          forward(*r, is_err ? r->err_part : r->out_part, buf, static_cast<size_t>(n), is_err, false);
        } else {
          forward(*r, is_err ? r->err_part : r->out_part, buf, 0, is_err, true);
          ::close(fds[k].fd);
          (is_err ? r->err : r->out) = -1;
        }
      }
      if (fds.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      // Exits. Among ranks found dead in the same round, one the launcher did not stop and
      // that died of a signal is the likeliest first cause.
      std::vector<Rank*> died;
      for (Rank& r : ranks) {
        if (!r.running) continue;
        int st = 0;
        if (::waitpid(r.pid, &st, WNOHANG) == r.pid) {
          r.running = false;
          r.status = st;
          if (failed(st) && !r.stopped_by_us) died.push_back(&r);
        }
      }
      if (!first_failure && !died.empty()) {
        first_failure = died[0];
        for (Rank* r : died)
          if (WIFSIGNALED(r->status)) {
            first_failure = r;
            break;
          }
        // The others learn what happened from the store (their calls with the dead rank fail
        // at once, or at their timeouts); they get --grace seconds to stop and say so.
        const std::string why = "rank " + std::to_string(first_failure->rank) + " (pid " + std::to_string(first_failure->pid) +
                                ") " + describe_exit(first_failure->status);
        if (store && WIFSIGNALED(first_failure->status)) store->set("tessel/abort", std::vector<char>(why.begin(), why.end()));
        term_at = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace * 1000));
      }
      if (term_at && Clock::now() >= *term_at && !kill_at) {
        stop_others(SIGTERM);
        kill_at = Clock::now() + std::chrono::seconds(2);
      }
      if (g_signal && !kill_at) {
        std::fprintf(stderr, "tessel launch: %s: stopping the ranks\n", strsignal(g_signal.load()));
        stop_others(SIGTERM);
        kill_at = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace * 1000));
      }
      // A rank that stopped after the first failure stopped because of it.
      if (first_failure)
        for (Rank& r : ranks)
          if (!r.running && &r != first_failure) r.stopped_by_us = true;
      if (kill_at && Clock::now() >= *kill_at) {
        stop_others(SIGKILL);
        kill_at = Clock::now() + std::chrono::hours(1);
      }
      bool any = false;
      for (Rank& r : ranks) any |= r.running || r.out >= 0 || r.err >= 0;
      if (!any) break;
    }
    if (first_failure) {
      std::string msg = "tessel launch: rank " + std::to_string(first_failure->rank) + " (pid " +
                        std::to_string(first_failure->pid) + ") " + describe_exit(first_failure->status);
      if (!first_failure->last_error.empty()) msg += ": " + first_failure->last_error;
      int others = 0;
      for (const Rank& r : ranks) others += r.stopped_by_us && &r != first_failure;
      if (others > 0) msg += "; the other " + std::to_string(others) + " rank" + (others > 1 ? "s" : "") + " here stopped";
      if (attempt < max_restarts && !g_signal) {
        std::fprintf(stderr, "%s; restarting the job (%lld of %lld)\n", msg.c_str(), static_cast<long long>(attempt + 1),
                     static_cast<long long>(max_restarts));
        continue;
      }
      std::fprintf(stderr, "%s\n", msg.c_str());
      const int st = first_failure->status;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    }
    if (g_signal) return 128 + g_signal;
    if (attempt > 0) std::fprintf(stderr, "tessel launch: the job finished after %lld restart%s\n", static_cast<long long>(attempt), attempt > 1 ? "s" : "");
    return 0;
  }
}

}  // namespace tessel::cli
