// TLS under hiredis 0.14: OpenSSL on the TCP socket, hiredis on one end of a Unix socket pair, and a
// pump thread per connection moving bytes between the two. See redis_tls.h and docs/DESIGN.md.
#define _GNU_SOURCE
#include "redis_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { PUMP_BUFFER = 64 * 1024, PROBE_LIMIT = 512 };

static atomic_int live_pumps;

int outbox_redis_tls_pump_count(void) { return atomic_load(&live_pumps); }

// MARK: Small helpers

static void set_error(char *err, size_t errlen, const char *format, ...) {
    if (err == NULL || errlen == 0) return;
    va_list args;
    va_start(args, format);
    vsnprintf(err, errlen, format, args);
    va_end(args);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/// 1 when `fd` is ready for `events` before `deadline`, 0 on timeout, -1 on a poll error.
static int wait_until(int fd, short events, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

static int is_ip_address(const char *name) {
    unsigned char buffer[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, name, buffer) == 1 || inet_pton(AF_INET6, name, buffer) == 1;
}

/// The reason of the oldest error in this thread's OpenSSL queue (and clears it), or `fallback`.
static const char *openssl_reason(char *buffer, size_t size, const char *fallback) {
    unsigned long code = ERR_get_error();
    ERR_clear_error();
    if (code == 0) return fallback;
    const char *reason = ERR_reason_error_string(code);
    if (reason != NULL) return reason;
    ERR_error_string_n(code, buffer, size);
    return buffer;
}

// MARK: TCP

/// A connected, non-blocking TCP socket to host:port, or -1 with `err` set.
static int tcp_connect(const char *host, int port, long long deadline, int timeout_ms, char *err, size_t errlen) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *addresses = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int gai = getaddrinfo(host, service, &hints, &addresses);
    if (gai != 0) {
        set_error(err, errlen, "cannot resolve \"%s\": %s", host, gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
        return -1;
    }
    int fd = -1, last = 0, timed_out = 0;
    for (struct addrinfo *a = addresses; a != NULL && fd < 0 && !timed_out; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
        if (errno == EINPROGRESS) {
            int ready = wait_until(fd, POLLOUT, deadline);
            if (ready == 1) {
                int so_error = 0;
                socklen_t length = sizeof so_error;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &length) == 0 && so_error == 0) break;
                errno = so_error;
            } else if (ready == 0) {
                timed_out = 1;
            }
        }
        last = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(addresses);
    if (fd < 0) {
        if (timed_out) {
            set_error(err, errlen, "TCP connect timed out after %d ms", timeout_ms);
        } else {
            set_error(err, errlen, "%s", strerror(last ? last : ECONNREFUSED));
        }
        return -1;
    }
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    // As hiredis' redisEnableKeepAlive does for a plain connection: probes after 15 s idle.
    int idle = 15, interval = 5, count = 3;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    return fd;
}

// MARK: TLS set-up and errors

/// Never prompt on the terminal for a key's passphrase: an encrypted key fails to load instead.
static int no_passphrase(char *buffer, int size, int rwflag, void *userdata) {
    (void)buffer, (void)size, (void)rwflag, (void)userdata;
    return 0;
}

static SSL_CTX *make_context(const char *ca_file, const char *client_cert, const char *client_key, char *err, size_t errlen) {
    char scratch[256];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        set_error(err, errlen, "TLS set-up failed: %s", openssl_reason(scratch, sizeof scratch, "SSL_CTX_new"));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            set_error(err, errlen, "cannot load the CA file %s: %s", ca_file, openssl_reason(scratch, sizeof scratch, "no certificate in it"));
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        set_error(err, errlen, "cannot load the system's trust store: %s", openssl_reason(scratch, sizeof scratch, "unknown error"));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (client_cert != NULL || client_key != NULL) {
        if (client_cert == NULL || client_key == NULL) {
            set_error(err, errlen, "a client certificate needs both its certificate and its key");
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_certificate_chain_file(ctx, client_cert) != 1) {
            set_error(err, errlen, "cannot load the client certificate %s: %s", client_cert, openssl_reason(scratch, sizeof scratch, "unknown error"));
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, client_key, SSL_FILETYPE_PEM) != 1) {
            if (ERR_GET_REASON(ERR_peek_error()) == X509_R_KEY_VALUES_MISMATCH) {
                set_error(err, errlen, "the client key %s does not match the client certificate %s", client_key, client_cert);
            } else {
                set_error(err, errlen, "cannot load the client key %s (PEM, unencrypted): %s", client_key,
                          openssl_reason(scratch, sizeof scratch, "unknown error"));
            }
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            set_error(err, errlen, "the client key %s does not match the client certificate %s", client_key, client_cert);
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return ctx;
}

/// Appends `"name"` to `out` (comma-separated), within `size`.
static void append_name(char *out, size_t size, const char *name, size_t length) {
    size_t used = strlen(out);
    if (used + length + 6 >= size) return;
    snprintf(out + used, size - used, "%s\"%.*s\"", used ? ", " : "", (int)length, name);
}

/// The DNS and IP names of the server's certificate (its subject alternative names, else its common
/// name), for a "hostname mismatch" error. The verified peer is not kept after a failed
/// verification, but the chain the server sent is: its first certificate is the server's.
static void certificate_names(SSL *ssl, char *out, size_t size) {
    out[0] = 0;
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
    X509 *cert = chain != NULL && sk_X509_num(chain) > 0 ? sk_X509_value(chain, 0) : NULL;
    if (cert == NULL) return;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, i);
        if (name->type == GEN_DNS) {
            append_name(out, size, (const char *)ASN1_STRING_get0_data(name->d.dNSName), (size_t)ASN1_STRING_length(name->d.dNSName));
        } else if (name->type == GEN_IPADD) {
            char text[INET6_ADDRSTRLEN] = "";
            int length = ASN1_STRING_length(name->d.iPAddress);
            const unsigned char *bytes = ASN1_STRING_get0_data(name->d.iPAddress);
            if (length == 4 || length == 16) inet_ntop(length == 4 ? AF_INET : AF_INET6, bytes, text, sizeof text);
            if (text[0]) append_name(out, size, text, strlen(text));
        }
    }
    if (names != NULL) GENERAL_NAMES_free(names);
    if (out[0] == 0) {
        char common[256];
        int length = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, common, sizeof common);
        if (length > 0) append_name(out, size, common, (size_t)length);
    }
}

/// Describes why SSL_connect (or the probe's first read) failed with `code`.
static void describe_tls_failure(SSL *ssl, int code, const char *server_name, const char *ca_file, int client_cert_requested,
                                 int have_client_cert, char *err, size_t errlen) {
    char scratch[256];
    int saved = errno;
    long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
        const char *reason = X509_verify_cert_error_string(verify);
        if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH) {
            char names[512];
            certificate_names(ssl, names, sizeof names);
            set_error(err, errlen, "TLS certificate verify failed: %s (certificate is for %s; expected \"%s\")", reason,
                      names[0] ? names : "no name", server_name);
        } else if (verify == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY || verify == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
                   verify == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT || verify == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE) {
            set_error(err, errlen, "TLS certificate verify failed: %s (the server's certificate is not signed by a CA in %s)", reason,
                      ca_file ? ca_file : "the system's trust store");
        } else {
            set_error(err, errlen, "TLS certificate verify failed: %s", reason);
        }
        ERR_clear_error();
        return;
    }
    unsigned long queued = ERR_peek_error();
    int reason_code = ERR_GET_REASON(queued);
    int dropped = code == SSL_ERROR_SYSCALL && queued == 0;  // a reset or a close, no TLS alert
    const char *reason = dropped ? (saved != 0 ? strerror(saved) : "the server closed the connection")
                                 : openssl_reason(scratch, sizeof scratch, "unknown error");
    // A server that refuses a client certificate (or the lack of one) sends an alert, or, as
    // redis-server does at times, resets or closes the connection right after it.
    int refusal = dropped || reason_code == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ||
                  reason_code == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE || reason_code == SSL_R_TLSV1_ALERT_UNKNOWN_CA ||
                  reason_code == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE || reason_code == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN ||
                  reason_code == SSL_R_TLSV1_ALERT_DECRYPT_ERROR || reason_code == SSL_R_UNEXPECTED_EOF_WHILE_READING;
    if (client_cert_requested && refusal) {
        set_error(err, errlen, have_client_cert ? "TLS: the server refused the client certificate (%s)"
                                                : "TLS: the server requires a client certificate, and none is configured (%s)",
                  reason);
    } else if (dropped) {
        set_error(err, errlen, saved != 0 ? "TLS handshake failed: %s" : "%s during the TLS handshake (is it a TLS port?)", reason);
    } else if (reason_code == SSL_R_WRONG_VERSION_NUMBER || reason_code == SSL_R_PACKET_LENGTH_TOO_LONG) {
        set_error(err, errlen, "TLS handshake failed: %s (is it a TLS port?)", reason);
    } else {
        set_error(err, errlen, "TLS handshake failed: %s", reason);
    }
    ERR_clear_error();
}

static int note_certificate_request(SSL *ssl, void *arg) {
    (void)ssl;
    *(int *)arg = 1;
    return 1;
}

/// Runs `SSL_connect` (or, with `probe`, the first round trip) to completion before `deadline`.
/// Returns 1, or 0 with `err` set.
static int handshake(SSL *ssl, int fd, long long deadline, int timeout_ms, const char *server_name, const char *ca_file,
                     const int *client_cert_requested, int have_client_cert, char *err, size_t errlen) {
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(ssl);
        if (r == 1) return 1;
        int code = SSL_get_error(ssl, r);
        int ready;
        if (code == SSL_ERROR_WANT_READ) {
            ready = wait_until(fd, POLLIN, deadline);
        } else if (code == SSL_ERROR_WANT_WRITE) {
            ready = wait_until(fd, POLLOUT, deadline);
        } else {
            describe_tls_failure(ssl, code, server_name, ca_file, *client_cert_requested, have_client_cert, err, errlen);
            return 0;
        }
        if (ready == 0) {
            set_error(err, errlen, "TLS handshake timed out after %d ms (is it a TLS port?)", timeout_ms);
            return 0;
        }
        if (ready < 0) {
            set_error(err, errlen, "TLS handshake failed: poll: %s", strerror(errno));
            return 0;
        }
    }
}

/// With TLS 1.3 a client's handshake ends before the server has checked the client's certificate:
/// a refusal arrives as an alert on the first read. When the server asked for a certificate, one
/// inline PING (any reply, `+PONG` or `-NOAUTH …`, means the session was accepted) turns that late
/// refusal into a connect error instead of a lost connection on the first command. The reply is
/// consumed here; hiredis never sees it.
static int probe(SSL *ssl, int fd, long long deadline, int timeout_ms, const char *server_name, const char *ca_file,
                 int have_client_cert, char *err, size_t errlen) {
    static const char ping[] = "PING\r\n";
    size_t sent = 0;
    char reply[PROBE_LIMIT];
    size_t received = 0;
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r, code;
        if (sent < sizeof ping - 1) {
            r = SSL_write(ssl, ping + sent, (int)(sizeof ping - 1 - sent));
            if (r > 0) {
                sent += (size_t)r;
                continue;
            }
        } else {
            r = SSL_read(ssl, reply + received, (int)(sizeof reply - received));
            if (r > 0) {
                received += (size_t)r;
                if (memchr(reply, '\n', received) != NULL) return 1;
                if (received == sizeof reply) {
                    set_error(err, errlen, "TLS: the server's first reply is not Redis' (is it a Redis port?)");
                    return 0;
                }
                continue;
            }
        }
        code = SSL_get_error(ssl, r);
        int ready;
        if (code == SSL_ERROR_WANT_READ) {
            ready = wait_until(fd, POLLIN, deadline);
        } else if (code == SSL_ERROR_WANT_WRITE) {
            ready = wait_until(fd, POLLOUT, deadline);
        } else if (code == SSL_ERROR_ZERO_RETURN) {
            set_error(err, errlen, "the server closed the TLS session after the handshake%s",
                      have_client_cert ? "" : " (does it require a client certificate?)");
            return 0;
        } else {
            describe_tls_failure(ssl, code, server_name, ca_file, 1, have_client_cert, err, errlen);
            return 0;
        }
        if (ready == 0) {
            set_error(err, errlen, "TLS: no reply from the server within %d ms of the handshake", timeout_ms);
            return 0;
        }
        if (ready < 0) {
            set_error(err, errlen, "TLS: poll: %s", strerror(errno));
            return 0;
        }
    }
}

// MARK: The pump

struct pump {
    SSL *ssl;
    int net;    // the TCP socket (non-blocking)
    int local;  // our end of the socket pair (non-blocking); hiredis holds the other
    unsigned char *up;    // hiredis → server, read from `local`, not yet accepted by SSL_write
    size_t up_length;
    unsigned char *down;  // server → hiredis, from SSL_read, not yet written to `local`
    size_t down_length;
};

/// Moves bytes until either side ends. Non-blocking throughout: each pass tries every transfer that
/// has room and data until none progresses, then polls for exactly what the blocked ones wait on —
/// SSL_write and SSL_read may each want the socket readable *or* writable (WANT_READ/WANT_WRITE:
/// renegotiation, key updates), and a pending SSL_write is retried with the same bytes. SSL_read is
/// repeated until it wants the socket, so records OpenSSL has already buffered (SSL_pending) are
/// always delivered before polling: poll(2) cannot see them.
static void *pump_run(void *arg) {
    struct pump *p = arg;
    int local_open = 1, net_open = 1, clean = 1, half_closed = 0;
    short write_wants = 0, read_wants = 0;
    while (local_open) {
        int progress = 1;
        while (progress && local_open) {
            progress = 0;
            if (p->up_length < PUMP_BUFFER) {
                ssize_t n = recv(p->local, p->up + p->up_length, PUMP_BUFFER - p->up_length, 0);
                if (n > 0) {
                    p->up_length = net_open ? p->up_length + (size_t)n : 0;  // once the server is gone: discarded
                    progress = 1;
                } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                    local_open = 0;  // hiredis closed or shut down its end: the connection is over
                    break;
                }
            }
            if (net_open && p->up_length > 0) {
                ERR_clear_error();
                int r = SSL_write(p->ssl, p->up, (int)p->up_length);
                if (r > 0) {
                    memmove(p->up, p->up + r, p->up_length - (size_t)r);
                    p->up_length -= (size_t)r;
                    write_wants = 0;
                    progress = 1;
                } else {
                    int code = SSL_get_error(p->ssl, r);
                    if (code == SSL_ERROR_WANT_READ) write_wants = POLLIN;
                    else if (code == SSL_ERROR_WANT_WRITE) write_wants = POLLOUT;
                    else net_open = 0, clean = 0;
                }
            }
            if (net_open && p->down_length < PUMP_BUFFER) {
                ERR_clear_error();
                int r = SSL_read(p->ssl, p->down + p->down_length, (int)(PUMP_BUFFER - p->down_length));
                if (r > 0) {
                    p->down_length += (size_t)r;
                    read_wants = 0;
                    progress = 1;
                } else {
                    int code = SSL_get_error(p->ssl, r);
                    if (code == SSL_ERROR_WANT_READ) read_wants = POLLIN;
                    else if (code == SSL_ERROR_WANT_WRITE) read_wants = POLLOUT;
                    else net_open = 0, clean = code == SSL_ERROR_ZERO_RETURN;  // close_notify, EOF or a TLS error
                }
            }
            if (p->down_length > 0) {
                ssize_t n = send(p->local, p->down, p->down_length, MSG_NOSIGNAL);
                if (n > 0) {
                    memmove(p->down, p->down + n, p->down_length - (size_t)n);
                    p->down_length -= (size_t)n;
                    progress = 1;
                } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                    local_open = 0;
                    break;
                }
            }
        }
        if (!local_open) break;
        // The server's side is over and all it sent is handed on: hiredis reads end of file. Our
        // end stays open (what hiredis still writes is read and dropped) until hiredis closes its
        // own: a write to a socket whose peer is closed would raise SIGPIPE in hiredis' thread.
        if (!net_open && p->down_length == 0 && !half_closed) {
            shutdown(p->local, SHUT_WR);
            half_closed = 1;
            ERR_clear_error();
            SSL_free(p->ssl);  // the TCP connection is released now, not when hiredis gets round to it
            p->ssl = NULL;
            close(p->net);
            p->net = -1;
        }

        // Only what a blocked transfer waits for: an fd polled for nothing would still report
        // POLLHUP/POLLERR at once, and the loop would spin. hiredis closing or shutting down its end
        // (RDHUP) is always watched: it ends the pump even while the server is not reading.
        struct pollfd fds[2] = {
            {.fd = p->local, .events = POLLRDHUP},
            {.fd = -1, .events = 0},
        };
        if (p->up_length < PUMP_BUFFER) fds[0].events |= POLLIN;
        if (p->down_length > 0) fds[0].events |= POLLOUT;
        if (net_open) {
            short wants = 0;
            if (p->up_length > 0) wants |= write_wants;
            if (p->down_length < PUMP_BUFFER) wants |= read_wants;
            if (wants) fds[1] = (struct pollfd){.fd = p->net, .events = wants};
        }
        if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
        if (fds[0].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) break;
    }
    if (net_open && clean) {
        ERR_clear_error();
        SSL_shutdown(p->ssl);  // one non-blocking close_notify, best effort
    }
    ERR_clear_error();
    if (p->ssl != NULL) SSL_free(p->ssl);
    if (p->net >= 0) close(p->net);
    close(p->local);
    free(p->up);
    free(p->down);
    free(p);
    atomic_fetch_sub(&live_pumps, 1);
    return NULL;
}

/// Starts the pump for `ssl` on `net`; returns hiredis' descriptor, or -1 with `err` set (and
/// `ssl`, `net` left to the caller).
static int start_pump(SSL *ssl, int net, char *err, size_t errlen) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
        set_error(err, errlen, "socketpair: %s", strerror(errno));
        return -1;
    }
    struct pump *p = calloc(1, sizeof *p);
    unsigned char *up = malloc(PUMP_BUFFER), *down = malloc(PUMP_BUFFER);
    if (p == NULL || up == NULL || down == NULL || fcntl(pair[1], F_SETFL, O_NONBLOCK) != 0) {
        set_error(err, errlen, "out of memory starting the TLS pump");
        free(p), free(up), free(down);
        close(pair[0]), close(pair[1]);
        return -1;
    }
    *p = (struct pump){.ssl = ssl, .net = net, .local = pair[1], .up = up, .down = down};
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attributes, 256 * 1024);
    // The pump takes no signals (it inherits this mask): they go to the process' other threads,
    // and a write to a closed peer returns EPIPE instead of raising SIGPIPE.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pthread_t thread;
    atomic_fetch_add(&live_pumps, 1);
    int failed = pthread_create(&thread, &attributes, pump_run, p);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    pthread_attr_destroy(&attributes);
    if (failed) {
        atomic_fetch_sub(&live_pumps, 1);
        set_error(err, errlen, "cannot start the TLS pump thread: %s", strerror(failed));
        free(p), free(up), free(down);
        close(pair[0]), close(pair[1]);
        return -1;
    }
    return pair[0];
}

// MARK: Entry point

int outbox_redis_tls_connect(const char *host, int port, const char *ca_file, const char *server_name,
                             const char *client_cert, const char *client_key, int connect_timeout_ms,
                             char *err, size_t errlen) {
    if (err != NULL && errlen > 0) err[0] = 0;
    if (server_name == NULL || server_name[0] == 0) server_name = host;
    if (connect_timeout_ms <= 0) connect_timeout_ms = 1;
    long long deadline = now_ms() + connect_timeout_ms;

    // The handshake runs on the caller's thread: a write to a peer that went away must return EPIPE,
    // not kill the process with SIGPIPE. Blocked here, and a SIGPIPE raised meanwhile consumed.
    sigset_t pipe_only, previous;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &previous);

    int result = -1;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    int fd = tcp_connect(host, port, deadline, connect_timeout_ms, err, errlen);
    if (fd < 0) goto done;
    ctx = make_context(ca_file, client_cert, client_key, err, errlen);
    if (ctx == NULL) goto done;
    ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1) {
        set_error(err, errlen, "TLS set-up failed: SSL_new");
        goto done;
    }
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    int name_set;
    if (is_ip_address(server_name)) {
        name_set = X509_VERIFY_PARAM_set1_ip_asc(param, server_name);  // no SNI for an address (RFC 6066)
    } else {
        name_set = X509_VERIFY_PARAM_set1_host(param, server_name, 0) && SSL_set_tlsext_host_name(ssl, server_name);
    }
    if (!name_set) {
        set_error(err, errlen, "TLS: \"%s\" is not a valid server name", server_name);
        goto done;
    }
    int client_cert_requested = 0;
    SSL_set_cert_cb(ssl, note_certificate_request, &client_cert_requested);
    if (!handshake(ssl, fd, deadline, connect_timeout_ms, server_name, ca_file, &client_cert_requested, client_cert != NULL, err,
                   errlen)) {
        goto done;
    }
    if (client_cert_requested && !probe(ssl, fd, deadline, connect_timeout_ms, server_name, ca_file, client_cert != NULL, err, errlen)) {
        goto done;
    }
    SSL_set_cert_cb(ssl, NULL, NULL);  // the flag it points at is about to go out of scope
    result = start_pump(ssl, fd, err, errlen);
    if (result >= 0) ssl = NULL, fd = -1;  // the pump owns them now

done:
    if (ssl != NULL) SSL_free(ssl);
    if (ctx != NULL) SSL_CTX_free(ctx);  // the SSL (now the pump's) holds its own reference
    if (fd >= 0) close(fd);
    ERR_clear_error();
    sigset_t pending;
    if (!sigismember(&previous, SIGPIPE) && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_only, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    return result;
}
