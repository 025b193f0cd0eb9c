import Foundation
import OutboxCore
import OutboxTestSupport
import Testing

/// The writer contract: `outbox.enqueue(...)` in the writer's own transaction (DESIGN §3).
@Suite struct OutboxWriterTests {
    @Test func committedTransactionHasRowAndEventRolledBackHasNeither() async throws {
        let db = try await TestEnvironment.migratedConnection()
        let kept = UUID()
        let dropped = UUID()
        try await db.transaction { tx in
            try await tx.query("INSERT INTO extractions (id, source_id, content) VALUES ($1, 'doc-1', 'kept')", [.uuid(kept)])
            try await OutboxWriter.enqueue(
                .qdrantUpsert(collection: "extractions", id: .uuid(kept), text: "kept",
                              source: ("extractions", kept.uuidString.lowercased())), on: tx)
        }
        struct WriterCrashed: Error {}
        await #expect(throws: WriterCrashed.self) {
            try await db.transaction { tx in
                try await tx.query("INSERT INTO extractions (id, source_id, content) VALUES ($1, 'doc-2', 'dropped')", [.uuid(dropped)])
                try await OutboxWriter.enqueue(
                    .qdrantUpsert(collection: "extractions", id: .uuid(dropped), text: "dropped",
                                  source: ("extractions", dropped.uuidString.lowercased())), on: tx)
                throw WriterCrashed()
            }
        }
        let rows = "extractions WHERE id = $1"
        let events = "outbox.events WHERE destination = 'qdrant' AND key = $1"
        #expect(try await db.count(rows, [.uuid(kept)]) == 1)
        #expect(try await db.count(events, [.text(kept.uuidString.lowercased())]) == 1)
        #expect(try await db.count(rows, [.uuid(dropped)]) == 0)
        #expect(try await db.count(events, [.text(dropped.uuidString.lowercased())]) == 0)
        try await db.query("DELETE FROM outbox.events WHERE key = $1", [.text(kept.uuidString.lowercased())])
        try await db.query("DELETE FROM extractions WHERE id = $1", [.uuid(kept)])  // leave no drift behind
    }

    @Test func enqueueStoresTheEventAsGiven() async throws {
        let db = try await TestEnvironment.migratedConnection()
        let key = TestEnvironment.uniqueName("writer")
        var event = OutboxEvent.redisXAdd(stream: "s:\(key)", fields: ["seq": "1", "note": "héllo"], key: key)
        event.headers = ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
        let id = try await db.transaction { tx in try await OutboxWriter.enqueue(event, on: tx) }
        let row = try await db.query(
            "SELECT destination, operation, key, payload::text AS payload, headers->>'traceparent' AS tp, attempts FROM outbox.events WHERE id = $1",
            [.int(id)]).first!
        #expect(try row.decode("destination", as: String.self) == "redis")
        #expect(try row.decode("operation", as: String.self) == "xadd")
        #expect(try row.decode("key", as: String.self) == key)
        #expect(try JSONValue.parse(row.decode("payload")) == event.payload)
        #expect(try row.decode("tp", as: String.self) == event.headers["traceparent"])
        #expect(try row.decode("attempts", as: Int.self) == 0)
        try await db.query("DELETE FROM outbox.events WHERE id = $1", [.int(id)])
    }

    @Test(arguments: [
        ("kafka", "xadd", #"{"stream":"s","fields":{"a":"b"}}"#, #"unknown destination "kafka""#),
        ("redis", "zadd", #"{"stream":"s"}"#, #"unknown operation "zadd" for destination redis"#),
        ("qdrant", "upsert", #"{"id":1,"vector":[1]}"#, #"qdrant.upsert payload is missing required field "collection""#),
        ("redis", "xadd", #"{"fields":{"a":"b"}}"#, #"redis.xadd payload is missing required field "stream""#),
        ("redis", "publish", #"{"channel":"c"}"#, #"redis.publish payload is missing required field "message""#),
        ("qdrant", "delete", #"{"collection":"c"}"#, #"qdrant.delete payload is missing required field "ids""#),
        ("qdrant", "upsert", #"{"collection":"c","id":"not-a-uuid","vector":[1]}"#, #"field "id" is "not-a-uuid""#),
        ("qdrant", "upsert", #"{"collection":"c","id":1}"#, #"needs "vector" or "text""#),
        ("redis", "xadd", #"{"stream":"s","fields":{"n":1}}"#, #""n" is not a string"#),
        ("redis", "set", #"{"key":"k","value":"v","ttl_seconds":0}"#, #""ttl_seconds" must be a positive integer"#),
        ("redis", "del", #"[1,2]"#, "payload must be a JSON object, got array"),
    ])
    func enqueueRejectsBadEventsNamingTheProblem(destination: String, operation: String, payload: String, message: String)
        async throws
    {
        let db = try await TestEnvironment.migratedConnection()
        let key = TestEnvironment.uniqueName("bad")
        let error = try await #require(throws: PostgresError.self) {
            try await db.transaction { tx in
                try await tx.query(
                    "SELECT outbox.enqueue($1, $2, $3, $4::jsonb)", [.text(destination), .text(operation), .text(key), .jsonb(payload)])
            }
        }
        #expect(error.sqlState == "22023")
        #expect(error.message.contains(message), "got: \(error.message)")
        #expect(try await db.count("outbox.events WHERE key = $1", [.text(key)]) == 0)
    }

    @Test(arguments: [
        ("", "{}", "key must be a non-empty string"),
        ("k", "[]", "headers must be a JSON object, got array"),
    ])
    func enqueueRejectsAnEmptyKeyAndHeadersThatAreNotAnObject(key: String, headers: String, message: String) async throws {
        let db = try await TestEnvironment.migratedConnection()
        let error = try await #require(throws: PostgresError.self) {
            try await db.transaction { tx in
                try await tx.query(
                    "SELECT outbox.enqueue('redis', 'publish', $1, '{\"channel\":\"c\",\"message\":\"m\"}', $2::jsonb)",
                    [.text(key), .jsonb(headers)])
            }
        }
        #expect(error.sqlState == "22023")
        #expect(error.message.contains(message), "got: \(error.message)")
    }

    /// schema/006's fast path (`outbox._event_is_valid`) may only accept what 001's detailed
    /// checks (`outbox.validate_event`) accept; everything else takes the detailed path, whose
    /// errors the tests above check. Compared over payloads derived from a valid one per operation:
    /// each field removed, replaced, and nested values and array elements replaced, by values of
    /// every JSON type and the edge cases of the checks.
    @Test func fastValidationAcceptsOnlyWhatTheDetailedChecksAccept() async throws {
        let corpus = Self.validationCorpus()
        let db = try await TestEnvironment.migratedConnection()
        let row = try await db.transaction { tx in
            try await tx.query(Self.createAcceptedFunction)
            return try await tx.query(
                """
                SELECT count(*) FILTER (WHERE fast) AS fast, count(*) FILTER (WHERE detailed) AS detailed,
                       count(*) FILTER (WHERE fast AND NOT detailed) AS violations,
                       string_agg(d || '.' || o || ' ' || p, E'\n') FILTER (WHERE fast AND NOT detailed) AS examples
                FROM (SELECT d, o, p, coalesce(outbox._event_is_valid(d, o, p::jsonb), false) AS fast,
                             pg_temp.accepted(d, o, p::jsonb, true) AS detailed
                      FROM unnest($1::text[], $2::text[], $3::text[]) AS c(d, o, p)) r
                """, Self.columns(corpus)).first!
        }
        let examples = try row.decode("examples", as: String?.self) ?? ""
        #expect(try row.decode("violations", as: Int.self) == 0, "\(examples)")
        // The fast path does the work: nearly every valid payload takes it.
        let fast = try row.decode("fast", as: Int.self), detailed = try row.decode("detailed", as: Int.self)
        #expect(corpus.count > 3_000 && detailed > 1_000 && fast >= detailed * 9 / 10, "\(corpus.count) payloads, \(detailed) valid, \(fast) fast")
    }

    /// schema/008: `outbox.enqueue` picks the operation's fast check statement by statement. Over
    /// the corpus it accepts exactly what the detailed checks accept, and a valid event of every
    /// operation is accepted without them (here they are replaced, inside a transaction that
    /// rolls back, by a function that always fails).
    @Test func enqueueTakesEachOperationsFastCheckAndAcceptsWhatTheDetailedChecksAccept() async throws {
        let corpus = Self.validationCorpus()
        let db = try await TestEnvironment.migratedConnection()
        // The results leave the transaction in the error that rolls it back.
        struct RolledBack: Error { var mismatches: String?, fastOperations: [String] }
        do {
            try await db.transaction { tx in
                try await tx.query(Self.createAcceptedFunction)
                let mismatches = try await tx.query(
                    """
                    SELECT string_agg(d || '.' || o || ' ' || p || CASE WHEN enqueued THEN ' accepted' ELSE ' refused' END, E'\n') AS m
                    FROM (SELECT d, o, p, pg_temp.accepted(d, o, p::jsonb, false) AS enqueued, pg_temp.accepted(d, o, p::jsonb, true) AS detailed
                          FROM unnest($1::text[], $2::text[], $3::text[]) AS c(d, o, p)) r
                    WHERE enqueued <> detailed
                    """, Self.columns(corpus)
                ).first!.decode("m", as: String?.self)
                try await tx.query(
                    """
                    CREATE OR REPLACE FUNCTION outbox.validate_event(destination text, operation text, payload jsonb)
                    RETURNS void LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'detailed checks ran' USING ERRCODE = '22023'; END $$
                    """)
                let fast = try await tx.query(
                    "SELECT string_agg(d || '.' || o, ',') AS ops FROM unnest($1::text[], $2::text[], $3::text[]) AS c(d, o, p) WHERE pg_temp.accepted(d, o, p::jsonb, false)",
                    Self.columns(Self.validEvents)
                ).first!.decode("ops", as: String?.self)
                throw RolledBack(mismatches: mismatches, fastOperations: fast?.split(separator: ",").map(String.init) ?? [])
            }
            Issue.record("the transaction committed")
        } catch let result as RolledBack {
            #expect(result.mismatches == nil, "\(result.mismatches ?? "")")
            // Operations whose valid event went in without the detailed checks: all of them.
            #expect(result.fastOperations == Self.validEvents.map { $0.0 + "." + $0.1 })
        }
    }

    /// `pg_temp.accepted(d, o, p, detailed)`: whether the detailed checks (`outbox.validate_event`),
    /// or else `outbox.enqueue`, accept the event (SQLSTATE 22023 means they do not).
    static let createAcceptedFunction = """
        CREATE FUNCTION pg_temp.accepted(d text, o text, p jsonb, detailed boolean) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            IF detailed THEN PERFORM outbox.validate_event(d, o, p); ELSE PERFORM outbox.enqueue(d, o, 'k', p); END IF;
            RETURN true;
        EXCEPTION WHEN invalid_parameter_value THEN RETURN false; END $$
        """

    /// Events as the parameters `unnest($1::text[], $2::text[], $3::text[]) AS c(d, o, p)` reads.
    static func columns(_ events: [(String, String, String)]) -> [PostgresValue] {
        [.textArray(events.map(\.0)), .textArray(events.map(\.1)), .textArray(events.map(\.2))]
    }

    static let uuid = "2b1c1e4e-5d7a-4f3e-9a55-2f0d1c3b4a59"
    /// A valid event of each operation.
    static let validEvents: [(String, String, String)] = [
        ("qdrant", "upsert", #"{"collection":"c","id":"\#(uuid)","vector":[0.1,2],"text":"t","payload":{"a":1},"source":{"table":"extractions","id":"r1"}}"#),
        ("qdrant", "delete", #"{"collection":"c","ids":["\#(uuid)"]}"#),
        ("qdrant", "set_payload", #"{"collection":"c","ids":["\#(uuid)"],"payload":{"a":1}}"#),
        ("redis", "xadd", #"{"stream":"s","fields":{"a":"b"},"maxlen":100}"#),
        ("redis", "publish", #"{"channel":"c","message":"m"}"#),
        ("redis", "del", #"{"keys":["a","b"]}"#),
        ("redis", "set", #"{"key":"k","value":"v","ttl_seconds":60}"#),
    ]

    static func validationCorpus() -> [(String, String, String)] {
        let uuid = Self.uuid
        let samples = [
            "null", "true", "false", "0", "1", "1.0", "-1", "1.5", "1e2", "1e400", "-0", "18446744073709551615",
            "18446744073709551616", #""""#, #""x""#, #""\#(uuid)""#, #""\#(uuid.uppercased().replacingOccurrences(of: "-", with: ""))""#,
            #""\#(uuid)\n""#, #""not-a-uuid""#, "[]", "[1]", #"["x"]"#, "[[1]]", "[null]", #"[1,"x"]"#, #"["\#(uuid)",1]"#,
            #"["\#(uuid)",["\#(uuid)"]]"#, "{}", #"{"a":"b"}"#, #"{"outbox_id":"x"}"#, #"{"a":1}"#, #"{"a":["b"]}"#,
            #"{"table":"extractions","id":"r"}"#, #"{"table":"","id":"r"}"#, #"{"table":"x","id":[1]}"#, #"{"table":"x","id":1.5}"#,
            #"{"table":["x"],"id":"r"}"#,
        ]
        let fields = ["collection", "id", "vector", "text", "payload", "source", "ids", "stream", "fields", "maxlen", "channel",
                      "message", "keys", "key", "value", "ttl_seconds"]
        // Values are spliced as text, so numbers beyond a double (1e400) reach Postgres as written.
        func object(_ members: [(String, String)]) -> String {
            "{" + members.map { "\(JSONValue.string($0.0).jsonText):\($0.1)" }.joined(separator: ",") + "}"
        }
        func members(_ json: String) -> [(String, String)] {
            guard case .object(let o)? = try? JSONValue.parse(json) else { return [] }
            return o.keys.sorted().map { ($0, o[$0]!.jsonText) }
        }
        var corpus: [(String, String, String)] = []
        for (d, o, base) in validEvents {
            corpus.append((d, o, base))
            for sample in samples { corpus.append((d, o, sample)) }
            let top = members(base)
            for field in fields {
                let others = top.filter { $0.0 != field }
                corpus.append((d, o, object(others)))
                for sample in samples { corpus.append((d, o, object(others + [(field, sample)]))) }
                guard let value = top.first(where: { $0.0 == field })?.1 else { continue }
                // Nested: replace (or add) each member of an object, each element of an array.
                if value.hasPrefix("{") {
                    let inner = members(value)
                    for key in inner.map(\.0) + ["x"] {
                        for sample in samples {
                            corpus.append((d, o, object(others + [(field, object(inner.filter { $0.0 != key } + [(key, sample)]))])))
                        }
                    }
                } else if value.hasPrefix("["), case .array(let elements)? = try? JSONValue.parse(value) {
                    let texts = elements.map(\.jsonText)
                    for position in 0...texts.count {
                        for sample in samples {
                            var changed = texts
                            if position < changed.count { changed[position] = sample } else { changed.append(sample) }
                            corpus.append((d, o, object(others + [(field, "[" + changed.joined(separator: ",") + "]")])))
                        }
                    }
                }
            }
        }
        for (d, o) in [("kafka", "xadd"), ("redis", "zadd"), ("qdrant", "xadd")] {
            corpus.append((d, o, #"{"stream":"s","fields":{"a":"b"}}"#))
        }
        return corpus
    }

    @Test func writeSendsTheDomainStatementAndTheEventInOneRoundTrip() async throws {
        let db = try await TestEnvironment.migratedConnection()
        let kept = UUID()
        let insert = "INSERT INTO extractions (id, source_id, content) VALUES ($1, 'doc-w', 'kept') RETURNING id"
        let written = try await db.transaction { tx in
            try await OutboxWriter.write(
                (insert, [.uuid(kept)]),
                enqueue: [.qdrantUpsert(collection: "extractions", id: .uuid(kept), text: "kept",
                                        source: ("extractions", kept.uuidString.lowercased()))],
                on: tx)
        }
        #expect(try written.results.map { try $0.first!.decode("id", as: UUID.self) } == [kept])
        let eventID = try #require(written.eventIDs.first)
        #expect(try await db.count("outbox.events WHERE id = $1 AND key = $2",
                                [.int(eventID), .text(kept.uuidString.lowercased())]) == 1)

        // A failing domain statement: its error is thrown, the event after it never runs, and
        // the transaction rolls back.
        let key = TestEnvironment.uniqueName("write")
        let error = try await #require(throws: PostgresError.self) {
            try await db.transaction { tx in
                try await OutboxWriter.write(
                    (insert, [.uuid(kept)]),  // duplicate primary key
                    enqueue: [.redisPublish(channel: "c", message: "m", key: key)], on: tx)
            }
        }
        #expect(error.sqlState == "23505")
        #expect(try await db.count("outbox.events WHERE key = $1", [.text(key)]) == 0)
        try await db.query("DELETE FROM outbox.events WHERE id = $1", [.int(eventID)])
        try await db.query("DELETE FROM extractions WHERE id = $1", [.uuid(kept)])
    }

    /// A transaction notifies only while a relay sleeps — it holds its destination's wake lock,
    /// (1869575286, 1 qdrant | 2 redis), schema/012 — and then once per destination however many
    /// events it enqueues. With every relay awake, writers commit without a notification, which
    /// Postgres would serialise.
    @Test func aTransactionWakesASleepingRelayOncePerDestinationAndAnAwakeOneNotAtAll() async throws {
        // In its own database: advisory locks are per database, and other tests' writers in the
        // shared one hold the wake lock shared in their transactions.
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let listener = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)
            try await listener.listen("outbox_events")
            let key = TestEnvironment.uniqueName("wake")
            let writerPID = await db.backendPID()
            func notifications() async throws -> [String] {
                let events = (0..<50).map { OutboxEvent.redisSet(key: "k\($0)", value: "v", key: "\(key)-\($0)") }
                try await db.transaction { tx in _ = try await OutboxWriter.enqueue(events, on: tx) }
                var payloads: [String] = []
                let deadline = ContinuousClock.now + .milliseconds(300)
                while ContinuousClock.now < deadline {
                    payloads += try await listener.waitForNotifications(timeout: .milliseconds(100))
                        .filter { $0.backendPID == writerPID }.map(\.payload)
                }
                return payloads
            }
            #expect(try await notifications() == [], "no relay sleeps")
            // A writer that does not notify keeps relays from arming until it has committed, so the
            // claim a relay makes after arming sees its event: no wake-up is lost.
            func tryArm() async throws -> Bool {
                try await listener.query("SELECT pg_try_advisory_lock(1869575286, 2) AS armed").first!.decode("armed", as: Bool.self)
            }
            try await db.transaction { tx in
                _ = try await OutboxWriter.enqueue([.redisSet(key: "k", value: "v", key: "\(key)-silent")], on: tx)
                #expect(try await tryArm() == false)
            }
            #expect(try await tryArm() == true)
            try await listener.query("SELECT pg_advisory_unlock_all()")
            try await listener.query("SELECT pg_advisory_lock(1869575286, 1)")  // a relay sleeps, for qdrant only
            #expect(try await notifications() == [], "no relay sleeps for redis")
            try await listener.query("SELECT pg_advisory_lock(1869575286, 2)")
            #expect(try await notifications() == ["redis"])
            try await listener.query("SELECT pg_advisory_unlock_all()")
            #expect(try await notifications() == [], "the relay woke up")
            await listener.close()
        }
    }

    /// In its own database: a backfill holds all 1,024 slot locks of its destination until it
    /// commits (shared, so no writer waits; relays hold back the slots' events meanwhile), and
    /// stays within Postgres' lock table.
    @Test func backfillOf100000DistinctKeysInOneTransactionSucceeds() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { _, db in
            let inserted = try await db.transaction { tx in
                try await tx.query(
                    """
                    SELECT count(outbox.enqueue('redis', 'set', 'backfill-' || g, jsonb_build_object('key', 'k' || g, 'value', 'v'))) AS n
                    FROM generate_series(1, 100000) g
                    """).first!.decode("n", as: Int.self)
            }
            #expect(inserted == 100_000)
            #expect(try await db.count("(SELECT DISTINCT key FROM outbox.events) AS k") == 100_000)
        }
    }

    /// Writers of one key never wait for each other (schema/013: the slot lock is shared); the
    /// relays' claims keep the key's order instead (`ClaimTests.aClaimWaitsForASmallerIdOfTheKeyStillBeingWritten`).
    @Test func aWriterNeverWaitsForAnotherWriterOfTheSameKey() async throws {
        let first = try await TestEnvironment.migratedConnection()
        let second = try await TestEnvironment.connect()
        try await second.query("SET lock_timeout = '2s'")  // a wait fails the test instead of hanging it
        let key = TestEnvironment.uniqueName("order")
        let event = OutboxEvent.redisPublish(channel: "c", message: "m", key: key)
        try await first.transaction { tx in
            let firstID = try await OutboxWriter.enqueue(event, on: tx)
            // The first writer's transaction is open: the second commits the same key meanwhile.
            let secondID = try await second.transaction { tx in try await OutboxWriter.enqueue(event, on: tx) }
            #expect(secondID > firstID)
        }
        try await first.query("DELETE FROM outbox.events WHERE key = $1", [.text(key)])
    }
}

/// The Python example in docs/ runs against the real database and does what it says.
@Suite struct PythonWriterExampleTests {
    @Test func pythonExampleCommitsRowAndEvents() async throws {
        let python = URL(fileURLWithPath: try TestEnvironment.variable("OUTBOX_VENV")).appendingPathComponent("bin/python")
        let db = try await TestEnvironment.migratedConnection()
        let text = "python example \(UUID().uuidString)"
        let result = try await runProcess(python, ["docs/examples/python_writer.py", text])
        #expect(result.status == 0, "\(result.stderr)")
        let id = try #require(UUID(uuidString: result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        let row = try await db.query("SELECT content FROM extractions WHERE id = $1", [.uuid(id)]).first
        #expect(try row?.decode("content", as: String.self) == text)
        let events = try await db.query(
            "SELECT destination || '.' || operation AS op FROM outbox.events WHERE payload->>'id' = $1 OR payload->'fields'->>'extraction_id' = $1 ORDER BY id",
            [.text(id.uuidString.lowercased())])
        #expect(try events.rows.map { try $0.decode("op", as: String.self) } == ["qdrant.upsert", "redis.xadd"])
        try await db.query(
            "DELETE FROM outbox.events WHERE payload->>'id' = $1 OR payload->'fields'->>'extraction_id' = $1",
            [.text(id.uuidString.lowercased())])
        try await db.query("DELETE FROM extractions WHERE id = $1", [.uuid(id)])  // leave no drift behind
    }
}
