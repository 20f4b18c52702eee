#include "runtime/tcp_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <list>
#include <map>
#include <thread>

#include "graph/error.h"

namespace tessel::runtime {

namespace {

using Clock = std::chrono::steady_clock;
constexpr char kMagic[4] = {'T', 'S', 'S', '1'};
constexpr uint8_t kSet = 1, kGet = 2, kBad = 0xFF;
constexpr int64_t kMaxTokenBytes = 1024;
constexpr int kMaxWaitMs = 60000;

std::string sys_error() { return std::strerror(errno); }

// Reads exactly n bytes. deadline: none (block until data or close) or a time after which
// it gives up. Returns false on close, error or deadline.
bool read_full(int fd, void* p, size_t n, std::optional<Clock::time_point> deadline = std::nullopt) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    if (deadline) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd pf{fd, POLLIN, 0};
      const int r = ::poll(&pf, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (r < 0 && errno != EINTR) return false;
      if (r <= 0) continue;
    }
    const ssize_t got = ::recv(fd, b, n, 0);
    if (got == 0) return false;
    if (got < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    b += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

bool write_full(int fd, const void* p, size_t n) {
  const auto* b = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t put = ::send(fd, b, n, MSG_NOSIGNAL);
    if (put < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    b += put;
    n -= static_cast<size_t>(put);
  }
  return true;
}

template <class T>
void append(std::vector<char>& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // the hosts tessel runs on are little-endian
  out.insert(out.end(), b, b + sizeof(T));
}

void no_delay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

sockaddr_in resolve(const std::string& host, int port, const std::string& what) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res)
    throw Error(what + ": cannot resolve the host '" + host + "': " + ::gai_strerror(rc));
  sockaddr_in a{};
  std::memcpy(&a, res->ai_addr, sizeof a);
  ::freeaddrinfo(res);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

bool same_token(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

}  // namespace

std::pair<std::string, int> parse_host_port(const std::string& s, const std::string& what) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size())
    throw Error(what + ": expected HOST:PORT, got '" + s + "'");
  const std::string port = s.substr(colon + 1);
  char* end = nullptr;
  const long p = std::strtol(port.c_str(), &end, 10);
  if (*end != 0 || p < 1 || p > 65535) throw Error(what + ": the port in '" + s + "' is not 1-65535");
  return {s.substr(0, colon), static_cast<int>(p)};
}

struct TcpStoreServer::State {
  std::string host, token;
  int port = 0;
  TcpStoreLimits limits;
  int listen_fd = -1;
  int wake[2] = {-1, -1};
  std::thread acceptor;

  mutable std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::map<std::string, std::vector<char>> data;
  int64_t total_bytes = 0;
  std::atomic<int64_t> refused{0};

  struct Conn {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  std::list<Conn> conns;  // guarded by mu

  void accept_loop();
  void serve(Conn& c);
  void reap_finished();
};

void TcpStoreServer::State::reap_finished() {
  std::list<Conn> finished;
  {
    std::lock_guard lk(mu);
    for (auto it = conns.begin(); it != conns.end();) {
      auto next = std::next(it);
      if (it->done) finished.splice(finished.end(), conns, it);
      it = next;
    }
  }
  for (Conn& c : finished) c.thread.join();
}

void TcpStoreServer::State::accept_loop() {
  for (;;) {
    pollfd pf[2] = {{listen_fd, POLLIN, 0}, {wake[0], POLLIN, 0}};
    const int r = ::poll(pf, 2, 1000);
    if (r < 0 && errno != EINTR) return;
    {
      std::lock_guard lk(mu);
      if (stopping) return;
    }
    reap_finished();
    if (r <= 0 || !(pf[0].revents & POLLIN)) continue;
    const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    no_delay(fd);
    std::lock_guard lk(mu);
    if (static_cast<int>(conns.size()) >= limits.max_clients) {
      ::close(fd);
      ++refused;
      continue;
    }
    Conn& c = conns.emplace_back();
    c.fd = fd;
    c.thread = std::thread([this, &c] { serve(c); });
  }
}

void TcpStoreServer::State::serve(Conn& c) {
  const int fd = c.fd;
  auto refuse = [&](bool answer) {
    ++refused;  // counted before answering: whoever reads the answer sees the count
    if (answer) {
      const uint8_t bad = kBad;
      write_full(fd, &bad, 1);
    }
  };
  [&] {
    // The hello, within its deadline: a client that says nothing is dropped.
    const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(limits.hello_timeout_s * 1000));
    char magic[4];
    uint32_t n = 0;
    if (!read_full(fd, magic, 4, deadline) || std::memcmp(magic, kMagic, 4) != 0 || !read_full(fd, &n, 4, deadline) ||
        n > kMaxTokenBytes)
      return refuse(false);
    std::string token(n, '\0');
    if (!read_full(fd, token.data(), n, deadline)) return refuse(false);
    const uint8_t verdict = same_token(token, this->token) ? 0 : 1;
    if (verdict != 0) ++refused;  // before the answer, as above
    if (!write_full(fd, &verdict, 1) || verdict != 0) return;
    for (;;) {
      uint8_t op = 0;
      uint32_t klen = 0;
      if (!read_full(fd, &op, 1)) return;  // the client left
      if ((op != kSet && op != kGet) || !read_full(fd, &klen, 4) || klen > limits.max_key_bytes) return refuse(true);
      std::string key(klen, '\0');
      if (!read_full(fd, key.data(), klen)) return refuse(false);
      if (op == kSet) {
        uint64_t vlen = 0;
        if (!read_full(fd, &vlen, 8) || vlen > static_cast<uint64_t>(limits.max_value_bytes)) return refuse(true);
        {
          std::lock_guard lk(mu);
          auto old = data.find(key);  // a value replaced gives its room back
          const int64_t freed = old == data.end() ? 0 : static_cast<int64_t>(old->second.size());
          if (total_bytes - freed + static_cast<int64_t>(vlen) > limits.max_total_bytes) return refuse(true);
          total_bytes += static_cast<int64_t>(vlen);  // reserved before reading, so the cap holds
        }
        std::vector<char> value(vlen);
        const bool ok = read_full(fd, value.data(), vlen);
        {
          std::lock_guard lk(mu);
          if (!ok) {
            total_bytes -= static_cast<int64_t>(vlen);
          } else {
            auto it = data.find(key);
            if (it != data.end()) total_bytes -= static_cast<int64_t>(it->second.size());
            data[key] = std::move(value);
          }
        }
        if (!ok) return refuse(false);
        cv.notify_all();
        const uint8_t done = 0;
        if (!write_full(fd, &done, 1)) return;
      } else {
        uint32_t wait_ms = 0;
        if (!read_full(fd, &wait_ms, 4)) return refuse(false);
        std::vector<char> reply;
        {
          // Waits in slices, watching the client: one that hung up is not waited for.
          const auto until = Clock::now() + std::chrono::milliseconds(std::min<uint32_t>(wait_ms, kMaxWaitMs));
          std::unique_lock lk(mu);
          while (!stopping && !data.count(key) && Clock::now() < until) {
            cv.wait_for(lk, std::min<Clock::duration>(until - Clock::now(), std::chrono::milliseconds(50)));
            pollfd pf{fd, POLLRDHUP, 0};
            if (::poll(&pf, 1, 0) == 1 && (pf.revents & (POLLRDHUP | POLLHUP | POLLERR))) return;
          }
          auto it = data.find(key);
          if (it == data.end()) {
            reply.push_back(0);
          } else {
            reply.push_back(1);
            append<uint64_t>(reply, it->second.size());
            reply.insert(reply.end(), it->second.begin(), it->second.end());
          }
        }
        if (!write_full(fd, reply.data(), reply.size())) return;
      }
    }
  }();
  ::shutdown(fd, SHUT_RDWR);
  std::lock_guard lk(mu);
  ::close(fd);
  c.fd = -1;
  c.done = true;
}

TcpStoreServer::TcpStoreServer(const std::string& host, int port, std::string token, TcpStoreLimits limits)
    : s_(std::make_unique<State>()) {
  s_->host = host;
  s_->token = std::move(token);
  s_->limits = limits;
  const std::string what = "tcp store on " + host + ":" + std::to_string(port);
  if (s_->token.size() > kMaxTokenBytes) throw Error(what + ": the job token is longer than 1024 bytes");
  sockaddr_in a = resolve(host, port, what);
  s_->listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s_->listen_fd < 0) throw Error(what + ": socket: " + sys_error());
  int one = 1;
  ::setsockopt(s_->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(s_->listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(s_->listen_fd, 256) != 0) {
    const std::string e = sys_error();
    ::close(s_->listen_fd);
    throw Error(what + ": cannot listen: " + e);
  }
  socklen_t len = sizeof a;
  ::getsockname(s_->listen_fd, reinterpret_cast<sockaddr*>(&a), &len);
  s_->port = ntohs(a.sin_port);
  if (::pipe2(s_->wake, O_CLOEXEC) != 0) {
    ::close(s_->listen_fd);
    throw Error(what + ": pipe: " + sys_error());
  }
  s_->acceptor = std::thread([st = s_.get()] { st->accept_loop(); });
}

TcpStoreServer::~TcpStoreServer() {
  {
    std::lock_guard lk(s_->mu);
    s_->stopping = true;
    for (auto& c : s_->conns)
      if (c.fd >= 0) ::shutdown(c.fd, SHUT_RDWR);  // wakes its blocked read
  }
  s_->cv.notify_all();
  const char x = 0;
  (void)!::write(s_->wake[1], &x, 1);
  s_->acceptor.join();
  for (auto& c : s_->conns) c.thread.join();
  ::close(s_->listen_fd);
  ::close(s_->wake[0]);
  ::close(s_->wake[1]);
}

int TcpStoreServer::port() const { return s_->port; }
const std::string& TcpStoreServer::host() const { return s_->host; }
int64_t TcpStoreServer::refused() const { return s_->refused; }
int64_t TcpStoreServer::keys() const {
  std::lock_guard lk(s_->mu);
  return static_cast<int64_t>(s_->data.size());
}

void TcpStoreServer::set(const std::string& key, std::span<const char> value) {
  {
    std::lock_guard lk(s_->mu);
    auto& v = s_->data[key];
    s_->total_bytes += static_cast<int64_t>(value.size()) - static_cast<int64_t>(v.size());
    v.assign(value.begin(), value.end());
  }
  s_->cv.notify_all();
}

TcpStoreClient::TcpStoreClient(const std::string& host, int port, const std::string& token, double timeout_s)
    : host_(host), port_(port), timeout_s_(timeout_s) {
  const sockaddr_in a = resolve(host, port, where());
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  std::string last = "no attempt";
  for (;;) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) throw Error(where() + ": socket: " + sys_error());
    int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
    if (rc != 0 && errno == EINPROGRESS) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      pollfd pf{fd, POLLOUT, 0};
      rc = ::poll(&pf, 1, static_cast<int>(std::clamp<int64_t>(left, 1, 2000)));
      int err = 0;
      socklen_t len = sizeof err;
      if (rc == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) rc = 0;
      else errno = rc == 0 ? ETIMEDOUT : (err ? err : errno), rc = -1;
    }
    if (rc == 0) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      fd_ = fd;
      break;
    }
    last = sys_error();
    ::close(fd);
    if (Clock::now() >= deadline)
      throw Error(where() + ": cannot connect within " + std::to_string(static_cast<int64_t>(timeout_s)) + " s (" + last +
                  "); is the launcher or rank 0 up, and is the address right?");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  no_delay(fd_);
  sockaddr_in me{};
  socklen_t len = sizeof me;
  ::getsockname(fd_, reinterpret_cast<sockaddr*>(&me), &len);
  char buf[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &me.sin_addr, buf, sizeof buf);
  local_ = buf;
  std::vector<char> hello(kMagic, kMagic + 4);
  append<uint32_t>(hello, static_cast<uint32_t>(token.size()));
  hello.insert(hello.end(), token.begin(), token.end());
  uint8_t verdict = 2;
  if (!write_full(fd_, hello.data(), hello.size()) ||
      !read_full(fd_, &verdict, 1, Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)))) {
    ::close(fd_);
    throw Error(where() + ": the server closed the connection before welcoming this rank");
  }
  if (verdict != 0) {
    ::close(fd_);
    throw Error(where() + ": refused this rank's job token (another job's store, or TESSEL_JOB_TOKEN differs "
                          "from the launcher's)");
  }
}

TcpStoreClient::~TcpStoreClient() {
  if (fd_ >= 0) ::close(fd_);
}

void TcpStoreClient::usable() const {
  if (fd_ < 0) throw Error(where() + ": the connection failed earlier");
}

void TcpStoreClient::broken(const std::string& why) {
  // A reply may still be on its way: the conversation cannot go on.
  ::close(fd_);
  fd_ = -1;
  throw Error(why);
}

Clock::time_point TcpStoreClient::deadline(int wait_ms) const {
  return Clock::now() + std::chrono::milliseconds(wait_ms + static_cast<int64_t>(timeout_s_ * 1000));
}

std::string TcpStoreClient::secs() const {
  char b[32];
  std::snprintf(b, sizeof b, "%g s", timeout_s_);
  return b;
}

std::string TcpStoreClient::where() const { return "tcp store at " + host_ + ":" + std::to_string(port_); }

void TcpStoreClient::set(const std::string& key, std::span<const char> value) {
  std::vector<char> msg;
  msg.push_back(static_cast<char>(kSet));
  append<uint32_t>(msg, static_cast<uint32_t>(key.size()));
  msg.insert(msg.end(), key.begin(), key.end());
  append<uint64_t>(msg, value.size());
  msg.insert(msg.end(), value.begin(), value.end());
  std::lock_guard lk(mu_);
  usable();
  uint8_t r = kBad;
  if (!write_full(fd_, msg.data(), msg.size()) || !read_full(fd_, &r, 1, deadline(0)))
    broken(where() + ": no answer while setting '" + key + "' (connection lost, or nothing within " + secs() + ")");
  if (r != 0) broken(where() + ": refused setting '" + key + "' (" + std::to_string(value.size()) + " bytes: over its limits?)");
}

std::optional<std::vector<char>> TcpStoreClient::get_once(const std::string& key, int wait_ms) {
  std::vector<char> msg;
  msg.push_back(static_cast<char>(kGet));
  append<uint32_t>(msg, static_cast<uint32_t>(key.size()));
  msg.insert(msg.end(), key.begin(), key.end());
  append<uint32_t>(msg, static_cast<uint32_t>(wait_ms));
  std::lock_guard lk(mu_);
  usable();
  uint8_t found = kBad;
  const auto until = deadline(wait_ms);
  if (!write_full(fd_, msg.data(), msg.size()) || !read_full(fd_, &found, 1, until))
    broken(where() + ": no answer while reading '" + key + "' (connection lost, or nothing within " + secs() + ")");
  if (found == kBad) broken(where() + ": refused reading '" + key + "'");
  if (found == 0) return std::nullopt;
  uint64_t n = 0;
  if (!read_full(fd_, &n, 8, until) || n > (uint64_t{1} << 40))
    broken(where() + ": lost the connection while reading '" + key + "'");
  std::vector<char> v(n);
  if (!read_full(fd_, v.data(), n, until)) broken(where() + ": lost the connection while reading '" + key + "'");
  return v;
}

std::optional<std::vector<char>> TcpStoreClient::get(const std::string& key, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    auto v = get_once(key, static_cast<int>(std::clamp<int64_t>(left, 0, 100)));
    if (v || left <= 0) return v;
  }
}

}  // namespace tessel::runtime
