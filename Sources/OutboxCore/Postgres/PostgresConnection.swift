import CLibPQ
import Dispatch
import Foundation
import Glibc
import Logging

/// How to reach Postgres. `password` is a secret: it is passed to libpq, never logged or shown.
public struct PostgresConfiguration: Sendable {
    /// A `postgresql://` URL or a `key=value` conninfo string.
    public var url: String
    /// Overrides any password in `url` (read from env or a file by the config loader).
    public var password: String?
    public var connectTimeout: Duration = .seconds(5)
    public var applicationName: String = "outbox-relay"
    /// TCP keepalives, so a dead peer is noticed without waiting for the OS default (2 h).
    public var keepalivesIdle: Duration = .seconds(30)
    public var keepalivesInterval: Duration = .seconds(10)
    public var keepalivesCount: Int = 3
    /// Server settings for every session of this connection, reconnects included (sent as the
    /// libpq `options` parameter: `-c name=value …`; replaces any `options` in `url`).
    public var sessionSettings: [String: String] = [:]

    public init(url: String, password: String? = nil) {
        self.url = url
        self.password = password
    }

    /// The URL with any password replaced by `***`.
    public var redactedURL: String { URLParts.redacted(url) }

    var redactor: Redactor {
        Redactor(secrets: [password, URLParts(url)?.password, url])
    }
}

/// One libpq connection, driven from its own serial queue (DESIGN §6).
///
/// Every libpq call runs in a synchronous, actor-isolated method on the connection's private
/// `DispatchQueue`; async callers suspend while it blocks, leaving the cooperative pool free.
/// Task cancellation sends `PQcancel` to the server (or wakes a LISTEN wait).
///
/// A connection runs one statement at a time. Inside ``transaction(_:)``, statements from other
/// tasks wait until the transaction ends, so a shared connection cannot interleave with it.
public actor PostgresConnection {
    private let executor: BlockingExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    private let configuration: PostgresConfiguration
    private let redactor: Redactor
    private let logger: Logger
    private let noticeSink: NoticeSink
    private var conn: OpaquePointer?
    private var canceller: OpaquePointer?
    /// Woken by cancellation of a LISTEN wait (`eventfd`).
    private let wakeFD: Int32
    private var listenChannels: Set<String> = []
    /// Names of the statements prepared in the current session (``PostgresStatement/prepared``).
    private var preparedStatements: Set<String> = []
    private var pendingNotifications: [PostgresNotification] = []

    // Transaction ownership: statements from other tasks wait while a transaction is open.
    @TaskLocal private static var transactionToken: UInt64?
    private var activeTransaction: UInt64?
    private var nextTransactionToken: UInt64 = 1
    private var transactionWaiters: [CheckedContinuation<Void, Never>] = []
    /// Set when the connection broke inside a transaction: statements fail until it ends.
    private var transactionBroken = false

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

    /// Sends all statements in one round trip (libpq pipeline mode) and returns one result per
    /// statement. A failed statement yields its error; statements after it yield
    /// `.pipelineAborted`. Statements run in autocommit unless inside ``transaction(_:)``.
    public func pipeline(_ statements: [(sql: String, parameters: [PostgresValue])]) async throws
        -> [Result<PostgresResult, PostgresError>]
    {
        try await pipeline(statements.map { PostgresStatement($0.sql, $0.parameters) })
    }

    /// Like the tuple form, for statements that may be ``PostgresStatement/prepared``.
    public func pipeline(_ statements: [PostgresStatement]) async throws -> [Result<PostgresResult, PostgresError>] {
        try await awaitTurn()
        let hook = CancellationHook()
        return try await withTaskCancellationHandler {
            try self.runPipeline(statements, hook: hook)
        } onCancel: {
            hook.fire()
        }
    }

    // MARK: Transactions

    /// Runs `body` inside BEGIN … COMMIT. Any error or cancellation rolls back and rethrows.
    /// Statements from other tasks on this connection wait until the transaction ends.
    nonisolated(nonsending) public func transaction<T>(
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let token = try await begin()
        let value: T
        do {
            value = try await Self.$transactionToken.withValue(token) {
                try await body(self)
            }
        } catch {
            try? await finish(token, commit: false)
            throw error
        }
        try await finish(token, commit: true)
        return value
    }

    private func begin() async throws -> UInt64 {
        try await awaitTurn()
        let token = nextTransactionToken
        nextTransactionToken += 1
        activeTransaction = token
        do {
            try runCommand("BEGIN")
        } catch {
            endTransaction()
            throw error
        }
        return token
    }

    /// COMMIT or ROLLBACK. Neither is cancellable: a cancelled COMMIT would leave the outcome unknown.
    private func finish(_ token: UInt64, commit: Bool) throws {
        precondition(activeTransaction == token, "transaction finished twice")
        defer { endTransaction() }
        if transactionBroken { 
            if commit { throw lostInTransaction() }
            return
        }
        if commit {
            try runCommand("COMMIT")
        } else {
            do {
                try runCommand("ROLLBACK")
            } catch {
                // The server rolls back by itself when the session ends.
                logger.debug("Rollback failed", metadata: ["postgres.error": "\(error)"])
            }
        }
    }

    private func endTransaction() {
        activeTransaction = nil
        transactionBroken = false
        let waiters = transactionWaiters
        transactionWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    /// Waits while another task's transaction holds the connection.
    private func awaitTurn() async throws {
        while let active = activeTransaction, active != Self.transactionToken {
            await withCheckedContinuation { transactionWaiters.append($0) }
        }
        if transactionBroken { throw lostInTransaction() }
    }

    private func lostInTransaction() -> PostgresError {
        PostgresError(code: .connectionLost, message: "the connection was lost inside a transaction; it was rolled back")
    }

    // MARK: LISTEN / NOTIFY

    /// Subscribes this session to `channel`. Channels are re-subscribed after a reconnect.
    public func listen(_ channel: String) async throws {
        try await awaitTurn()
        try runCommand("LISTEN " + quoteIdentifier(channel))
        listenChannels.insert(channel)
    }

    public func unlisten(_ channel: String) async throws {
        try await awaitTurn()
        try runCommand("UNLISTEN " + quoteIdentifier(channel))
        listenChannels.remove(channel)
    }

    /// Returns the notifications that arrived, waiting up to `timeout` for the first one.
    /// Returns `[]` on timeout. Cancellation ends the wait with `CancellationError`.
    public func waitForNotifications(timeout: Duration) async throws -> [PostgresNotification] {
        try await awaitTurn()
        let hook = CancellationHook()
        return try await withTaskCancellationHandler {
            try self.runNotificationWait(timeout: timeout, hook: hook)
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
        let c = configuration
        var keywords = [
            "dbname", "connect_timeout", "application_name", "keepalives", "keepalives_idle",
            "keepalives_interval", "keepalives_count", "client_encoding",
        ]
        var values = [
            c.url, String(max(1, c.connectTimeout.components.seconds)), c.applicationName, "1",
            String(c.keepalivesIdle.components.seconds), String(c.keepalivesInterval.components.seconds),
            String(c.keepalivesCount), "UTF8",
        ]
        if let password = c.password {
            keywords.append("password")
            values.append(password)
        }
        if !c.sessionSettings.isEmpty {
            keywords.append("options")
            values.append(c.sessionSettings.sorted { $0.key < $1.key }.map { name, value in
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
    private func liveConnection() throws -> OpaquePointer {
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

    private func runCommand(_ sql: String) throws {
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

    private func runPipeline(_ statements: [PostgresStatement], hook: CancellationHook)
        throws -> [Result<PostgresResult, PostgresError>]
    {
        executor.preconditionOnQueue()
        guard !statements.isEmpty else { return [] }
        for statement in statements { try EncodedParameters.checkForNUL(statement.parameters) }
        let conn = try liveConnection()
        guard PQenterPipelineMode(conn) == 1 else { throw connectionError(conn) }
        PQsetnonblocking(conn, 1)
        defer {
            PQsetnonblocking(conn, 0)
            if PQpipelineStatus(conn) != PQ_PIPELINE_OFF { PQexitPipelineMode(conn) }
        }
        return try cancellable(hook) { () throws -> [Result<PostgresResult, PostgresError>] in
            // What each result coming back answers: a Parse of a statement this session has not
            // prepared yet (its name), or a statement (its prepared name, if any).
            enum Reply { case prepare(String), statement(String?) }
            var replies: [Reply] = []
            var parsing: Set<String> = []
            for statement in statements {
                let sent = withParameters(statement.parameters) { count, types, values, lengths, formats in
                    guard statement.prepared else {
                        replies.append(.statement(nil))
                        return PQsendQueryParams(conn, statement.sql, count, types, values, lengths, formats, 0)
                    }
                    let name = Self.statementName(statement.sql, UnsafeBufferPointer(start: types, count: Int(count)))
                    if !preparedStatements.contains(name), parsing.insert(name).inserted {
                        guard PQsendPrepare(conn, name, statement.sql, count, types) == 1 else { return 0 }
                        replies.append(.prepare(name))
                    }
                    replies.append(.statement(name))
                    return PQsendQueryPrepared(conn, name, count, values, lengths, formats, 0)
                }
                guard sent == 1 else { throw connectionError(conn) }
            }
            // One write for the whole pipeline (libpq also sends whenever its buffer fills).
            guard PQpipelineSync(conn) == 1 else { throw connectionError(conn) }
            try flush(conn)

            var results: [Result<PostgresResult, PostgresError>] = []
            results.reserveCapacity(statements.count)
            var failedPrepare: PostgresError?
            // Each message yields one result then NULL; the sync point ends the pipeline.
            while true {
                guard let result = PQgetResult(conn) else {
                    if PQstatus(conn) != CONNECTION_OK { throw connectionError(conn) }
                    continue
                }
                defer { PQclear(result) }
                let status = PQresultStatus(result)
                if status == PGRES_PIPELINE_SYNC { break }
                guard !replies.isEmpty else { continue }
                switch replies.removeFirst() {
                case .prepare(let name):
                    if status == PGRES_COMMAND_OK {
                        preparedStatements.insert(name)
                    } else if status != PGRES_PIPELINE_ABORTED {
                        // The statement's own result then says "aborted"; report why instead.
                        do throws(PostgresError) { _ = try check(result, conn: conn) } catch { failedPrepare = error }
                    }
                case .statement(let name):
                    if status == PGRES_PIPELINE_ABORTED {
                        results.append(.failure(failedPrepare ?? PostgresError(
                            code: .pipelineAborted, message: "skipped: an earlier statement in the pipeline failed")))
                        failedPrepare = nil
                        continue
                    }
                    // A statement that failed because the task was cancelled still takes its place:
                    // the pipeline is read to its sync point, then the cancellation is thrown (below).
                    let outcome = Result { () throws(PostgresError) in try check(result, conn: conn) }
                    // 26000: the session lost the statement (DISCARD ALL, a pooler): prepare it again next time.
                    if let name, case .failure(let error) = outcome, error.sqlState == "26000" { preparedStatements.remove(name) }
                    results.append(outcome)
                }
            }
            if hook.isCancelled { throw CancellationError() }
            return results
        }
    }

    /// A server-side name for `sql` with these parameter types: the same text and types share one
    /// prepared statement per session.
    private static func statementName(_ sql: String, _ types: UnsafeBufferPointer<Oid>) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a, over contiguous bytes (per UTF-8 view element it was 5 % of a writer's CPU)
        func mix(_ bytes: UnsafeRawBufferPointer) {
            for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        }
        var sql = sql
        sql.withUTF8 { mix(UnsafeRawBufferPointer($0)) }
        for type in types { withUnsafeBytes(of: type.littleEndian, mix) }
        return "outbox_" + String(hash, radix: 16)
    }

    /// Flushes a non-blocking connection's output, reading input meanwhile so a large pipeline
    /// cannot deadlock against a server whose own output buffer is full.
    private func flush(_ conn: OpaquePointer) throws {
        while true {
            let r = PQflush(conn)
            if r == 0 { return }
            if r < 0 { throw connectionError(conn) }
            var fds = pollfd(fd: PQsocket(conn), events: Int16(POLLIN | POLLOUT), revents: 0)
            _ = poll(&fds, 1, 1000)
            if fds.revents & Int16(POLLIN) != 0, PQconsumeInput(conn) == 0 { throw connectionError(conn) }
        }
    }

    private func runNotificationWait(timeout: Duration, hook: CancellationHook) throws -> [PostgresNotification] {
        executor.preconditionOnQueue()
        let conn = try liveConnection()
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, timeout.milliseconds)) * 1_000_000
        let fd = wakeFD
        return try hook.armed({ var one: UInt64 = 1; _ = write(fd, &one, 8) }) {
            defer { var drained: UInt64 = 0; _ = read(fd, &drained, 8) }
            while true {
                if PQconsumeInput(conn) == 0 { throw connectionError(conn) }
                drainNotifications(conn)
                if !pendingNotifications.isEmpty {
                    defer { pendingNotifications.removeAll() }
                    return pendingNotifications
                }
                if hook.isCancelled { throw CancellationError() }
                let now = DispatchTime.now().uptimeNanoseconds
                if now >= deadline { return [] }
                var fds = [
                    pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0),
                    pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                ]
                let waitMs = Int32(min(UInt64(Int32.max), (deadline - now + 999_999) / 1_000_000))
                let ready = poll(&fds, 2, waitMs)
                if ready < 0, errno != EINTR {
                    throw PostgresError(code: .connectionLost, message: "poll failed: \(String(cString: strerror(errno)))")
                }
            }
        }
    }

    private func drainNotifications(_ conn: OpaquePointer) {
        while let notify = PQnotifies(conn) {
            pendingNotifications.append(PostgresNotification(
                channel: String(cString: notify.pointee.relname),
                payload: String(cString: notify.pointee.extra),
                backendPID: notify.pointee.be_pid))
            PQfreemem(notify)
        }
    }

    /// Runs a blocking libpq call with `PQcancel` armed for task cancellation.
    private func cancellable<T>(_ hook: CancellationHook?, _ body: () throws -> T) throws -> T {
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

    /// Turns a finished `PGresult` into rows, or throws its error. A missing result means the
    /// connection broke.
    private func check(_ result: OpaquePointer?, conn: OpaquePointer) throws(PostgresError) -> PostgresResult {
        guard let result else { throw connectionError(conn) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            return PostgresResult(columns: [], rows: [], affectedRows: affectedRows(result))
        case PGRES_TUPLES_OK, PGRES_SINGLE_TUPLE:
            return decodeRows(result)
        default:
            if PQstatus(conn) != CONNECTION_OK { throw connectionError(conn) }
            func field(_ code: Int32) -> String? {
                PQresultErrorField(result, code).map { redactor.redact(String(cString: $0)) }
            }
            throw PostgresError(
                code: .server,
                sqlState: field(Int32(UInt8(ascii: "C"))),
                message: field(Int32(UInt8(ascii: "M"))) ?? redactor.redact(String(cString: PQresultErrorMessage(result))),
                detail: field(Int32(UInt8(ascii: "D"))),
                hint: field(Int32(UInt8(ascii: "H"))))
        }
    }

    private func connectionError(_ conn: OpaquePointer) -> PostgresError {
        let message = redactor.redact(String(cString: PQerrorMessage(conn)))
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if activeTransaction != nil { transactionBroken = true }
        return PostgresError(code: .connectionLost, message: message.isEmpty ? "connection lost" : message)
    }

    private func affectedRows(_ result: OpaquePointer) -> Int {
        Int(String(cString: PQcmdTuples(result))) ?? 0
    }

    private func decodeRows(_ result: OpaquePointer) -> PostgresResult {
        let rowCount = Int(PQntuples(result))
        let columnCount = Int(PQnfields(result))
        var names: [String] = []
        var index: [String: Int] = [:]
        var types: [UInt32] = []
        for c in 0..<columnCount {
            let name = String(cString: PQfname(result, Int32(c)))
            names.append(name)
            if index[name] == nil { index[name] = c }
            types.append(PQftype(result, Int32(c)))
        }
        var rows: [PostgresRow] = []
        rows.reserveCapacity(rowCount)
        for r in 0..<rowCount {
            var values: [PostgresValue] = []
            values.reserveCapacity(columnCount)
            for c in 0..<columnCount {
                if PQgetisnull(result, Int32(r), Int32(c)) == 1 {
                    values.append(.null)
                    continue
                }
                let length = Int(PQgetlength(result, Int32(r), Int32(c)))
                let raw = UnsafeRawPointer(PQgetvalue(result, Int32(r), Int32(c))!)
                let bytes = UnsafeBufferPointer(start: raw.assumingMemoryBound(to: UInt8.self), count: length)
                values.append(Self.decodeText(bytes, type: types[c]))
            }
            rows.append(PostgresRow(columnIndex: index, values: values))
        }
        return PostgresResult(columns: names, rows: rows, affectedRows: affectedRows(result))
    }

    static func decodeText(_ bytes: UnsafeBufferPointer<UInt8>, type: UInt32) -> PostgresValue {
        let text = { String(decoding: bytes, as: UTF8.self) }
        switch type {
        case PostgresOID.int2, PostgresOID.int4, PostgresOID.int8, PostgresOID.oid:
            return Int64(text()).map(PostgresValue.int) ?? .text(text())
        case PostgresOID.bool:
            return .bool(bytes.first == UInt8(ascii: "t"))
        case PostgresOID.float4, PostgresOID.float8:
            switch text() {
            case "NaN": return .double(.nan)
            case "Infinity": return .double(.infinity)
            case "-Infinity": return .double(-.infinity)
            case let s: return Double(s).map(PostgresValue.double) ?? .text(s)
            }
        case PostgresOID.uuid:
            return UUID(uuidString: text()).map(PostgresValue.uuid) ?? .text(text())
        case PostgresOID.json, PostgresOID.jsonb:
            return .jsonb(text())
        case PostgresOID.timestamptz, PostgresOID.timestamp:
            return PostgresText.parseTimestamp(bytes).map(PostgresValue.timestamptz) ?? .text(text())
        case PostgresOID.bytea:
            return PostgresText.parseByteaHex(bytes).map(PostgresValue.bytea) ?? .text(text())
        default:
            return .text(text())
        }
    }
}

/// Quotes `name` as a SQL identifier (for LISTEN channel names, which cannot be parameters).
func quoteIdentifier(_ name: String) -> String {
    "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
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

/// Calls `body` with libpq parameter arrays for `parameters`, valid for the call only.
private func withParameters<R>(
    _ parameters: [PostgresValue],
    _ body: (Int32, UnsafePointer<Oid>?, UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?) throws -> R
) rethrows -> R {
    let encoded = EncodedParameters(parameters)
    return try encoded.bytes.withUnsafeBufferPointer { buffer in
        let base = UnsafeRawPointer(buffer.baseAddress)?.assumingMemoryBound(to: CChar.self)
        let values = encoded.offsets.map { offset in offset.flatMap { offset in base.map { $0 + offset } } }
        return try body(Int32(parameters.count), encoded.types, values, encoded.lengths, encoded.formats)
    }
}

extension Duration {
    package var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
