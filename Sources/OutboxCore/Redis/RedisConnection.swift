import CHiredis
import Foundation
import Glibc
import Logging

/// How to reach Redis: `redis://[:password@]host[:port][/db]`, or `rediss://…` for TLS (see
/// ``RedisTLSOptions``). The password is a secret.
public struct RedisConfiguration: Sendable {
    public var url: String
    /// Overrides any password in `url`.
    public var password: String?
    public var connectTimeout: Duration = .seconds(5)
    /// Upper bound on one command or pipeline round trip.
    public var commandTimeout: Duration = .seconds(10)
    /// `url` names one node of a Redis Cluster; the others are discovered (``RedisCluster``).
    public var cluster = false
    /// A cluster node's address, in place of the url's host and port (same credentials).
    public var node: RedisNodeAddress?
    /// For a `rediss://` url: the CA, server name and client certificate (RedisTLS.swift).
    public var tls = RedisTLSOptions()

    public init(url: String, password: String? = nil) {
        self.url = url
        self.password = password
    }

    public var redactedURL: String { SecretAddress.redacted(url) }

    struct Endpoint {
        var host: String
        var port: Int32
        var username: String?
        var password: String?
        var database: Int
        /// `rediss://`: TLS through the project's layer under hiredis (RedisTLS.swift). No default:
        /// an endpoint made for another node must say, or it would silently fall back to plain TCP.
        var tls: Bool
    }

    func endpoint() throws -> Endpoint {
        guard let parts = URLParts(url), parts.scheme == "redis" || parts.scheme == "rediss", !parts.host.isEmpty else {
            throw RedisError(
                code: .connectionFailed, message: "redis url must look like redis://[:password@]host[:port][/db] (rediss:// for TLS)")
        }
        let dbText = parts.path.drop(while: { $0 == "/" })
        guard dbText.isEmpty || Int(dbText) != nil else {
            throw RedisError(code: .connectionFailed, message: "redis url database must be a number, got \"\(dbText)\"")
        }
        let user = parts.user.flatMap { $0.isEmpty ? nil : $0 }
        return Endpoint(
            host: node?.host ?? parts.host, port: Int32(node?.port ?? parts.port ?? 6379), username: user,
            password: password ?? parts.password.flatMap { $0.isEmpty ? nil : $0 },
            database: Int(dbText) ?? 0, tls: parts.scheme == "rediss")
    }
}

/// A Redis reply, typed.
public enum RedisReply: Sendable, Hashable {
    case status(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    case null
    case array([RedisReply])

    /// Bulk or status replies as UTF-8 text.
    public var string: String? {
        switch self {
        case .bulk(let b): String(decoding: b, as: UTF8.self)
        case .status(let s): s
        default: nil
        }
    }

    public var integer: Int64? {
        if case .integer(let i) = self { return i }
        return nil
    }

    public var array: [RedisReply]? {
        if case .array(let a) = self { return a }
        return nil
    }
}

public struct RedisError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: String
        public static let connectionFailed = Code(raw: "connection failed")
        /// The connection broke during a call; its outcome is unknown.
        public static let connectionLost = Code(raw: "connection lost")
        /// The server answered with an error reply (`ERR …`, `WRONGTYPE …`, `NOSCRIPT …`).
        public static let server = Code(raw: "server error")
        public var description: String { raw }
    }

    public let code: Code
    public let message: String

    public var description: String { "redis \(code): \(message)" }
}

/// Binary-safe command arguments, encoded as RESP bulk strings as they are appended, so a long
/// pipeline is built without a string or array per argument.
public struct RedisArguments: Sendable, Hashable {
    /// `$<length>\r\n<bytes>\r\n` for each argument, in order.
    public private(set) var encoded: [UInt8] = []
    public private(set) var count = 0
    /// The length of the longest argument: Redis refuses a bulk string over `proto-max-bulk-len`.
    public private(set) var longest = 0

    public init(reservingCapacity bytes: Int = 0) {
        encoded.reserveCapacity(bytes)
    }

    public init(_ arguments: some Sequence<String>, reservingCapacity bytes: Int = 0) {
        encoded.reserveCapacity(bytes)
        for argument in arguments { append(argument) }
    }

    public mutating func append(_ argument: String) {
        var argument = argument
        argument.withUTF8 { append(bytes: $0) }
    }

    public mutating func append(bytes: some Collection<UInt8>) {
        appendHeader(length: bytes.count)
        encoded.append(contentsOf: bytes)
        appendCRLF()
    }

    public mutating func append(_ number: some BinaryInteger) {
        let digits = String(number).utf8  // a small string: no allocation
        appendHeader(length: digits.count)
        encoded.append(contentsOf: digits)
        appendCRLF()
    }

    /// Appends all of `other`'s arguments after these.
    public mutating func append(contentsOf other: RedisArguments) {
        encoded.append(contentsOf: other.encoded)
        count += other.count
        longest = max(longest, other.longest)
    }

    private mutating func appendHeader(length: Int) {
        count += 1
        longest = max(longest, length)
        encoded.append(UInt8(ascii: "$"))
        encoded.append(contentsOf: String(length).utf8)
        appendCRLF()
    }

    private mutating func appendCRLF() {
        encoded.append(13)
        encoded.append(10)
    }

    /// The arguments as UTF-8 text (tests and diagnostics).
    public var strings: [String] {
        var result: [String] = []
        var i = encoded.startIndex
        while i < encoded.endIndex {
            let digits = encoded[(i + 1)...].prefix { $0 != 13 }
            let start = digits.endIndex + 2
            let end = start + Int(String(decoding: digits, as: UTF8.self))!
            result.append(String(decoding: encoded[start..<end], as: UTF8.self))
            i = end + 2
        }
        return result
    }
}

/// A command, encoded in Redis' wire protocol (RESP) once, when it is made.
public struct RedisCommand: Sendable, Hashable {
    /// `*<count>\r\n` followed by the arguments.
    public let encoded: [UInt8]

    public init(_ arguments: String...) {
        self.init(RedisArguments(arguments))
    }

    public init(_ arguments: [String]) {
        self.init(RedisArguments(arguments))
    }

    public init(bytes: [[UInt8]]) {
        var arguments = RedisArguments()
        for argument in bytes { arguments.append(bytes: argument) }
        self.init(arguments)
    }

    public init(_ arguments: RedisArguments) {
        var encoded = Array("*\(arguments.count)\r\n".utf8)
        encoded.reserveCapacity(encoded.count + arguments.encoded.count)
        encoded.append(contentsOf: arguments.encoded)
        self.encoded = encoded
    }
}

/// A Lua script run with EVALSHA. The connection loads it with SCRIPT LOAD on first use and again
/// whenever the server answers `NOSCRIPT` (e.g. after a restart).
public struct RedisScript: Sendable, Hashable {
    public let source: String

    public init(_ source: String) {
        self.source = source
    }
}

/// One hiredis connection, driven from its own serial queue (DESIGN §6).
///
/// Every hiredis call is a blocking call in a synchronous actor-isolated method on the
/// connection's private queue. Cancellation shuts the socket down, which ends a blocked read;
/// the next call reconnects. Server error replies inside a pipeline come back as `.error`.
public actor RedisConnection {
    private let executor: BlockingExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    private let configuration: RedisConfiguration
    private let endpoint: RedisConfiguration.Endpoint
    private let redactor: Redactor
    private let logger: Logger
    private var context: UnsafeMutablePointer<redisContext>?
    private var scriptSHAs: [RedisScript: String] = [:]

    public static func connect(_ configuration: RedisConfiguration, logger: Logger) async throws -> RedisConnection {
        let connection = try RedisConnection(configuration: configuration, logger: logger)
        try await connection.open()
        return connection
    }

    private init(configuration: RedisConfiguration, logger: Logger) throws {
        self.executor = BlockingExecutor(label: "outbox.redis")
        self.configuration = configuration
        self.endpoint = try configuration.endpoint()
        self.redactor = Redactor(secrets: [configuration.password, endpoint.password] + SecretAddress.secrets(in: configuration.url))
        self.logger = logger
    }

    isolated deinit {
        if let context { redisFree(context) }
    }

    public func close() {
        executor.preconditionOnQueue()
        if let context { redisFree(context) }
        context = nil
    }

    /// Runs one command. An error reply throws ``RedisError`` with code `.server`.
    @discardableResult
    public func command(_ command: RedisCommand) async throws -> RedisReply {
        let reply = try await pipeline([command])[0]
        if case .error(let message) = reply { throw RedisError(code: .server, message: message) }
        return reply
    }

    @discardableResult
    public func command(_ arguments: String...) async throws -> RedisReply {
        try await command(RedisCommand(arguments))
    }

    /// Sends all commands, then reads all replies: one round trip. Replies are in command order;
    /// a failed command's reply is `.error` and does not affect its neighbours.
    public func pipeline(_ commands: [RedisCommand]) async throws -> [RedisReply] {
        let hook = CancellationHook()
        return try await withTaskCancellationHandler {
            try self.runPipeline(commands, hook: hook)
        } onCancel: {
            hook.fire()
        }
    }

    /// The SHA1 of `script` on this server, loading it (SCRIPT LOAD) when this connection has not.
    /// Pass `reload: true` after a `NOSCRIPT` reply.
    public func scriptSHA(_ script: RedisScript, reload: Bool = false) async throws -> String {
        if !reload, let known = scriptSHAs[script] { return known }
        guard let loaded = try await command("SCRIPT", "LOAD", script.source).string else {
            throw RedisError(code: .server, message: "SCRIPT LOAD returned no sha1")
        }
        scriptSHAs[script] = loaded
        return loaded
    }

    /// Runs `script` with EVALSHA, loading it first when this connection has not yet, and again
    /// on `NOSCRIPT`. Returns the script's reply; an error reply throws.
    public func evaluate(_ script: RedisScript, keys: [String], arguments: [String]) async throws -> RedisReply {
        for attempt in 0..<2 {
            let sha = try await scriptSHA(script, reload: attempt > 0)
            let reply = try await pipeline([RedisCommand(["EVALSHA", sha, String(keys.count)] + keys + arguments)])[0]
            guard case .error(let message) = reply else { return reply }
            guard message.hasPrefix("NOSCRIPT"), attempt == 0 else { throw RedisError(code: .server, message: message) }
        }
        preconditionFailure("unreachable: the second attempt returns or throws")
    }

    // MARK: Blocking implementation (connection queue only)

    private func open() throws {
        executor.preconditionOnQueue()
        _ = try liveContext()
    }

    private func liveContext() throws -> UnsafeMutablePointer<redisContext> {
        executor.preconditionOnQueue()
        if let context, context.pointee.err == 0 { return context }
        if let context {
            logger.info("Reconnecting to Redis")
            redisFree(context)
            self.context = nil
        }
        guard let fresh = try endpoint.tls
            ? RedisTLS.context(
                host: endpoint.host, port: endpoint.port, options: configuration.tls, timeout: configuration.connectTimeout, redactor: redactor)
            : redisConnectWithTimeout(endpoint.host, endpoint.port, timeval(configuration.connectTimeout))
        else {
            throw RedisError(code: .connectionFailed, message: "out of memory creating a hiredis context")
        }
        if fresh.pointee.err != 0 {
            let message = redactor.redact(String(cString: chiredis_errstr(fresh)))
            redisFree(fresh)
            throw RedisError(code: .connectionFailed, message: "\(endpoint.host):\(endpoint.port): \(message)")
        }
        redisSetTimeout(fresh, timeval(configuration.commandTimeout))
        // Over TLS hiredis holds a Unix socket (keepalive would fail on it); the TLS layer sets it on TCP.
        if !endpoint.tls { redisEnableKeepAlive(fresh) }
        context = fresh
        var handshake: [(name: String, command: RedisCommand)] = []
        if let password = endpoint.password {
            handshake.append(("AUTH", RedisCommand(endpoint.username.map { ["AUTH", $0, password] } ?? ["AUTH", password])))
        }
        if endpoint.database != 0 { handshake.append(("SELECT", RedisCommand("SELECT", String(endpoint.database)))) }
        do {
            for ((name, _), reply) in zip(handshake, try exchange(fresh, handshake.map(\.command), hook: nil)) {
                if case .error(let message) = reply {
                    throw RedisError(code: .connectionFailed, message: "\(name) failed: \(redactor.redact(message))")
                }
            }
        } catch {
            redisFree(fresh)
            context = nil
            throw error
        }
        return fresh
    }

    private func runPipeline(_ commands: [RedisCommand], hook: CancellationHook) throws -> [RedisReply] {
        executor.preconditionOnQueue()
        let context = try liveContext()
        let fd = context.pointee.fd
        return try hook.armed({ _ = shutdown(fd, Int32(SHUT_RDWR)) }) {
            do {
                return try exchange(context, commands, hook: hook)
            } catch let error as RedisError where hook.isCancelled {
                _ = error
                throw CancellationError()
            }
        }
    }

    private func exchange(_ context: UnsafeMutablePointer<redisContext>, _ commands: [RedisCommand], hook: CancellationHook?)
        throws -> [RedisReply]
    {
        for command in commands {
            let status = command.encoded.withUnsafeBufferPointer { bytes in
                bytes.withMemoryRebound(to: CChar.self) { redisAppendFormattedCommand(context, $0.baseAddress, $0.count) }
            }
            guard status == REDIS_OK else { throw lost(context) }
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReply(context, &raw) == REDIS_OK, let raw else { throw lost(context) }
            let reply = raw.assumingMemoryBound(to: redisReply.self)
            replies.append(Self.convert(reply))
            freeReplyObject(raw)
        }
        return replies
    }

    private func lost(_ context: UnsafeMutablePointer<redisContext>) -> RedisError {
        let message = redactor.redact(String(cString: chiredis_errstr(context)))
        // Force a reconnect on the next call even if hiredis did not flag the context.
        if context.pointee.err == 0 { context.pointee.err = Int32(REDIS_ERR_IO) }
        return RedisError(code: .connectionLost, message: message.isEmpty ? "connection lost" : message)
    }

    static func convert(_ reply: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            return .bulk(Array(UnsafeRawBufferPointer(start: r.str, count: Int(r.len))))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: UnsafeRawBufferPointer(start: r.str, count: Int(r.len)), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: UnsafeRawBufferPointer(start: r.str, count: Int(r.len)), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(r.integer))
        case REDIS_REPLY_ARRAY:
            return .array((0..<Int(r.elements)).map { convert(r.element[$0]!) })
        default:
            return .null
        }
    }
}

private func timeval(_ duration: Duration) -> Glibc.timeval {
    let (seconds, attoseconds) = duration.components
    return Glibc.timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
}
