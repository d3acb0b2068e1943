// TCP ports on 127.0.0.1 for tests: one that a server started later may bind,
// and one that refuses connections. Include "tests/support/ports.hpp".
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <random>
#include <stdexcept>

namespace klynaa::test {

/// A TCP port on 127.0.0.1 that nothing listens on right now, for a server that
/// binds it later (another process, or a restart on the same port). Picked at
/// random below the kernel's ephemeral range (32768-60999 by default): a port
/// the kernel hands out itself could be taken by any outgoing connection before
/// the server binds it (it happened in CI). Throws when 200 tries find none.
inline int free_tcp_port() {
  static std::mt19937 rng{std::random_device{}()};
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int port = std::uniform_int_distribution<int>(20000, 32000)(rng);
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    const bool free = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    if (fd >= 0) ::close(fd);
    if (free) return port;
  }
  throw std::runtime_error("free_tcp_port: no free port between 20000 and 32000 on 127.0.0.1");
}

/// A port on 127.0.0.1 with nothing listening, so that a connect to it is
/// refused: bound by the kernel's choice, then released. Throws when it cannot
/// bind.
inline int closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("closed_port: cannot bind 127.0.0.1");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace klynaa::test
