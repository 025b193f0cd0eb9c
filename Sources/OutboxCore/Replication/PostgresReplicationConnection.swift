import CLibPQ
import Dispatch
import Foundation
import Glibc
import Logging

/// A logical replication session (`replication=database`) reading one slot through the
/// `pgoutput` plugin, driven from its own serial queue like ``PostgresConnection`` (DESIGN §6).
///
/// After ``startReplication(slot:publication:after:)`` the session is in CopyBoth mode: ``read(timeout:)``
/// returns what the server sent, ``confirm(_:)`` reports the position the slot may move to. The
/// session answers the server's keepalives that ask for a reply, and reports its position every
/// `statusInterval` while reading, with the last position given to ``confirm(_:)`` — never more.
public actor PostgresReplicationConnection {
    let executor: BlockingExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    private let redactor: Redactor
    private let logger: Logger
    private var conn: OpaquePointer?
    private let wakeFD: Int32
    private var streaming = false
    private var confirmed = LogSequenceNumber.zero
    private var lastStatus = DispatchTime.now()
    /// How often a reading session reports its position unasked: Postgres ends a session that
    /// reports nothing for `wal_sender_timeout` (60 s by default).
    private let statusInterval: Duration

    /// Connects with `replication=database`; the role needs the REPLICATION attribute (or to be a
    /// superuser) and `pg_hba.conf` must allow it replication connections.
    public static func connect(_ configuration: PostgresConfiguration, statusInterval: Duration = .seconds(10),
                               logger: Logger) async throws -> PostgresReplicationConnection {
        let connection = PostgresReplicationConnection(configuration: configuration, statusInterval: statusInterval, logger: logger)
        try await connection.open(configuration)
        return connection
    }

    private init(configuration: PostgresConfiguration, statusInterval: Duration, logger: Logger) {
        executor = BlockingExecutor(label: "outbox.postgres.replication")
        redactor = configuration.redactor
        self.statusInterval = statusInterval
        self.logger = logger
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
    }

    isolated deinit {
        if let conn { PQfinish(conn) }
        Glibc.close(wakeFD)
    }

    public func close() {
        executor.preconditionOnQueue()
        if let conn { PQfinish(conn) }
        conn = nil
        streaming = false
    }

    /// Creates the logical slot `name` with the `pgoutput` plugin unless it exists; true when it
    /// was created. Postgres waits for the transactions running at that moment to end first.
    public func createSlotIfMissing(_ name: String) throws -> Bool {
        try Self.checkName(name, what: "slot")
        do {
            try command("CREATE_REPLICATION_SLOT \(quoteIdentifier(name)) LOGICAL pgoutput NOEXPORT_SNAPSHOT")
            return true
        } catch let error as PostgresError where error.sqlState == "42710" {  // duplicate_object
            return false
        }
    }

    /// Streams the slot's transactions that end after `position` (the slot's own confirmed
    /// position when that is later), with logical messages and the tables of `publication`.
    public func startReplication(slot: String, publication: String, after position: LogSequenceNumber) throws {
        executor.preconditionOnQueue()
        try Self.checkName(slot, what: "slot")
        try Self.checkName(publication, what: "publication")
        let conn = try live()
        let options = "proto_version '1', publication_names '\(quoteIdentifier(publication))', messages 'true'"
        let result = PQexec(conn, "START_REPLICATION SLOT \(quoteIdentifier(slot)) LOGICAL \(position) (\(options))")
        defer { PQclear(result) }
        guard let result, PQresultStatus(result) == PGRES_COPY_BOTH else { throw failure(result, conn) }
        streaming = true
        confirmed = position
        lastStatus = DispatchTime.now()
        logger.debug("Streaming a replication slot", metadata: ["slot": "\(slot)", "after": "\(position)"])
    }

    /// What the server sent, waiting up to `timeout` for the first frame; `[]` when nothing came.
    /// At most `limit` frames. Cancellation ends the wait with `CancellationError`.
    public func read(timeout: Duration, limit: Int = 1024) async throws -> [ReplicationFrame] {
        let hook = CancellationHook()
        return try await withTaskCancellationHandler {
            try self.readBlocking(timeout: timeout, limit: limit, hook: hook)
        } onCancel: {
            hook.fire()
        }
    }

    /// Reports `position` as flushed: the slot may drop everything that ends at or before it.
    /// Positions only move forward; a smaller one is ignored.
    public func confirm(_ position: LogSequenceNumber) throws {
        executor.preconditionOnQueue()
        if position > confirmed { confirmed = position }
        try sendStatus(replyRequested: false)
    }

    // MARK: Blocking implementation (connection queue only)

    private func open(_ configuration: PostgresConfiguration) throws {
        executor.preconditionOnQueue()
        conn = try configuration.openLibpq(replication: true)
    }

    private func live() throws -> OpaquePointer {
        guard let conn, PQstatus(conn) == CONNECTION_OK else {
            throw PostgresError(code: .connectionLost, message: "the replication session is closed")
        }
        return conn
    }

    /// A replication command other than `START_REPLICATION`; its rows are not needed.
    private func command(_ sql: String) throws {
        executor.preconditionOnQueue()
        guard !streaming else { throw PostgresError(code: .usage, message: "a replication command while streaming") }
        let conn = try live()
        let result = PQexec(conn, sql)
        defer { PQclear(result) }
        guard let result, [PGRES_TUPLES_OK, PGRES_COMMAND_OK].contains(PQresultStatus(result)) else {
            throw failure(result, conn)
        }
    }

    private func readBlocking(timeout: Duration, limit: Int, hook: CancellationHook) throws -> [ReplicationFrame] {
        executor.preconditionOnQueue()
        guard streaming else { throw PostgresError(code: .usage, message: "read before startReplication") }
        let conn = try live()
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, timeout.milliseconds)) * 1_000_000
        let fd = wakeFD
        return try hook.armed({ var one: UInt64 = 1; _ = write(fd, &one, 8) }) {
            defer { var drained: UInt64 = 0; _ = Glibc.read(fd, &drained, 8) }
            var frames: [ReplicationFrame] = []
            while true {
                while frames.count < limit {
                    var buffer: UnsafeMutablePointer<CChar>?
                    let length = PQgetCopyData(conn, &buffer, 1)
                    if length > 0, let buffer {
                        defer { PQfreemem(buffer) }
                        let frame = try ReplicationFrame.decode(UnsafeRawBufferPointer(start: buffer, count: Int(length)))
                        if case .keepalive(_, true) = frame { try sendStatus(replyRequested: false) }
                        frames.append(frame)
                        continue
                    }
                    if length == 0 { break }  // nothing buffered: wait below
                    streaming = false
                    throw streamEnded(conn)
                }
                let interval = UInt64(statusInterval.milliseconds) * 1_000_000
                if sinceLastStatus() >= interval { try sendStatus(replyRequested: false) }
                if !frames.isEmpty { return frames }
                if hook.isCancelled { throw CancellationError() }
                let now = DispatchTime.now().uptimeNanoseconds
                if now >= deadline { return [] }
                var fds = [pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0),
                           pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
                let untilStatus = interval - min(interval, sinceLastStatus())
                let wait = min(deadline - now, untilStatus)
                if poll(&fds, 2, Int32(min(UInt64(Int32.max), (wait + 999_999) / 1_000_000))) < 0, errno != EINTR {
                    throw PostgresError(code: .connectionLost, message: "poll failed: \(String(cString: strerror(errno)))")
                }
                if PQconsumeInput(conn) == 0 { throw lost(conn) }
            }
        }
    }

    /// Nanoseconds since the last status update; saturating, as a status sent after the caller
    /// read the clock is later than its reading.
    private func sinceLastStatus() -> UInt64 {
        let now = DispatchTime.now().uptimeNanoseconds
        return now > lastStatus.uptimeNanoseconds ? now - lastStatus.uptimeNanoseconds : 0
    }

    private func sendStatus(replyRequested: Bool) throws {
        let conn = try live()
        let message = ReplicationFrame.statusUpdate(flushed: confirmed, replyRequested: replyRequested)
        let sent = message.withUnsafeBytes { raw in
            PQputCopyData(conn, raw.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(raw.count))
        }
        guard sent == 1, PQflush(conn) == 0 else { throw lost(conn) }
        lastStatus = DispatchTime.now()
    }

    /// The error that ended the copy stream (the server's, e.g. the slot was dropped), or a lost connection.
    private func streamEnded(_ conn: OpaquePointer) -> PostgresError {
        while let result = PQgetResult(conn) {
            defer { PQclear(result) }
            if PQresultStatus(result) == PGRES_FATAL_ERROR { return failure(result, conn) }
        }
        return lost(conn)
    }

    private func failure(_ result: OpaquePointer?, _ conn: OpaquePointer) -> PostgresError {
        guard let result, PQresultStatus(result) == PGRES_FATAL_ERROR else { return lost(conn) }
        return PostgresError.server(result, redactor: redactor)
    }

    private func lost(_ conn: OpaquePointer) -> PostgresError {
        let message = redactor.redact(String(cString: PQerrorMessage(conn))).trimmingCharacters(in: .whitespacesAndNewlines)
        return PostgresError(code: .connectionLost, message: message.isEmpty ? "replication connection lost" : message)
    }

    /// Slot and publication names: what Postgres accepts for a slot (lower-case letters, digits,
    /// underscores, at most 63), so that no name ever needs more than plain quoting.
    static func checkName(_ name: String, what: String) throws {
        guard (1...63).contains(name.utf8.count),
              name.utf8.allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "_") })
        else {
            throw PostgresError(code: .usage, message: "replication \(what) name \"\(name)\" must be 1-63 lower-case letters, digits or underscores")
        }
    }
}
