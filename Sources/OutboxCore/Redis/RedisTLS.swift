import CHiredis
import CRedisTLS
import Glibc

/// TLS for a `rediss://` url: how the server is verified and what the relay presents.
///
/// Debian 12's hiredis 0.14 has no TLS, so the connection is made by the project's own layer
/// under it (`Sources/CRedisTLS`): OpenSSL on the TCP socket, hiredis on one end of a socket pair
/// attached with `redisConnectFd`, a pump thread per connection between them (docs/DESIGN.md,
/// "Redis over TLS"). The server is always verified: its certificate must chain to `caFile` (the
/// system's trust store when nil) and name ``serverName(forHost:)``; TLS 1.2 or later.
public struct RedisTLSOptions: Sendable, Equatable {
    /// A CA bundle (PEM) to verify the server with, instead of the system's trust store.
    public var caFile: String?
    /// The name the server's certificate must carry, sent as SNI; nil: the host connected to.
    public var serverName: String?
    /// A client certificate (PEM, its chain after it) and its unencrypted key, for a server that
    /// requires one (`tls-auth-clients yes`). Both or neither.
    public var clientCertificateFile: String?
    public var clientKeyFile: String?

    public init(caFile: String? = nil, serverName: String? = nil, clientCertificateFile: String? = nil, clientKeyFile: String? = nil) {
        self.caFile = caFile
        self.serverName = serverName
        self.clientCertificateFile = clientCertificateFile
        self.clientKeyFile = clientKeyFile
    }

    /// The name a connection to `host` verifies: ``serverName`` when set, else `host` itself. The
    /// same rule serves the url's host and any other node of the deployment (a Redis Cluster node
    /// discovered at another host and port gets the same CA, client certificate and this name).
    public func serverName(forHost host: String) -> String {
        serverName ?? host
    }

    /// The config keys that are set, for "applies only to rediss://" errors.
    var keysSet: [String] {
        [("redis.ca_file", caFile), ("redis.tls_server_name", serverName), ("redis.client_cert_file", clientCertificateFile),
         ("redis.client_key_file", clientKeyFile)].compactMap { $0.1 == nil ? nil : $0.0 }
    }
}

extension RedisConfiguration {
    /// A contradiction between the url and its TLS settings, as (key, problem); nil when there is none.
    func tlsProblem() -> (key: String, problem: String)? {
        let usesTLS = URLParts(url)?.scheme == "rediss"
        if !usesTLS, let key = tls.keysSet.first {
            return (key, "applies only to a rediss:// redis.url (TLS); redis.url is redis://, which is plain TCP")
        }
        if (tls.clientCertificateFile == nil) != (tls.clientKeyFile == nil) {
            let missing = tls.clientCertificateFile == nil ? "redis.client_cert_file" : "redis.client_key_file"
            return (missing, "redis.client_cert_file and redis.client_key_file go together")
        }
        if let name = tls.serverName {
            let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:")
            guard !name.isEmpty, name.count <= 253, name.allSatisfy({ allowed.contains($0) }) else {
                return ("redis.tls_server_name", "must be a DNS name or an IP address, like redis.example.com")
            }
        }
        return nil
    }
}

/// Opens hiredis contexts over the project's TLS layer.
enum RedisTLS {
    /// A hiredis context on a TLS connection to `host:port` (TCP connect, handshake and
    /// verification within `timeout`), or a ``RedisError`` with code `.connectionFailed` naming the
    /// host and the cause. Blocks: call it on the connection's own queue only (DESIGN §6).
    static func context(host: String, port: Int32, options: RedisTLSOptions, timeout: Duration, redactor: Redactor) throws
        -> UnsafeMutablePointer<redisContext>
    {
        var message = [CChar](repeating: 0, count: 512)
        let (seconds, attoseconds) = timeout.components
        let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        let fd = outbox_redis_tls_connect(
            host, port, options.caFile, options.serverName(forHost: host), options.clientCertificateFile, options.clientKeyFile,
            max(milliseconds, 1), &message, message.count)
        guard fd >= 0 else {
            let reason = redactor.redact(String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            throw RedisError(code: .connectionFailed, message: "\(host):\(port): \(reason)")
        }
        // hiredis owns the descriptor from here: redisFree closes it, which ends the pump.
        guard let context = redisConnectFd(fd) else {
            close(fd)
            throw RedisError(code: .connectionFailed, message: "out of memory creating a hiredis context")
        }
        return context
    }

    /// Pump threads running in this process (tests: none may outlive its connection).
    static var pumpCount: Int { Int(outbox_redis_tls_pump_count()) }
}
