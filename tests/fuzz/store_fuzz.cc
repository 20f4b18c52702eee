// libFuzzer target for the TCP store's protocol (runtime/tcp_store.h): one connection per
// input sends the input's bytes (after a valid hello when the first byte is odd, so that the
// request parser is reached) and hangs up. Whatever arrives, the server must answer or hang
// up within seconds, never crash (ASan/UBSan) or grow without bound, never let a client
// without the token write a key, and keep serving a client that follows the protocol.
// Build with clang (TESSEL_FUZZ); seed it with tests/data/store_corpus.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "graph/error.h"
#include "runtime/tcp_store.h"

namespace {

using tessel::runtime::TcpStoreClient;
using tessel::runtime::TcpStoreLimits;
using tessel::runtime::TcpStoreServer;

constexpr std::string_view kToken = "fuzz-job-token";

[[noreturn]] void bug(const char* what) {
  std::fprintf(stderr, "store_fuzz: %s\n", what);
  std::abort();
}

TcpStoreServer& server() {
  // Smaller caps than a job's, so that an input asking for the most costs milliseconds.
  TcpStoreLimits l;
  l.max_value_bytes = 1 << 20;
  l.max_total_bytes = 64 << 20;
  l.hello_timeout_s = 1;
  static TcpStoreServer s("127.0.0.1", 0, std::string(kToken), l);
  return s;
}

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) bug("socket failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) bug("cannot connect to the store");
  return fd;
}

// Reads until the server hangs up; a server that neither answers nor hangs up for 5 s is a bug.
void drain(int fd) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) bug("the server neither answered nor hung up within 5 s");
    pollfd pf{fd, POLLIN, 0};
    if (::poll(&pf, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t got = ::recv(fd, buf, sizeof buf, 0);
    if (got <= 0) return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int64_t runs = 0;
  TcpStoreServer& s = server();
  const bool hello = size > 0 && (data[0] & 1);
  std::vector<char> bytes;
  if (hello) {
    const uint32_t n = static_cast<uint32_t>(kToken.size());
    bytes.insert(bytes.end(), {'T', 'S', 'S', '1'});
    bytes.insert(bytes.end(), reinterpret_cast<const char*>(&n), reinterpret_cast<const char*>(&n) + 4);
    bytes.insert(bytes.end(), kToken.begin(), kToken.end());
  }
  if (size > 0) bytes.insert(bytes.end(), data + 1, data + size);
  const bool has_token =
      std::string_view(bytes.data(), bytes.size()).find(kToken) != std::string_view::npos;
  const int64_t keys_before = s.keys();

  const int fd = connect_to(s.port());
  for (size_t at = 0; at < bytes.size();) {
    const ssize_t put = ::send(fd, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
    if (put <= 0) break;  // the server hung up: it may, at any point
    at += static_cast<size_t>(put);
  }
  ::shutdown(fd, SHUT_WR);
  drain(fd);
  ::close(fd);

  if (!has_token && s.keys() != keys_before) bug("a client without the token wrote a key");
  if (++runs % 64 == 0) {  // and it still serves a client that follows the protocol
    try {
      TcpStoreClient c("127.0.0.1", s.port(), std::string(kToken), 5);
      const std::string v = "value " + std::to_string(runs);
      c.set("probe", std::span<const char>(v.data(), v.size()));
      const auto got = c.get("probe", 5);
      if (!got || std::string(got->begin(), got->end()) != v) bug("a well-behaved client read back something else");
    } catch (const tessel::Error& e) {
      std::fprintf(stderr, "store_fuzz: %s\n", e.what());
      bug("a well-behaved client was not served");
    }
  }
  return 0;
}
