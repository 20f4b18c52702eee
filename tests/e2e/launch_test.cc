// One process per rank: `tessel train` under `tessel launch` and under torchrun-style
// variables set by hand trains what the same plan trains on simulated devices of one
// process; a rank that dies, never starts, or a stranger at the store's port, each ends in
// a clean, named outcome within seconds. Every job here runs under `timeout` and on loopback.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <string>

#include "cli_util.h"

namespace tessel::testing {
namespace {

const std::string kCli = TESSEL_CLI;
const std::string kReadme = std::string(TESSEL_SOURCE_DIR) + "/README.md";

bool have_fashion_mnist() { return std::filesystem::exists("/usr/share/datasets/fashion-mnist"); }

// A port nobody listens on now (the kernel's pick, released for the test to use).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Runs a bash script; its stdout and stderr captured.
RunResult run_bash(const std::string& script) {
  const std::string dir = temp_dir();
  const std::string path = dir + "/run.sh";
  std::ofstream(path) << "set -u\n" << script << "\n";
  const std::string out = dir + "/stdout", err = dir + "/stderr";
  const int rc = std::system(("bash " + path + " >" + out + " 2>" + err).c_str());
  RunResult r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

struct Job {
  std::string name, train;  // the `tessel train` arguments, without --devices
  int ranks;
};
void PrintTo(const Job& j, std::ostream* os) { *os << j.name; }

std::string mlp_job(const std::string& pins) {
  return "train --model mlp:784-128-10 --dataset fashion-mnist --steps 12 --batch 64 --optimizer sgd --lr 0.05 "
         "--momentum 0.9 --seed 3 --format json --quiet " + pins;
}
std::string gpt_job(const std::string& pins, int steps = 6) {
  return "train --model gpt:layers=2,d_model=32,heads=4,seq=16,vocab=256 --dataset text:" + kReadme + " --steps " +
         std::to_string(steps) + " --batch 8 --optimizer adamw --lr 0.003 --seed 5 --eval-batches 4 --format json --quiet " +
         pins;
}

void expect_same_training(const RunResult& procs, const RunResult& threads, const std::string& what) {
  ASSERT_EQ(procs.status, 0) << what << "\n" << procs.err;
  ASSERT_EQ(threads.status, 0) << what << "\n" << threads.err;
  const std::string a = last_line(procs.out), b = last_line(threads.out);
  for (const char* key : {"final_loss", "test_loss"}) {
    const double x = json_value(a, key), y = json_value(b, key);
    ASSERT_TRUE(std::isfinite(x) && std::isfinite(y)) << what << " " << key << "\n" << a << "\n" << b;
    EXPECT_NEAR(x, y, 1e-6 * std::max(1.0, std::abs(y))) << what << " " << key;
  }
  EXPECT_EQ(json_value(a, "devices"), json_value(b, "devices")) << what;
}

class LaunchTrains : public ::testing::TestWithParam<Job> {};

TEST_P(LaunchTrains, AsTheSamePlanOnSimulatedDevices) {
  const Job& j = GetParam();
  if (j.train.find("fashion-mnist") != std::string::npos && !have_fashion_mnist()) GTEST_SKIP() << "no fashion-mnist";
  const RunResult procs = run_cli("launch --nproc " + std::to_string(j.ranks) + " -- " + kCli + " " + j.train);
  const RunResult threads = run_cli(j.train + " --devices " + std::to_string(j.ranks));
  expect_same_training(procs, threads, j.name);
  // Only rank 0 reports: one JSON line, prefixed.
  EXPECT_NE(procs.out.find("[rank 0] {"), std::string::npos) << procs.out;
  EXPECT_EQ(procs.out.find("[rank 1] {"), std::string::npos) << procs.out;
  EXPECT_NE(procs.err.find("tessel launch: ranks 0-" + std::to_string(j.ranks - 1)), std::string::npos) << procs.err;
}

INSTANTIATE_TEST_SUITE_P(Plans, LaunchTrains,
                         ::testing::Values(Job{"mlp_dp2_zero", mlp_job("--dp 2 --zero 3"), 2},
                                           Job{"gpt_tp2_sp", gpt_job("--tp 2 --sp"), 2},
                                           Job{"gpt_pp2", gpt_job("--pp 2 --microbatches 2"), 2},
                                           Job{"gpt_dp2_pp2", gpt_job("--dp 2 --pp 2 --microbatches 2 --zero 1", 4), 4},
                                           Job{"gpt_auto3", gpt_job("--auto --batch 12", 4), 3}),
                         [](const auto& info) { return info.param.name; });

TEST(Launch, TorchrunStyleVariablesSetByHandTrainTheSame) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "no fashion-mnist";
  const std::string job = mlp_job("--dp 2");
  const int port = free_port();
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port);
  const RunResult procs = run_bash("RANK=1 " + env + " timeout 120 " + kCli + " " + job + " >/dev/null &\n" +
                                   "RANK=0 " + env + " timeout 120 " + kCli + " " + job + "\nrc=$?\nwait\nexit $rc");
  expect_same_training(procs, run_cli(job + " --devices 2"), "torchrun-style");
}

TEST(Launch, AKilledRankIsNamedByTheLauncherAndByTheOthersWithinSeconds) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "no fashion-mnist";
  const std::string dir = temp_dir();
  // A long job; once rank 0 reports steps, rank 1 is killed.
  const RunResult r = run_bash(
      "timeout 120 " + kCli + " launch --nproc 2 --log-dir " + dir + " -- " + kCli +
      " train --model mlp:784-512-10 --dataset fashion-mnist --steps 100000 --batch 64 --dp 2 --comm-timeout 30 "
      "2>" + dir + "/err &\n"
      "for i in $(seq 600); do grep -q ' parameters, batch' " + dir + "/rank-0.log 2>/dev/null && break; sleep 0.1; done; sleep 1\n"
      "pid=$(sed -n 's/.*(pids \\([0-9]*\\) \\([0-9]*\\)).*/\\2/p' " + dir + "/err)\n"
      "start=$(date +%s%N); kill -9 $pid; wait $!; rc=$?; end=$(date +%s%N)\n"
      "echo rc=$rc killed=$pid seconds=$(((end - start) / 1000000))e-3\ncat " + dir + "/err >&2");
  ASSERT_NE(r.out.find("rc=137"), std::string::npos) << r.out << r.err;  // the dead rank's status
  const std::string pid = r.out.substr(r.out.find("killed=") + 7, r.out.find(" seconds") - r.out.find("killed=") - 7);
  EXPECT_NE(r.err.find("tessel launch: rank 1 (pid " + pid + ") was killed by signal 9"), std::string::npos) << r.err;
  // The survivor fails on its own, naming the dead rank, the op and the step.
  const std::string survivor = slurp(dir + "/rank-0.log");
  EXPECT_NE(survivor.find("rank 1 (pid " + pid + ") was killed by signal 9"), std::string::npos) << survivor;
  EXPECT_NE(survivor.find(" in step "), std::string::npos) << survivor;
  EXPECT_NE(survivor.find("models.cc:"), std::string::npos) << survivor;  // the node's source line
  const double seconds = std::stod(r.out.substr(r.out.find("seconds=") + 8));
  EXPECT_LT(seconds, 10) << r.out;
  EXPECT_EQ(run_bash("pgrep -f 'mlp:784-512-10' || true").out, "");  // nothing left behind
}

TEST(Launch, ARankThatNeverStartsIsNamedWithinTheTimeout) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "no fashion-mnist";
  const int port = free_port();
  const auto t0 = std::chrono::steady_clock::now();
  const RunResult r = run_bash("RANK=0 WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
                               " timeout 60 " + kCli + " " + mlp_job("--dp 3 --batch 60 --comm-timeout 2"));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("rank 1 never arrived"), std::string::npos) << r.err;
  EXPECT_LT(s, 20);
}

TEST(Launch, StrangersAtTheStoreAreRefusedAndTheJobGoesOn) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "no fashion-mnist";
  const std::string job = mlp_job("--dp 2");
  const int port = free_port();
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " TESSEL_JOB_TOKEN=t0k";
  // While the job runs, strangers connect again and again: garbage, a wrong token, a right
  // magic with a huge length, and a wrong token asking for the abort key.
  const RunResult procs = run_bash(
      "RANK=1 " + env + " timeout 120 " + kCli + " " + job + " >/dev/null &\n"
      "RANK=0 " + env + " timeout 120 " + kCli + " " + job + " &\nmain=$!\n"
      "n=0; while kill -0 $main 2>/dev/null; do\n"
      "  for msg in 'GET / HTTP/1.0\\r\\n\\r\\n' 'TSS1\\x05\\x00\\x00\\x00wrong' 'TSS1\\xff\\xff\\xff\\xff' "
      "'TSS1\\x03\\x00\\x00\\x00bad\\x02\\x0c\\x00\\x00\\x00tessel/abort\\x00\\x00\\x00\\x00'; do\n"
      "    (exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port) + " && printf \"$msg\" >&3 && timeout 1 cat <&3 >/dev/null) 2>/dev/null && n=$((n+1))\n"
      "  done; sleep 0.05\ndone\nwait $main; rc=$?; wait\necho \"strangers=$n\" >&2; exit $rc");
  expect_same_training(procs, run_cli(job + " --devices 2"), "with strangers");
  EXPECT_EQ(procs.err.find("strangers=0"), std::string::npos) << procs.err;  // some got through to the port
}

TEST(Launch, BadUsageAndAMissingProgramAreNamed) {
  RunResult r = run_cli("launch -- true");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--nproc is required"), std::string::npos) << r.err;
  r = run_cli("launch --nproc 2");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("give the command to run after --"), std::string::npos) << r.err;
  r = run_cli("launch --nproc 2 --nnodes 2 -- true");
  EXPECT_NE(r.err.find("--master"), std::string::npos) << r.err;
  r = run_cli("launch --nproc 2 -- /nonexistent/program");
  EXPECT_EQ(r.status, 127) << r.err;
  EXPECT_NE(r.err.find("cannot run /nonexistent/program"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tessel launch: rank "), std::string::npos) << r.err;
  r = run_cli("launch --nproc 3 -- sh -c 'exit $((TESSEL_RANK == 2 ? 4 : 0))'");
  EXPECT_EQ(r.status, 4) << r.err;
  EXPECT_NE(r.err.find("tessel launch: rank 2 (pid "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("exited with status 4"), std::string::npos) << r.err;
  r = run_cli("launch --nproc 2 -- sh -c 'echo rank $TESSEL_RANK of $TESSEL_WORLD_SIZE threads $TESSEL_THREADS_PER_RANK'");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("[rank 1] rank 1 of 2 threads"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace tessel::testing
