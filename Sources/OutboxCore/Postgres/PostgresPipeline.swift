import CLibPQ
import Glibc

extension PostgresConnection {
    // MARK: Pipeline

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

    // MARK: Blocking implementation (connection queue only)

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
}
