import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

extension HostileInput {
    /// Hostile writer input: what `outbox.enqueue` (and the Swift writer) refuses, with which SQLSTATE
    /// and message, and that a refused enqueue leaves neither the domain row nor an event: wrong
    /// argument types and NULLs, NUL bytes, and a seeded fuzzer of random and mutated events (whose
    /// accepted cases the relay must then deliver intact or dead-letter with a reason).
    ///
    /// Part of ``HostileInput``, which runs its suites' tests one at a time.
    @Suite struct HostileWriterInputTests {
        // Light, SQL-only tests first (the hostile-input suites are serialized; see HostileInput.swift).
        @Test func wrongArgumentTypesAndNullsGetAClearErrorAndWriteNothing() async throws {
            try await TestEnvironment.withFreshDatabase(migrated: true) { _, db in
                let cases: [(String, String, String)] = [
                    ("SELECT outbox.enqueue(1, 2, 3, 4)", "42883", "function outbox.enqueue(integer, integer, integer, integer) does not exist"),
                    ("SELECT outbox.enqueue('redis', 'set', 'k', 'not json')", "22P02", "invalid input syntax for type json"),
                    ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": \"k\", \"value\": \"v\"}', '[]')", "22023", "headers must be a JSON object, got array"),
                    ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": \"k\", \"value\": \"v\"}', NULL)", "22023", "headers must be a JSON object, got NULL"),
                    ("SELECT outbox.enqueue(NULL, 'set', 'k', '{}')", "22023", "unknown destination"),
                    ("SELECT outbox.enqueue('redis', NULL, 'k', '{}')", "22023", "unknown operation"),
                    ("SELECT outbox.enqueue('redis', 'set', NULL, '{\"key\": \"k\", \"value\": \"v\"}')", "22023", "key must be a non-empty string"),
                    ("SELECT outbox.enqueue('redis', 'set', 'k', NULL)", "22023", "payload must be a JSON object, got NULL"),
                    ("SELECT outbox.enqueue('redis', 'set', 'k', 'null')", "22023", "payload must be a JSON object, got null"),
                    ("SELECT outbox.enqueue('redis', 'set', 'k', '\"text\"')", "22023", "payload must be a JSON object, got string"),
                    ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": [\"k\"], \"value\": \"v\"}')", "22023", #"field "key" must be a string, got array"#),
                    ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": \"k\", \"value\": 5}')", "22023", #"field "value" must be a string, got number"#),
                    ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": \"k\", \"value\": \"v\", \"ttl_seconds\": 1.5}')", "22023", #""ttl_seconds" must be a positive integer"#),
                    ("SELECT outbox.enqueue('qdrant', 'upsert', 'k', '{\"collection\": \"c\", \"id\": -1, \"vector\": [1]}')", "22023", #"field "id" is -1"#),
                    ("SELECT outbox.enqueue('qdrant', 'upsert', 'k', '{\"collection\": \"c\", \"id\": 1, \"vector\": [1, \"2\"]}')", "22023", #""vector" must hold numbers only"#),
                    ("SELECT outbox.enqueue('qdrant', 'delete', 'k', '{\"collection\": \"c\", \"ids\": []}')", "22023", #""ids" must not be empty"#),
                    ("SELECT outbox.enqueue('qdrant', 'set_payload', 'k', '{\"collection\": \"c\", \"ids\": [1], \"payload\": []}')", "22023", #"field "payload" must be an object, got array"#),
                    ("SELECT outbox.enqueue('redis', 'xadd', 'k', '{\"stream\": \"s\", \"fields\": {\"outbox_id\": \"1\"}}')", "22023", #"must not contain "outbox_id""#),
                ]
                for (sql, state, message) in cases {
                    let row = UUID()
                    let error = try await #require(throws: PostgresError.self, "\(sql)") {
                        try await db.transaction { tx in
                            try await tx.query("INSERT INTO extractions (id, source_id, content) VALUES ($1, 's', 'c')", [.uuid(row)])
                            try await tx.query(sql)
                        }
                    }
                    #expect(error.sqlState == state, "\(sql): \(error)")
                    #expect(error.message.contains(message), "\(sql): \(error.message)")
                    #expect(try await db.count("extractions WHERE id = $1", [.uuid(row)]) == 0)
                }
                #expect(try await db.count("outbox.events") == 0)
            }
        }

        @Test func nulBytesAreRefusedWithAClearErrorAndWriteNothing() async throws {
            try await TestEnvironment.withFreshDatabase(migrated: true) { _, db in
                let marker = TestEnvironment.uniqueName("nul")
                let cases: [(String, [PostgresValue], String, String)] = [
                    // \u0000 inside jsonb: Postgres' own error.
                    ("payload \\u0000", [.text("redis"), .text("set"), .text(marker), .jsonb(#"{"key": "k", "value": "a\u0000b"}"#)],
                     "22P05", "unsupported Unicode escape sequence"),
                    // NUL in a text argument: libpq would cut the value at the NUL and store "\(marker)" alone.
                    ("key NUL", [.text("redis"), .text("set"), .text(marker + "\u{0}tail"), .jsonb(#"{"key": "k", "value": "v"}"#)],
                     "22021", "parameter $3 contains a NUL byte"),
                    ("destination NUL", [.text("redis\u{0}x"), .text("set"), .text(marker), .jsonb(#"{"key": "k", "value": "v"}"#)],
                     "22021", "parameter $1 contains a NUL byte"),
                    ("raw NUL in JSON text", [.text("redis"), .text("set"), .text(marker), .jsonb("{\"key\": \"k\", \"value\": \"v\"}\u{0}junk")],
                     "22021", "parameter $4 contains a NUL byte"),
                ]
                for (name, parameters, state, message) in cases {
                    let row = UUID()
                    let error = try await #require(throws: PostgresError.self, "\(name)") {
                        try await db.transaction { tx in
                            try await tx.query("INSERT INTO extractions (id, source_id, content) VALUES ($1, 's', 'c')", [.uuid(row)])
                            try await tx.query("SELECT outbox.enqueue($1, $2, $3, $4::jsonb)", parameters)
                        }
                    }
                    #expect(error.sqlState == state, "\(name): \(error)")
                    #expect(error.message.contains(message), "\(name): \(error.message)")
                    #expect(try await db.count("extractions WHERE id = $1", [.uuid(row)]) == 0)
                }
                // The Swift writer: a NUL in a Redis value becomes \u0000 in JSON, which jsonb refuses.
                let error = try await #require(throws: PostgresError.self) {
                    try await db.transaction { tx in
                        try await OutboxWriter.enqueue(.redisSet(key: "k", value: "a\u{0}b", key: marker), on: tx)
                    }
                }
                #expect(error.sqlState == "22P05")
                #expect(try await db.count("outbox.events WHERE key LIKE $1", [.text(marker + "%")]) == 0, "an event was written with a shortened key")
            }
        }

        // MARK: The heavy one, last

        /// A few hundred seeded cases: a valid payload of every destination.operation in the contract
        /// table, mutated 0-3 times (fields dropped, retyped, added; hostile strings and numbers; deep
        /// nesting; SQL text as source.table), sometimes with a hostile key, destination or operation.
        /// Each is enqueued in a transaction next to a domain row. Rejected ones must fail with a clear
        /// error and leave neither row nor event; accepted ones must, once the relay has run, be
        /// delivered intact or dead-lettered with a reason — and the relay must stay up.
        @Test func randomAndMutatedEventsAreRejectedClearlyOrDeliveredIntactOrDeadLettered() async throws {
            // Fixed, so CI is reproducible; OUTBOX_FUZZ_SEED=N explores (and replays) other runs.
            let seed = ProcessInfo.processInfo.environment["OUTBOX_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x6_0B0C_5EED
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
                let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
                let fuzz = EventFuzzer(namespace: TestEnvironment.uniqueName("fuzz"))
                #expect(try await qdrant.call(.PUT, "/collections/\(fuzz.collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
                #expect(try await qdrant.call(.PUT, "/collections/\(fuzz.collection)/points?wait=true", [
                    "points": [["id": .string(EventFuzzer.existingPoint), "vector": [1, 0, 0, 0]]],
                ]).status == 200)

                var accepted: [FuzzCase] = []
                var rejected: [(FuzzCase, PostgresError)] = []
                for n in 0..<350 {
                    let c = fuzz.makeCase(n, seed: seed)
                    do {
                        let id = try await db.transaction { tx -> Int64 in
                            try await tx.query(
                                "INSERT INTO extractions (id, source_id, content) VALUES ($1, $2, 'fuzz')", [.uuid(c.rowID), .text("case-\(n)")])
                            return try await tx.query(
                                "SELECT outbox.enqueue($1, $2, $3, $4::jsonb, $5::jsonb) AS id",
                                [.text(c.destination), .text(c.operation), .text(c.key), .jsonb(c.payload), .jsonb(#"{"case": "\#(n)"}"#)]
                            ).first!.decode("id")
                        }
                        accepted.append(c.with(eventID: id))
                    } catch let error as PostgresError {
                        rejected.append((c, error))
                    }
                }

                // Rejections: a clear error, and nothing of the transaction left behind.
                for (c, error) in rejected {
                    let clear: Bool = switch error.sqlState {
                    case "22023": error.message.hasPrefix("outbox.enqueue:")
                        && ["payload", "destination", "operation", "key"].contains(where: error.message.contains)
                    case "22P05": error.message.contains("Unicode escape")  // \u0000 in jsonb
                    case "22021": error.message.contains("NUL byte")  // NUL in a text argument
                    case "54000": error.message.contains("index row")  // a key too long to index
                    default: false
                    }
                    #expect(clear, "case \(c.n) (seed \(seed)): \(c.destination).\(c.operation) \(c.payload.prefix(300)) -> \(error)")
                }
                let rejectedRows = try await db.count("extractions WHERE id = ANY($1::uuid[])", [.textArray(rejected.map { $0.0.rowID.uuidString })])
                #expect(rejectedRows == 0, "a rejected enqueue left its domain row")
                let rejectedEvents = try await db.count(
                    "outbox.events WHERE headers->>'case' = ANY($1::text[])", [.textArray(rejected.map { String($0.0.n) })])
                #expect(rejectedEvents == 0, "a rejected enqueue left an event")

                // Acceptances: delivered intact or dead-lettered with a reason, by a relay that stays up.
                let config = try TestEnvironment.configWithoutCollections()
                defer { try? FileManager.default.removeItem(atPath: config) }
                let relay = try DaemonProcess.relay(databaseURL: url, environment: [
                    "OUTBOX_EMBEDDING_DIMENSIONS": "4", "OUTBOX_RELAY_MAX_ATTEMPTS": "2", "OUTBOX_RELAY_BACKOFF_INITIAL": "100ms",
                    "OUTBOX_RELAY_BACKOFF_MAX": "300ms",
                ], config: config)
                try await eventually("drain (log: \(relay.log.suffix(1500)))", timeout: .seconds(120)) {
                    try await db.count("outbox.events") == 0
                }
                #expect(relay.process.isRunning, "relay died: \(relay.log.suffix(3000))")
                #expect(await relay.get("/livez")?.status == 200)
                #expect(!relay.log.contains("Fatal error"), "\(relay.log.suffix(3000))")

                let dead = Dictionary(uniqueKeysWithValues: try await db.query("SELECT id, error FROM outbox.dead_letters").rows.map {
                    (try $0.decode("id", as: Int64.self), try $0.decode("error", as: String.self))
                })
                let redis = try await TestEnvironment.redis()
                let instance = try await db.query("SELECT id FROM outbox.instance").first!.decode("id", as: String.self)
                var delivered = 0
                for c in accepted {
                    let id = try #require(c.eventID)
                    if let reason = dead[id] {
                        #expect(!reason.trimmingCharacters(in: .whitespaces).isEmpty, "case \(c.n) dead-lettered without a reason")
                        continue
                    }
                    delivered += 1
                    let problem = try await fuzz.effectProblem(of: c, redis: redis, qdrant: qdrant, db: db, dedupeInstance: instance)
                    #expect(problem == nil, "case \(c.n) (seed \(seed)) \(c.destination).\(c.operation) \(c.payload.prefix(300)): \(problem ?? "")")
                }
                let states = Dictionary(grouping: rejected, by: { $0.1.sqlState ?? "none" }).mapValues(\.count)
                print("fuzz (seed \(seed)): \(accepted.count) accepted (\(delivered) delivered, \(dead.count) dead-lettered), "
                    + "\(rejected.count) rejected \(states.sorted { $0.key < $1.key })")
                // The run exercised every path: otherwise this test proves nothing.
                #expect(rejected.count >= 50, "only \(rejected.count) rejected")
                #expect(delivered >= 50, "only \(delivered) delivered")
                #expect(dead.count >= 10, "only \(dead.count) dead-lettered")
                for op in EventFuzzer.operations {
                    #expect(accepted.contains { "\($0.destination).\($0.operation)" == op && dead[$0.eventID!] == nil }, "no \(op) delivered")
                }
                try await fuzz.cleanRedis(redis)
                _ = try await qdrant.call(.DELETE, "/collections/\(fuzz.collection)")
            }
        }
    }
}
