// The TCP store where a job's ranks meet, and the ranks' identity from their launcher's
// variables. The store faces the network: it must refuse strangers and survive any bytes.
#include "runtime/tcp_store.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "graph/error.h"
#include "runtime/process_env.h"

namespace tessel::runtime {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<char> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string str(const std::optional<std::vector<char>>& v) { return v ? std::string(v->begin(), v->end()) : "<none>"; }

// A raw connection to the server, for speaking its protocol wrongly.
struct Raw {
  int fd = -1;
  explicit Raw(int port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) ADD_FAILURE() << "connect: " << std::strerror(errno);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~Raw() { ::close(fd); }
  void put(const std::string& s) { (void)!::send(fd, s.data(), s.size(), MSG_NOSIGNAL); }
  template <class T>
  void put(T v) {
    put(std::string(reinterpret_cast<const char*>(&v), sizeof v));
  }
  // Reads until the server closes (or 5 s): what it answered.
  std::string drain() {
    std::string got;
    char b[256];
    for (ssize_t n; (n = ::recv(fd, b, sizeof b, 0)) > 0;) got.append(b, static_cast<size_t>(n));
    return got;
  }
};

void hello(Raw& r, const std::string& token) {
  r.put(std::string("TSS1"));
  r.put(static_cast<uint32_t>(token.size()));
  r.put(token);
}

TEST(TcpStore, SetThenGetAcrossClientsAndGetWaitsForALaterSet) {
  TcpStoreServer server("127.0.0.1", 0, "tok");
  TcpStoreClient a("127.0.0.1", server.port(), "tok", 5), b("127.0.0.1", server.port(), "tok", 5);
  a.set("k", bytes("v1"));
  EXPECT_EQ(str(b.get("k", 1)), "v1");
  a.set("k", bytes("v2 longer"));
  EXPECT_EQ(str(b.get("k", 1)), "v2 longer");
  a.set("empty", {});
  EXPECT_EQ(str(b.get("empty", 1)), "");
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    a.set("late", bytes("here"));
  });
  const auto t0 = Clock::now();
  EXPECT_EQ(str(b.get("late", 10)), "here");
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 5);
  later.join();
  EXPECT_EQ(a.local_address(), "127.0.0.1");
}

TEST(TcpStore, AnAbsentKeyTimesOut) {
  TcpStoreServer server("127.0.0.1", 0, "");
  TcpStoreClient c("127.0.0.1", server.port(), "", 5);
  const auto t0 = Clock::now();
  EXPECT_FALSE(c.get("never", 0.3).has_value());
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_GE(s, 0.25);
  EXPECT_LT(s, 3);
}

TEST(TcpStore, LargeValuesRoundTripExactly) {
  TcpStoreServer server("127.0.0.1", 0, "t");
  TcpStoreClient c("127.0.0.1", server.port(), "t", 5);
  std::mt19937 rng(7);
  for (size_t n : {size_t{1}, size_t{4095}, size_t{1} << 20, (size_t{8} << 20) + 3}) {
    std::vector<char> v(n);
    for (auto& x : v) x = static_cast<char>(rng());
    c.set("big" + std::to_string(n), v);
    EXPECT_EQ(c.get("big" + std::to_string(n), 1), v) << n;
  }
}

TEST(TcpStore, AWrongTokenIsRefusedBeforeItCanReadOrWrite) {
  TcpStoreServer server("127.0.0.1", 0, "secret");
  TcpStoreClient good("127.0.0.1", server.port(), "secret", 5);
  good.set("x", bytes("1"));
  for (const std::string& bad : std::vector<std::string>{"", "secreT", "secret2", std::string(1024, 's')}) {
    try {
      TcpStoreClient c("127.0.0.1", server.port(), bad, 5);
      ADD_FAILURE() << "token '" << bad.substr(0, 10) << "' was let in";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("refused this rank's job token"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(server.port())), std::string::npos) << e.what();
    }
  }
  // A stranger that skips the hello and asks for the key gets nothing back.
  {
    Raw r(server.port());
    r.put(uint8_t{2});
    r.put(uint32_t{1});
    r.put(std::string("x"));
    r.put(uint32_t{0});
    EXPECT_EQ(r.drain().find('1'), std::string::npos);
  }
  EXPECT_GE(server.refused(), 5);
  EXPECT_EQ(str(good.get("x", 1)), "1");  // the job goes on
}

TEST(TcpStore, OversizedLengthsAreRefusedWithoutAllocating) {
  TcpStoreLimits lim;
  lim.max_value_bytes = 1 << 20;
  lim.max_total_bytes = 3 << 20;
  TcpStoreServer server("127.0.0.1", 0, "t", lim);
  TcpStoreClient good("127.0.0.1", server.port(), "t", 5);
  const int64_t before = server.refused();
  {  // a value declared at 1 TiB: refused at once, nothing read or reserved
    Raw r(server.port());
    hello(r, "t");
    r.put(uint8_t{1});
    r.put(uint32_t{1});
    r.put(std::string("k"));
    r.put(uint64_t{1} << 40);
    const std::string got = r.drain();
    ASSERT_EQ(got.size(), 2u);  // welcome, then the refusal
    EXPECT_EQ(static_cast<uint8_t>(got[1]), 0xFF);
  }
  {  // a key longer than the limit
    Raw r(server.port());
    hello(r, "t");
    r.put(uint8_t{2});
    r.put(uint32_t{1} << 30);
    const std::string got = r.drain();
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(static_cast<uint8_t>(got[1]), 0xFF);
  }
  // The total cap: three values of 1 MiB fit, a fourth does not, and the client says so.
  const std::vector<char> mib(1 << 20, 'x');
  for (int i = 0; i < 3; ++i) good.set("v" + std::to_string(i), mib);
  TcpStoreClient other("127.0.0.1", server.port(), "t", 5);
  EXPECT_THROW(other.set("v3", mib), Error);
  good.set("v0", bytes("small"));  // replacing a value gives its room back
  EXPECT_EQ(str(good.get("v0", 1)), "small");
  EXPECT_GE(server.refused() - before, 3);
}

TEST(TcpStore, ASilentClientIsDroppedAfterTheHelloTimeout) {
  TcpStoreLimits lim;
  lim.hello_timeout_s = 0.3;
  TcpStoreServer server("127.0.0.1", 0, "t", lim);
  Raw r(server.port());
  const auto t0 = Clock::now();
  EXPECT_EQ(r.drain(), "");
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 3);
  EXPECT_EQ(server.refused(), 1);
}

TEST(TcpStore, ClientsBeyondTheCapAreRefusedAndTheOthersGoOn) {
  TcpStoreLimits lim;
  lim.max_clients = 3;
  TcpStoreServer server("127.0.0.1", 0, "t", lim);
  std::vector<std::unique_ptr<TcpStoreClient>> held;
  for (int i = 0; i < 3; ++i) held.push_back(std::make_unique<TcpStoreClient>("127.0.0.1", server.port(), "t", 5));
  EXPECT_THROW(TcpStoreClient("127.0.0.1", server.port(), "t", 1), Error);
  held[0]->set("a", bytes("b"));
  EXPECT_EQ(str(held[2]->get("a", 1)), "b");
  held.pop_back();  // room again, once the server has seen it go
  std::optional<TcpStoreClient> late;
  for (int tries = 0; tries < 50 && !late; ++tries) {
    try {
      late.emplace("127.0.0.1", server.port(), "t", 1);
    } catch (const Error&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  ASSERT_TRUE(late.has_value());
  EXPECT_EQ(str(late->get("a", 1)), "b");
}

// Random bytes, and valid messages cut or bent at random places: the server answers each
// connection or closes it, never crashes or stalls, and a client with the token is served
// after every one. Seeded; a failure names its case.
TEST(TcpStore, SurvivesRandomAndMangledInput) {
  TcpStoreLimits lim;
  lim.hello_timeout_s = 0.2;
  lim.max_value_bytes = 1 << 16;
  TcpStoreServer server("127.0.0.1", 0, "job", lim);
  TcpStoreClient good("127.0.0.1", server.port(), "job", 5);
  std::mt19937_64 rng(20261203);
  auto valid = [&](std::mt19937_64& g) {
    std::string m = "TSS1";
    const std::string tok = g() % 4 ? "job" : "jo" + std::string(1, static_cast<char>(g()));
    uint32_t n = static_cast<uint32_t>(tok.size());
    m.append(reinterpret_cast<char*>(&n), 4);
    m += tok;
    for (int k = 0, reqs = static_cast<int>(g() % 4); k < reqs; ++k) {
      const bool set = g() % 2;
      m += static_cast<char>(set ? 1 : 2);
      const std::string key = "key" + std::to_string(g() % 8);
      uint32_t kl = static_cast<uint32_t>(key.size());
      m.append(reinterpret_cast<char*>(&kl), 4);
      m += key;
      if (set) {
        uint64_t vl = g() % 64;
        m.append(reinterpret_cast<char*>(&vl), 8);
        m += std::string(vl, 'v');
      } else {
        uint32_t w = 0;
        m.append(reinterpret_cast<char*>(&w), 4);
      }
    }
    return m;
  };
  const int cases = 300;
  for (int c = 0; c < cases; ++c) {
    std::mt19937_64 g(rng());
    std::string m;
    switch (c % 3) {
      case 0: {  // pure noise, sometimes behind a correct magic
        const size_t n = g() % 64;
        m = c % 2 ? "TSS1" : "";
        for (size_t i = 0; i < n; ++i) m += static_cast<char>(g());
        break;
      }
      case 1: {  // a valid conversation cut short
        m = valid(g);
        m.resize(g() % (m.size() + 1));
        break;
      }
      default: {  // a valid conversation with a few bytes flipped
        m = valid(g);
        for (int k = 0; k < 3 && !m.empty(); ++k) m[g() % m.size()] = static_cast<char>(g());
      }
    }
    {
      Raw r(server.port());
      r.put(m);
      ::shutdown(r.fd, SHUT_WR);
      r.drain();
    }
    const std::string key = "probe" + std::to_string(c);
    good.set(key, bytes(key));
    ASSERT_EQ(str(good.get(key, 2)), key) << "after case " << c << " (seed 20261203)";
  }
  EXPECT_GT(server.refused(), 0);
}

// --- The ranks' identity from their launcher's variables ---

EnvFn env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* n) -> std::optional<std::string> {
    auto it = vars.find(n);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(ProcessRole, NoLauncherNoRole) {
  EXPECT_FALSE(process_role(env_of({})).has_value());
  EXPECT_FALSE(process_role(env_of({{"RANK", "0"}})).has_value());  // RANK alone is not a launcher
  // Inside an sbatch script (no step): not a rank of a step.
  EXPECT_FALSE(process_role(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}})).has_value());
}

TEST(ProcessRole, EachLauncherIsRead) {
  auto r = process_role(env_of({{"TESSEL_RANK", "3"}, {"TESSEL_WORLD_SIZE", "4"}, {"TESSEL_LOCAL_RANK", "1"},
                                {"TESSEL_LOCAL_WORLD_SIZE", "2"}, {"TESSEL_STORE", "tcp:10.0.0.1:29400"},
                                {"TESSEL_STORE_SERVED", "1"}, {"TESSEL_JOB_TOKEN", "abc"}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->launcher, "tessel launch");
  EXPECT_EQ(r->rank, 3);
  EXPECT_EQ(r->size, 4);
  EXPECT_EQ(r->local_rank, 1);
  EXPECT_EQ(r->local_size, 2);
  EXPECT_EQ(r->store, "tcp:10.0.0.1:29400");
  EXPECT_FALSE(r->serve_store);  // the launcher serves it
  EXPECT_EQ(r->token, "abc");

  r = process_role(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->launcher, "torchrun-style variables");
  EXPECT_EQ(r->store, "tcp:127.0.0.1:29500");
  EXPECT_TRUE(r->serve_store);  // rank 0 serves it
  r = process_role(env_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}));
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->serve_store);

  r = process_role(env_of({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                           {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}, {"PMIX_NAMESPACE", "prterun-vm-123@1"}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->launcher, "mpirun");
  EXPECT_EQ(r->rank, 1);
  EXPECT_NE(r->store.find("file:"), std::string::npos);
  EXPECT_NE(r->store.find("tessel-job-prterun-vm-123@1"), std::string::npos);
  EXPECT_FALSE(r->remove_store);

  r = process_role(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}, {"SLURM_STEP_ID", "0"},
                           {"SLURM_JOB_ID", "17"}, {"SLURM_NNODES", "1"}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->launcher, "srun");
  EXPECT_EQ(r->local_size, 2);
  EXPECT_NE(r->store.find("tessel-job-17.0"), std::string::npos);
  EXPECT_TRUE(r->remove_store);
  EXPECT_EQ(threads_per_rank(*r, env_of({{"OMP_NUM_THREADS", "3"}})), 3);
  EXPECT_EQ(threads_per_rank(*r, env_of({{"TESSEL_THREADS_PER_RANK", "2"}, {"OMP_NUM_THREADS", "3"}})), 2);
}

TEST(ProcessRole, BadVariablesAreNamed) {
  auto msg = [](std::map<std::string, std::string> v) {
    try {
      process_role(env_of(std::move(v)));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg({{"RANK", "x"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}).find("RANK is 'x'"),
            std::string::npos);
  EXPECT_NE(msg({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}).find("outside the world"),
            std::string::npos);
  EXPECT_NE(msg({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}).find("MASTER_PORT"), std::string::npos);
  EXPECT_NE(msg({{"RANK", "0"}, {"WORLD_SIZE", "2"}}).find("no meeting place"), std::string::npos);
  EXPECT_NE(msg({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}).find("1-65535"),
            std::string::npos);
  EXPECT_NE(msg({{"TESSEL_RANK", "0"}, {"TESSEL_WORLD_SIZE", "2"}, {"TESSEL_STORE", "redis:x"}}).find("tcp:HOST:PORT"),
            std::string::npos);
  EXPECT_NE(msg({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_STEP_ID", "0"}, {"SLURM_JOB_ID", "1"},
                 {"SLURM_NNODES", "2"}})
                .find("several hosts"),
            std::string::npos);
}

}  // namespace
}  // namespace tessel::runtime
