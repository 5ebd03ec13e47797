#include "serve/client_connection.h"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>  // strtol
#include <string>

namespace moex::serve {
namespace {

// A host as cpp-httplib writes it into a request (numeric).
bool numeric_host(const sockaddr_storage& addr, socklen_t len, std::string* host) {
  char h[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, h, sizeof h, nullptr, 0,
                  NI_NUMERICHOST) != 0)
    return false;
  *host = h;
  return true;
}

int port_of(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  if (addr.ss_family == AF_INET6)
    return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  return -1;
}

// Cheapest test first: most descriptors are no connected socket (getpeername fails), and the
// ports tell most connections apart before any address is formatted.
bool has_addresses(int fd, const httplib::Request& req) {
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof local, peer_len = sizeof peer;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
      port_of(peer) != req.remote_port ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
      port_of(local) != req.local_port)
    return false;
  std::string local_host, peer_host;
  return numeric_host(local, local_len, &local_host) && numeric_host(peer, peer_len, &peer_host) &&
         local_host == req.local_addr && peer_host == req.remote_addr;
}

}  // namespace

ClientConnection::ClientConnection(const httplib::Request& req) {
  if (req.remote_port <= 0 || req.local_port <= 0) return;
  // Two sockets never share both ends, so at most one matches; the connection stays open (and its
  // descriptor with it) until its handler has returned.
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  const int listing = dirfd(dir);
  while (const dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == listing) continue;
    if (has_addresses(static_cast<int>(fd), req)) {
      fd_ = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
}

bool ClientConnection::gone() const {
  if (fd_ < 0) return false;
  char byte;
  const ssize_t got = recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (got > 0) return false;
  if (got == 0) return true;  // the peer's end of stream
  return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

}  // namespace moex::serve
