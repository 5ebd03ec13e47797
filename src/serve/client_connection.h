// Whether the client of a request has gone away, for handlers that wait (a non-streaming
// generation, a stream before its first token). cpp-httplib (Debian's 0.11) serves a connection's
// requests on one pool thread but neither tells a handler that its client closed the connection
// nor hands it the socket; the request carries both ends' addresses, which name the connection's
// socket among the process's open descriptors (docs/architecture.md, "Clients that leave").
#pragma once

#include <httplib.h>

namespace moex::serve {

class ClientConnection {
 public:
  // Finds the socket whose local and peer addresses are the request's (none for a request that
  // did not come over TCP, e.g. a test's direct call).
  explicit ClientConnection(const httplib::Request& req);
  // The peer closed or reset the connection. A peer with unread bytes waiting (a pipelined next
  // request) is still there.
  bool gone() const;

 private:
  int fd_ = -1;
};

}  // namespace moex::serve
