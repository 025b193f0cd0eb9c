import Foundation
@testable import OutboxCore
import OutboxTestSupport
import Testing

@Suite struct PostgresDriverTests {
    @Test func typedValuesRoundTripIncludingNullUnicodeJSONAndBytea() async throws {
        let db = try await TestEnvironment.connect()
        let id = UUID()
        let when = Date(timeIntervalSince1970: 1_700_000_000.25)
        let bytes: [UInt8] = Array(0...255) + [0, 0, 255]
        let unicode = "naïve café — 日本語 🚀 \"quoted\" 'single' \\ back"
        let row = try await db.query(
            """
            SELECT $1::text AS t, $2::int8 AS i, $3::bool AS b, $4::float8 AS f, $5::uuid AS u,
                   $6::jsonb AS j, $7::timestamptz AS ts, $8::bytea AS by, $9::text AS n,
                   42::int4 AS i4, 7::int2 AS i2, 1.5::float4 AS f4, 12.345::numeric AS num
            """,
            [.text(unicode), .int(-9_007_199_254_740_993), .bool(true), .double(0.1), .uuid(id),
             .jsonb(#"{"k": ["v", 1, null], "emoji": "🚀"}"#), .timestamptz(when), .bytea(bytes), .null]
        ).first!

        #expect(try row.decode("t", as: String.self) == unicode)
        #expect(try row.decode("i", as: Int64.self) == -9_007_199_254_740_993)
        #expect(try row.decode("b", as: Bool.self) == true)
        #expect(try row.decode("f", as: Double.self) == 0.1)
        #expect(try row.decode("u", as: UUID.self) == id)
        let json = try JSONValue.parse(try row.decode("j", as: String.self))
        #expect(json == ["emoji": "🚀", "k": ["v", 1, nil]])
        #expect(try row.decode("ts", as: Date.self) == when)
        #expect(try row.decode("by", as: [UInt8].self) == bytes)
        #expect(row["n"] == .null)
        #expect(try row.decode("n", as: String?.self) == nil)
        #expect(try row.decode("i4", as: Int.self) == 42)
        #expect(try row.decode("i2", as: Int.self) == 7)
        #expect(try row.decode("f4", as: Double.self) == 1.5)
        #expect(row["num"] == .text("12.345"))
    }

    @Test func decodingTheWrongTypeNamesTheColumn() async throws {
        let db = try await TestEnvironment.connect()
        let row = try await db.query("SELECT 'x'::text AS word").first!
        let error = try #require(throws: PostgresError.self) { try row.decode("word", as: Int.self) }
        #expect(error.message.contains("\"word\""))
    }

    @Test func serverErrorsCarrySQLState() async throws {
        let db = try await TestEnvironment.connect()
        let error = try await #require(throws: PostgresError.self) { try await db.query("SELECT 1/0") }
        #expect(error.code == .server)
        #expect(error.sqlState == "22012")
        #expect(error.message == "division by zero")
        // The connection stays usable after a statement error.
        #expect(try await db.query("SELECT 1 AS one").first!.decode("one", as: Int.self) == 1)
    }

    @Test func wrongPasswordFailsWithoutLeakingIt() async throws {
        var config = try TestEnvironment.postgresConfiguration()
        config.password = "definitely-wrong-password-xyz"
        let error = try await #require(throws: PostgresError.self) {
            try await PostgresConnection.connect(config, logger: TestEnvironment.logger)
        }
        #expect(error.code == .connectionFailed)
        #expect(error.message.contains("password authentication failed"))
        #expect(!"\(error)".contains("definitely-wrong-password-xyz"))
        let realPassword = try #require(URLParts(config.url)?.password)
        #expect(!"\(error)".contains(realPassword))
    }

    @Test func unreachableServerFailsWithinTheConnectTimeout() async throws {
        var config = PostgresConfiguration(url: "postgresql://outbox@127.0.0.1:1/outbox")
        config.connectTimeout = .seconds(2)
        let started = ContinuousClock.now
        let error = try await #require(throws: PostgresError.self) {
            try await PostgresConnection.connect(config, logger: TestEnvironment.logger)
        }
        #expect(error.code == .connectionFailed)
        // A refused port fails at once; the bound is the 2 s timeout plus slack for a machine
        // loaded by the whole suite starting at once (3 s failed at 3.8 s under load, twice).
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test func transactionCommitsAndRollsBack() async throws {
        let db = try await TestEnvironment.connect()
        let table = TestEnvironment.uniqueName("tx_test")
        try await db.query("CREATE TABLE \(table) (v int)")
        defer { Task { try? await db.query("DROP TABLE \(table)") } }

        try await db.transaction { tx in
            try await tx.query("INSERT INTO \(table) VALUES (1)")
        }
        struct Boom: Error {}
        await #expect(throws: Boom.self) {
            try await db.transaction { tx in
                try await tx.query("INSERT INTO \(table) VALUES (2)")
                throw Boom()
            }
        }
        await #expect(throws: PostgresError.self) {
            try await db.transaction { tx in
                try await tx.query("INSERT INTO \(table) VALUES (3)")
                try await tx.query("SELECT * FROM no_such_table_here")
            }
        }
        let values = try await db.query("SELECT v FROM \(table) ORDER BY v").rows.map { try $0.decode("v", as: Int.self) }
        #expect(values == [1])
    }

    @Test func cancellationStopsAQueryAndRollsBackItsTransaction() async throws {
        let db = try await TestEnvironment.connect()
        let table = TestEnvironment.uniqueName("cancel_test")
        try await db.query("CREATE TABLE \(table) (v int)")
        try await expectCancelledPromptly(db) { tx in
            try await tx.query("INSERT INTO \(table) VALUES (1)")
            try await tx.query("SELECT pg_sleep(30)")
        }
        // Rolled back, and the connection is usable.
        #expect(try await db.count("\(table)") == 0)
        try await db.query("DROP TABLE \(table)")
    }

    /// The relay's acknowledgement is a pipeline inside a transaction, and a lane is cancelled when
    /// its sibling's connection breaks. A statement failing because of the cancellation once
    /// aborted the whole process (a force cast of `CancellationError` to `PostgresError`).
    @Test func cancellingAPipelineInATransactionRollsItBackAndKeepsTheConnectionUsable() async throws {
        let db = try await TestEnvironment.connect()
        let table = TestEnvironment.uniqueName("cancel_pipe")
        try await db.query("CREATE TABLE \(table) (v int)")
        try await expectCancelledPromptly(db) { tx in
            _ = try await tx.pipeline([
                PostgresStatement("INSERT INTO \(table) VALUES ($1)", [.int(1)], prepared: true),
                PostgresStatement("SELECT pg_sleep(30)", []),
                PostgresStatement("INSERT INTO \(table) VALUES ($1)", [.int(2)], prepared: true),
            ])
        }
        #expect(try await db.count("\(table)") == 0)
        // A pipeline after it runs normally (the cancelled one was read to its end).
        let after = try await db.pipeline([PostgresStatement("INSERT INTO \(table) VALUES ($1)", [.int(3)], prepared: true)])
        #expect(after.count == 1)
        #expect(try await db.count("\(table)") == 1)
        try await db.query("DROP TABLE \(table)")
    }

    /// Runs `body` in a transaction in a task of its own, cancels the task 300 ms in (while `body`
    /// sleeps on the server), and expects `CancellationError` well before the sleep would end.
    private func expectCancelledPromptly(
        _ db: PostgresConnection, _ body: @escaping @Sendable (PostgresConnection) async throws -> Void
    ) async throws {
        let started = ContinuousClock.now
        let task = Task { try await db.transaction(body) }
        try await Task.sleep(for: .milliseconds(300))
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test func statementsFromOtherTasksWaitForAnOpenTransaction() async throws {
        let db = try await TestEnvironment.connect()
        let table = TestEnvironment.uniqueName("turn_test")
        try await db.query("CREATE TABLE \(table) (v int)")
        let inside = Task {
            try await db.transaction { tx in
                try await tx.query("INSERT INTO \(table) VALUES (1)")
                try await Task.sleep(for: .milliseconds(300))  // other tasks try to slip in here
                try await tx.query("INSERT INTO \(table) VALUES (2)")
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        // Would see 1 uncommitted row (or roll it back) if it ran inside the open transaction.
        let seen = try await db.count("\(table)")
        try await inside.value
        #expect(seen == 2)
        try await db.query("DROP TABLE \(table)")
    }

    @Test func pipelineRunsStatementsInOneRoundTripAndIsolatesFailures() async throws {
        let db = try await TestEnvironment.connect()
        let table = TestEnvironment.uniqueName("pipe_test")
        try await db.query("CREATE TABLE \(table) (v int PRIMARY KEY)")
        let inserts = (1...1000).map { (sql: "INSERT INTO \(table) VALUES ($1)", parameters: [PostgresValue.int(Int64($0))]) }
        let results = try await db.pipeline(inserts)
        #expect(results.count == 1000)
        #expect(results.allSatisfy { (try? $0.get()) != nil })
        #expect(try await db.count("\(table)") == 1000)

        let mixed = try await db.pipeline([
            (sql: "SELECT $1::int AS v", parameters: [.int(7)]),
            (sql: "INSERT INTO \(table) VALUES (1)", parameters: []),  // duplicate key
            (sql: "SELECT 1 AS v", parameters: []),
        ])
        #expect(try mixed[0].get().first!.decode("v", as: Int.self) == 7)
        guard case .failure(let duplicate) = mixed[1], case .failure(let skipped) = mixed[2] else {
            Issue.record("expected the 2nd statement to fail and the 3rd to be skipped: \(mixed)")
            return
        }
        #expect(duplicate.sqlState == "23505")
        #expect(skipped.code == .pipelineAborted)
        #expect(try await db.query("SELECT 1 AS one").first!.decode("one", as: Int.self) == 1)
        try await db.query("DROP TABLE \(table)")
    }

    @Test func preparedStatementsAreParsedOncePerSessionAndRecoverFromALostStatement() async throws {
        let db = try await TestEnvironment.connect()
        let sql = "SELECT $1::int8 * 2 AS v"
        func prepared(_ value: Int64) async throws -> Int64 {
            try await db.pipeline([PostgresStatement(sql, [.int(value)], prepared: true)])[0].get().first!.decode("v")
        }
        func preparedCount() async throws -> Int {
            try await db.count("pg_prepared_statements WHERE statement = $1", [.text(sql)])
        }
        // First prepared inside a transaction that rolls back: the statement outlives it.
        await #expect(throws: PostgresError.self) {
            try await db.transaction { tx in
                _ = try await tx.pipeline([PostgresStatement(sql, [.int(1)], prepared: true)])
                throw PostgresError(code: .server, message: "roll back")
            }
        }
        #expect(try await preparedCount() == 1)
        #expect(try await prepared(21) == 42)
        #expect(try await prepared(50) == 100)
        #expect(try await preparedCount() == 1)

        // A session that lost its statements (DISCARD ALL, a pooler) fails once, then prepares again.
        try await db.query("DISCARD ALL")
        let lost = try await db.pipeline([PostgresStatement(sql, [.int(1)], prepared: true)])[0]
        guard case .failure(let error) = lost else {
            Issue.record("expected the lost statement to fail: \(lost)")
            return
        }
        #expect(error.sqlState == "26000")
        // Prepared again once, though the pipeline runs it twice.
        let twice = try await db.pipeline([PostgresStatement(sql, [.int(1)], prepared: true), PostgresStatement(sql, [.int(2)], prepared: true)])
        #expect(try twice.map { try $0.get().first!.decode("v", as: Int64.self) } == [2, 4])
        #expect(try await preparedCount() == 1)

        // A statement that does not parse reports its own error, not "skipped".
        let bad = try await db.pipeline([PostgresStatement("SELEC 1", prepared: true), PostgresStatement("SELECT 1 AS v")])
        guard case .failure(let syntax) = bad[0], case .failure(let skipped) = bad[1] else {
            Issue.record("expected a syntax error, then a skipped statement: \(bad)")
            return
        }
        #expect(syntax.sqlState == "42601")
        #expect(skipped.code == .pipelineAborted)
        #expect(try await prepared(5) == 10)
    }

    /// The listener is woken by the notification itself, not by its 5 s timeout or a polling
    /// interval. The bound is loose on purpose: this proves the wake-up, and the `latency`
    /// benchmark measures how fast it is (a 100 ms bound failed on a loaded CI machine at 160 ms).
    @Test func notifyWakesAParkedListenerWithoutWaitingForItsTimeout() async throws {
        let listener = try await TestEnvironment.connect()
        let sender = try await TestEnvironment.connect()
        let channel = TestEnvironment.uniqueName("chan")
        try await listener.listen(channel)
        let clock = ContinuousClock()
        async let received = { () async throws -> ([PostgresNotification], ContinuousClock.Instant) in
            let notes = try await listener.waitForNotifications(timeout: .seconds(5))
            return (notes, clock.now)
        }()
        try await Task.sleep(for: .milliseconds(100))  // the listener is parked in poll(2)
        let sent = clock.now
        try await sender.query("SELECT pg_notify($1, 'hello')", [.text(channel)])
        let (notes, arrived) = try await received
        #expect(notes.map(\.payload) == ["hello"])
        #expect(notes.first?.channel == channel)
        #expect(arrived - sent < .seconds(1), "notification took \(arrived - sent)")
    }

    @Test func notificationWaitTimesOutAndCanBeCancelled() async throws {
        let listener = try await TestEnvironment.connect()
        try await listener.listen(TestEnvironment.uniqueName("quiet"))
        let clock = ContinuousClock()
        var started = clock.now
        #expect(try await listener.waitForNotifications(timeout: .milliseconds(200)).isEmpty)
        #expect(clock.now - started >= .milliseconds(190))

        started = clock.now
        let wait = Task { try await listener.waitForNotifications(timeout: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(100))
        wait.cancel()
        await #expect(throws: CancellationError.self) { try await wait.value }
        #expect(clock.now - started < .seconds(2))
    }

    @Test func reconnectsAfterTheServerDropsTheSessionAndKeepsListening() async throws {
        let db = try await TestEnvironment.connect()
        let admin = try await TestEnvironment.connect()
        let channel = TestEnvironment.uniqueName("relisten")
        try await db.listen(channel)
        let pid = await db.backendPID()
        try await admin.query("SELECT pg_terminate_backend($1::int)", [.int(Int64(pid))])
        try await Task.sleep(for: .milliseconds(100))

        let error = try await #require(throws: PostgresError.self) { try await db.query("SELECT 1") }
        #expect(error.code == .connectionLost)
        // The next call reconnects by itself and re-subscribes.
        #expect(try await db.query("SELECT 1 AS one").first!.decode("one", as: Int.self) == 1)
        #expect(await db.backendPID() != pid)
        try await admin.query("SELECT pg_notify($1, 'after')", [.text(channel)])
        #expect(try await db.waitForNotifications(timeout: .seconds(2)).map(\.payload) == ["after"])
    }

    @Test func noticesDoNotBreakStatements() async throws {
        let db = try await TestEnvironment.connect()
        try await db.simpleQuery("DO $$ BEGIN RAISE NOTICE 'just saying'; RAISE WARNING 'careful'; END $$")
        #expect(try await db.query("SELECT 2 AS two").first!.decode("two", as: Int.self) == 2)
    }
}

extension PostgresDriverTests {
    @Test func sessionSettingsApplyToEverySessionIncludingReconnects() async throws {
        var config = try TestEnvironment.postgresConfiguration()
        config.sessionSettings = ["idle_in_transaction_session_timeout": "90s", "search_path": "public, pg_temp"]
        let db = try await PostgresConnection.connect(config, logger: TestEnvironment.logger)
        func settings() async throws -> [String] {
            let row = try await db.query(
                "SELECT current_setting('idle_in_transaction_session_timeout') AS t, current_setting('search_path') AS a").first!
            return [try row.decode("t"), try row.decode("a")]
        }
        #expect(try await settings() == ["90s", "public, pg_temp"])
        let admin = try await TestEnvironment.connect()
        try await admin.query("SELECT pg_terminate_backend($1::int)", [.int(Int64(await db.backendPID()))])
        try await Task.sleep(for: .milliseconds(100))
        _ = try? await db.query("SELECT 1")  // reports the lost connection
        #expect(try await settings() == ["90s", "public, pg_temp"])
    }
}
