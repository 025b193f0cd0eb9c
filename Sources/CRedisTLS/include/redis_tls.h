#ifndef OUTBOX_REDIS_TLS_H
#define OUTBOX_REDIS_TLS_H

#include <stddef.h>

/// TLS for Redis under hiredis 0.14, which has none of its own (docs/DESIGN.md, "Redis over TLS").
///
/// Connects to `host:port` over TCP, completes a TLS handshake (TLS 1.2 or later) that verifies the
/// server's certificate against `ca_file` (the system's trust store when NULL) and `server_name`
/// (a DNS name, or an IP address checked against the certificate's IP entries; NULL: `host`), sent
/// as SNI unless it is an IP address, and presents `client_cert` / `client_key` (PEM) when given.
/// TCP connect, handshake and (when the server asked for a client certificate) a first round trip
/// that proves the server accepted it all fit in `connect_timeout_ms`. Blocks the calling thread.
///
/// On success returns a blocking descriptor for `redisConnectFd`: one end of a Unix socket pair
/// whose other end a thread of this layer (the pump) relays to and from the TLS connection. When
/// the server closes the connection or an I/O or TLS error occurs, the pump closes the TLS
/// connection and the caller reads end of file (its writes still succeed, and are dropped). The
/// pump ends, closing its descriptors, when the caller closes or `shutdown(2)`s the returned
/// descriptor. On failure returns -1 and writes a one-line reason (never a secret: this layer is
/// given none) into `err`.
int outbox_redis_tls_connect(const char *host, int port, const char *ca_file, const char *server_name,
                             const char *client_cert, const char *client_key, int connect_timeout_ms,
                             char *err, size_t errlen);

/// The number of pump threads running now (tests check that none outlives its connection).
int outbox_redis_tls_pump_count(void);

#endif
