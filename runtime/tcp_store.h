// A key-value store over TCP where the ranks of one job meet (Gloo's rendezvous, the abort
// reason, anything else every rank must agree on): served by one process (the launcher, or
// rank 0 when there is none), reached by every rank. For hosts with no shared disk.
//
// Nobody joins uninvited: the server listens only on the address it is given, every client
// first presents the job's token (a stray process on the network is refused before it can
// read or write a key), every message's size is capped, and malformed input closes that
// connection with an error counted in refused() — never a crash, a hang of the server or an
// unbounded allocation.
//
// Protocol (all integers little-endian): the client sends "TSS1", u32 token length, the
// token; the server answers one byte (0: welcome, 1: wrong token). Then requests:
//   set:  u8 1, u32 key length, key, u64 value length, value    -> u8 0
//   get:  u8 2, u32 key length, key, u32 wait in ms              -> u8 1, u64 length, value
//                                                                  | u8 0 (not there in time)
// Anything else is answered by u8 0xFF and the connection is closed.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace tessel::runtime {

struct TcpStoreLimits {
  int64_t max_key_bytes = 4096;
  int64_t max_value_bytes = int64_t{64} << 20;
  int64_t max_total_bytes = int64_t{1} << 30;  // all values together
  int max_clients = 1024;                      // connections at once
  double hello_timeout_s = 10;                 // to present the token
};

class TcpStoreServer {
 public:
  // Listens on host:port (port 0: any free one; port() says which). Throws naming the
  // address when it cannot bind. Serves from threads of its own until destroyed.
  TcpStoreServer(const std::string& host, int port, std::string token, TcpStoreLimits limits = {});
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  int port() const;
  const std::string& host() const;
  int64_t refused() const;  // connections refused: wrong token, malformed or oversized input
  int64_t keys() const;
  // Sets a key as a client would (the launcher leaves a dead rank's obituary under
  // "tessel/abort" for the others to report).
  void set(const std::string& key, std::span<const char> value);

  struct State;

 private:
  std::unique_ptr<State> s_;
};

// One connection to a store. Thread-safe: calls from several threads take turns, and a
// long get() waits in short slices so that a set() from another thread (an abort) is not
// held up behind it.
class TcpStoreClient {
 public:
  // Connects, retrying until timeout_s (the server may not be up yet), and presents the
  // token. Throws naming host:port: unreachable, wrong token. Each later request also gives
  // up after timeout_s without an answer (a cut link never hangs a rank).
  TcpStoreClient(const std::string& host, int port, const std::string& token, double timeout_s);
  ~TcpStoreClient();
  TcpStoreClient(const TcpStoreClient&) = delete;
  TcpStoreClient& operator=(const TcpStoreClient&) = delete;

  void set(const std::string& key, std::span<const char> value);
  // The key's value, waiting up to timeout_s for some client to set it; nullopt if none did.
  std::optional<std::vector<char>> get(const std::string& key, double timeout_s);
  // The local address of the connection: the address by which this host reaches the
  // server's, so also the one the other ranks can reach this host by.
  const std::string& local_address() const { return local_; }
  std::string where() const;  // "tcp store at HOST:PORT"

 private:
  std::optional<std::vector<char>> get_once(const std::string& key, int wait_ms);
  std::chrono::steady_clock::time_point deadline(int wait_ms) const;
  std::string secs() const;
  void usable() const;
  [[noreturn]] void broken(const std::string& why);
  std::mutex mu_;
  int fd_ = -1;
  std::string host_, local_;
  int port_ = 0;
  double timeout_s_ = 0;
};

// "HOST:PORT" -> (host, port); throws naming `what` when malformed.
std::pair<std::string, int> parse_host_port(const std::string& s, const std::string& what);

}  // namespace tessel::runtime
