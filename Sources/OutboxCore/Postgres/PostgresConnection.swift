import CLibPQ
import Dispatch
import Foundation
import Glibc
import Logging

/// One libpq connection, driven from its own serial queue (DESIGN §6).
///
/// Every libpq call runs in a synchronous, actor-isolated method on the connection's private
/// `DispatchQueue`; async callers suspend while it blocks, leaving the cooperative pool free.
/// Task cancellation sends `PQcancel` to the server (or wakes a LISTEN wait).
///
/// A connection runs one statement at a time. Inside ``transaction(_:)``, statements from other
/// tasks wait until the transaction ends, so a shared connection cannot interleave with it.
public actor PostgresConnection {
    let executor: BlockingExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    private let configuration: PostgresConfiguration
    let redactor: Redactor
    let logger: Logger
    private let noticeSink: NoticeSink
    private var conn: OpaquePointer?
    private var canceller: OpaquePointer?
    /// Woken by cancellation of a LISTEN wait (`eventfd`).
    let wakeFD: Int32
    var listenChannels: Set<String> = []
    /// Names of the statements prepared in the current session (``PostgresStatement/prepared``).
    var preparedStatements: Set<String> = []
    var pendingNotifications: [PostgresNotification] = []

    // Transaction ownership: statements from other tasks wait while a transaction is open.
    @TaskLocal static var transactionToken: UInt64?
    var activeTransaction: UInt64?
    var nextTransactionToken: UInt64 = 1
    var transactionWaiters: [CheckedContinuation<Void, Never>] = []
    /// Set when the connection broke inside a transaction: statements fail until it ends.
    var transactionBroken = false

    /// Connects, or throws a ``PostgresError`` with code `.connectionFailed`.
    public static func connect(_ configuration: PostgresConfiguration, logger: Logger) async throws
        -> PostgresConnection
    {
        let connection = PostgresConnection(configuration: configuration, logger: logger)
        try await connection.open()
        return connection
    }

    private init(configuration: PostgresConfiguration, logger: Logger) {
        self.executor = BlockingExecutor(label: "outbox.postgres")
        self.configuration = configuration
        self.redactor = configuration.redactor
        self.logger = logger
        self.noticeSink = NoticeSink(logger: logger)
        self.wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
    }

    isolated deinit {
        if let canceller { PQfreeCancel(canceller) }
        if let conn { PQfinish(conn) }
        Glibc.close(wakeFD)
    }

    /// Closes the connection. Later calls reconnect.
    public func close() {
        executor.preconditionOnQueue()
        dropConnection()
    }

    /// The server's process id for this session (for `pg_terminate_backend` in tests and ops).
    public func backendPID() -> Int32 {
        executor.preconditionOnQueue()
        return conn.map { PQbackendPID($0) } ?? 0
    }

    // MARK: Statements

    /// Runs one statement with bound parameters and returns its rows.
    @discardableResult
    public func query(_ sql: String, _ parameters: [PostgresValue] = []) async throws -> PostgresResult {
        try await awaitTurn()
        let hook = CancellationHook()
        return try await withTaskCancellationHandler {
            try self.runQuery(sql, parameters, hook: hook)
        } onCancel: {
            hook.fire()
        }
    }

    /// Runs SQL text that may hold several statements and no parameters (simple query protocol),
    /// e.g. a migration file.
    public func simpleQuery(_ sql: String) async throws {
        try await awaitTurn()
        let hook = CancellationHook()
        try await withTaskCancellationHandler {
            try self.runSimpleQuery(sql, hook: hook)
        } onCancel: {
            hook.fire()
        }
    }

    // MARK: Blocking implementation (connection queue only)

    private func open() throws {
        executor.preconditionOnQueue()
        try connectBlocking()
    }

    private func connectBlocking() throws {
        executor.preconditionOnQueue()
        dropConnection()
        let connection = try configuration.openLibpq()
        conn = connection
        canceller = PQgetCancel(connection)
        PQsetNoticeProcessor(connection, noticeProcessor, Unmanaged.passUnretained(noticeSink).toOpaque())
        // Text results are parsed assuming these settings.
        try runCommand("SET DateStyle TO ISO; SET TimeZone TO 'UTC'; SET extra_float_digits TO 3")
        for channel in listenChannels.sorted() {
            try runCommand("LISTEN " + quoteIdentifier(channel))
        }
    }

    private func dropConnection() {
        preparedStatements.removeAll()
        if let canceller { PQfreeCancel(canceller) }
        if let conn { PQfinish(conn) }
        canceller = nil
        conn = nil
    }

    /// The live connection, reconnecting first if the last one broke (outside a transaction).
    func liveConnection() throws -> OpaquePointer {
        executor.preconditionOnQueue()
        if let conn, PQstatus(conn) == CONNECTION_OK { return conn }
        if activeTransaction != nil, conn != nil {
            transactionBroken = true
            throw lostInTransaction()
        }
        if conn != nil { logger.info("Reconnecting to Postgres") }
        try connectBlocking()
        return conn!
    }

    func runCommand(_ sql: String) throws {
        executor.preconditionOnQueue()
        try runSimpleQuery(sql, hook: nil)
    }

    private func runSimpleQuery(_ sql: String, hook: CancellationHook?) throws {
        executor.preconditionOnQueue()
        let conn = try liveConnection()
        let result = try cancellable(hook) { PQexec(conn, sql) }
        defer { PQclear(result) }
        _ = try checkCancellable(result, conn: conn, hook: hook)
    }

    private func runQuery(_ sql: String, _ parameters: [PostgresValue], hook: CancellationHook) throws
        -> PostgresResult
    {
        executor.preconditionOnQueue()
        try EncodedParameters.checkForNUL(parameters)
        let conn = try liveConnection()
        let result = try withParameters(parameters) { count, types, values, lengths, formats in
            try cancellable(hook) { PQexecParams(conn, sql, count, types, values, lengths, formats, 0) }
        }
        defer { PQclear(result) }
        return try checkCancellable(result, conn: conn, hook: hook)
    }

    /// Runs a blocking libpq call with `PQcancel` armed for task cancellation.
    func cancellable<T>(_ hook: CancellationHook?, _ body: () throws -> T) throws -> T {
        guard let hook, let canceller else { return try body() }
        let box = UnsafeSendable(canceller)
        return try hook.armed({
            var buffer = [CChar](repeating: 0, count: 256)
            _ = PQcancel(box.value, &buffer, 256)
        }, body)
    }

    /// ``check(_:conn:)``, reporting an error that follows the task's cancellation as `CancellationError`.
    private func checkCancellable(_ result: OpaquePointer?, conn: OpaquePointer, hook: CancellationHook?) throws -> PostgresResult {
        do {
            return try check(result, conn: conn)
        } catch {
            if hook?.isCancelled == true { throw CancellationError() }
            throw error
        }
    }

    func connectionError(_ conn: OpaquePointer) -> PostgresError {
        let message = redactor.redact(String(cString: PQerrorMessage(conn)))
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if activeTransaction != nil { transactionBroken = true }
        return PostgresError(code: .connectionLost, message: message.isEmpty ? "connection lost" : message)
    }
}

extension PostgresConfiguration {
    /// A new libpq connection (blocking: a connection's queue only), or a `.connectionFailed`
    /// error with the secrets redacted. `replication`: a logical replication session
    /// (`replication=database`) instead of a normal one.
    func openLibpq(replication: Bool = false) throws -> OpaquePointer {
        var keywords = [
            "dbname", "connect_timeout", "application_name", "keepalives", "keepalives_idle",
            "keepalives_interval", "keepalives_count", "client_encoding",
        ]
        var values = [
            url, String(max(1, connectTimeout.components.seconds)), applicationName, "1",
            String(keepalivesIdle.components.seconds), String(keepalivesInterval.components.seconds),
            String(keepalivesCount), "UTF8",
        ]
        if replication {
            keywords.append("replication")
            values.append("database")
        }
        if let password {
            keywords.append("password")
            values.append(password)
        }
        if !sessionSettings.isEmpty {
            keywords.append("options")
            values.append(sessionSettings.sorted { $0.key < $1.key }.map { name, value in
                "-c \(name)=" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: " ", with: "\\ ")
            }.joined(separator: " "))
        }
        let connection = withCStringArray(keywords) { keywordPointers in
            withCStringArray(values) { valuePointers in
                PQconnectdbParams(keywordPointers, valuePointers, 1)
            }
        }
        guard let connection else {
            throw PostgresError(code: .connectionFailed, message: "out of memory creating a libpq connection")
        }
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = redactor.redact(String(cString: PQerrorMessage(connection)))
            PQfinish(connection)
            throw PostgresError(code: .connectionFailed, message: message.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        return connection
    }
}

/// Holds the logger that libpq's notice processor (a C callback) writes to.
private final class NoticeSink {
    let logger: Logger
    init(logger: Logger) { self.logger = logger }
}

private let noticeProcessor: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?) -> Void = {
    context, message in
    guard let context, let message else { return }
    let sink = Unmanaged<NoticeSink>.fromOpaque(context).takeUnretainedValue()
    let text = String(cString: message).trimmingCharacters(in: .whitespacesAndNewlines)
    // NOTICE/INFO/DEBUG are chatter ("already exists, skipping"); WARNING deserves attention.
    let level: Logger.Level = text.hasPrefix("WARNING") ? .warning : .debug
    sink.logger.log(level: level, "Postgres notice", metadata: ["postgres.notice": "\(text)"])
}

/// The use of `@unchecked Sendable` is safe for this type because: it only carries a `PGcancel`
/// pointer to the cancellation closure, and `PQcancel` is documented as safe to call from another
/// thread; the pointer is freed only on the connection queue after the closure is disarmed.
private struct UnsafeSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Calls `body` with C string arrays (NULL-terminated) for `strings`.
func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let duplicated = strings.map { strdup($0) }
    defer { duplicated.forEach { free($0) } }
    var pointers = duplicated.map { UnsafePointer($0) }
    pointers.append(nil)
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
