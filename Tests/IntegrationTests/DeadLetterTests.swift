import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// Events that cannot be delivered, end to end: dead-lettered with their reason while their
/// neighbours land, logged and counted, and listed, requeued and purged by the operator's commands.
@Suite struct DeadLetterTests {
    @Test func poisonEventsAreDeadLetteredAfterOneAttemptWhileTheirNeighboursLand() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let collection = TestEnvironment.uniqueName("poison")
            let stream = "stream:" + collection
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
            var good: [UUID] = []
            try await db.transaction { tx in
                for n in 0..<20 {
                    let id = UUID()
                    good.append(id)
                    try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection, id: .uuid(id), vector: [1, 0, 0, Float(n)], key: "k\(n)"), on: tx)
                    if n == 7 {  // wrong vector dimension
                        try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection, id: .uuid(UUID()), vector: [1, 2, 3], key: "bad-dim"), on: tx)
                    }
                    if n == 12 {  // a source table the config does not map
                        let row = UUID()
                        try await OutboxWriter.enqueue(.qdrantUpsert(
                            collection: collection, id: .uuid(row), vector: [0, 1, 0, 0], source: ("orders; DROP TABLE x", row.uuidString)), on: tx)
                    }
                    try await OutboxWriter.enqueue(.redisXAdd(stream: stream, fields: ["n": String(n)], key: "k\(n)"), on: tx)
                }
            }
            // An xadd to a key that holds a string (WRONGTYPE: dead), then a later event of its key
            // (delivered). The operator fixes the key and requeues it below.
            let fixable = "stream:" + TestEnvironment.uniqueName("fixable"), fixableLater = fixable + ":later"
            let redis = try await TestEnvironment.redis()
            try await redis.command("SET", fixable, "a string, not a stream")
            try await db.transaction { tx in
                try await OutboxWriter.enqueue(.redisXAdd(stream: fixable, fields: ["n": "1"], key: "fixable"), on: tx)
                try await OutboxWriter.enqueue(.redisXAdd(stream: fixableLater, fields: ["n": "2"], key: "fixable"), on: tx)
            }
            // A writer that bypassed outbox.enqueue: payloads of the wrong shape.
            try await db.query("""
                INSERT INTO outbox.events (destination, operation, key, payload) VALUES
                  ('redis', 'xadd', 'bad-shape', '{"stream": 5, "fields": {"a": "b"}}'),
                  ('qdrant', 'delete', 'bad-shape-q', '{"collection": "\(collection)", "ids": "all"}')
                """)
            let relay = try DaemonProcess.relay(databaseURL: url)
            try await eventually("drain", timeout: .seconds(60)) {
                try await db.count("outbox.events") == 0
            }
            let dead = try await db.query("SELECT key, attempts, error FROM outbox.dead_letters ORDER BY id")
            let byKey = Dictionary(uniqueKeysWithValues: try dead.rows.map { (try $0.decode("key", as: String.self), $0) })
            #expect(dead.rows.count == 5)
            #expect(try byKey["fixable"]?.decode("error", as: String.self).contains("WRONGTYPE") == true)
            #expect(try dead.rows.allSatisfy { try $0.decode("attempts", as: Int.self) == 1 })
            #expect(try byKey["bad-dim"]?.decode("error", as: String.self).contains("Vector dimension error: expected dim: 4, got 3") == true)
            let unmapped = dead.rows.first { (try? $0.decode("error", as: String.self).contains("is not a table mapped in config")) == true }
            #expect(unmapped != nil)
            #expect(try byKey["bad-shape"]?.decode("error", as: String.self) == #"malformed redis.xadd payload: "stream" must be a string"#)
            #expect(try byKey["bad-shape-q"]?.decode("error", as: String.self).contains(#""ids" must be a non-empty list"#) == true)

            let count = try await qdrant.call(.POST, "/collections/\(collection)/points/count", ["exact": true])
            #expect(count.json?["result"]?["count"] == .number(Double(good.count)))
            #expect(try await redis.command("XLEN", stream) == .integer(20))
            #expect(try await redis.command("XLEN", fixableLater) == .integer(1))
            let status = try JSONValue.parse(await relay.get("/status")?.body ?? "{}")
            #expect(status["destinations"]?["qdrant"]?["dead_lettered"] == 3)
            #expect(status["destinations"]?["redis"]?["dead_lettered"] == 2)
            #expect(status["destinations"]?["qdrant"]?["dead_letters"] == 3)

            // dead-letters list / requeue / purge, as an operator uses them.
            let cli = try TestEnvironment.executable("outbox-relay")
            let env = ["OUTBOX_POSTGRES_URL": url]
            let list = try await runProcess(cli, ["dead-letters", "list", "--config", "config/outbox.yaml"], environment: env)
            #expect(list.status == 0)
            #expect(list.stdout.contains("5 dead letter(s)"))
            #expect(list.stdout.contains("Vector dimension error"))
            let statusCommand = try await runProcess(cli, ["status", "--json", "--config", "config/outbox.yaml"], environment: env)
            let figures = try JSONValue.parse(statusCommand.stdout)
            #expect(figures["qdrant"]?["dead_letters"] == 3)
            #expect(figures["redis"]?["dead_letters"] == 2)
            #expect(figures["redis"]?["pending"] == 0)
            // The relay's four worker sessions (two lanes per destination); not its listener, not this
            // test's own session, not the status command's.
            #expect(figures["relay_connections"] == 4, "\(statusCommand.stdout)")
            let purge = try await runProcess(cli, ["dead-letters", "purge", "--key", "bad-shape", "--config", "config/outbox.yaml"], environment: env)
            #expect(purge.stdout == "purged 1 dead letter(s)\n")
            try await redis.command("DEL", fixable)
            let requeue = try await runProcess(cli, ["dead-letters", "requeue", "--all", "--config", "config/outbox.yaml"], environment: env)
            #expect(requeue.stdout == "requeued 4 event(s)\n")
            // Still poison: back in dead letters after one more attempt. The fixed one lands, once,
            // though a later event of its key landed before it.
            try await eventually("requeued poison dead again, the fixed one delivered", timeout: .seconds(30)) {
                let dead = try await db.count("outbox.dead_letters")
                let pending = try await db.count("outbox.events")
                return dead == 3 && pending == 0
            }
            #expect(try await redis.command("XLEN", fixable) == .integer(1))
            let invalid = try await runProcess(cli, ["dead-letters", "requeue", "--config", "config/outbox.yaml"], environment: env)
            #expect(invalid.status != 0)
            #expect(invalid.stderr.contains("choose exactly one of --id, --key or --all"))
            try await redis.command("DEL", stream, fixable, fixableLater)
            _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
        }
    }

    /// A dead letter for `relay.max_attempts` is logged and counted like one the destination
    /// refused (it once logged nothing).
    @Test func anEventOutOfAttemptsIsDeadLetteredLoggedAndCounted() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            try await OutboxWriter.enqueue(
                .qdrantUpsert(collection: "extractions", id: .uuid(UUID()), text: "to embed", key: "out-of-attempts"), on: db)
            // Nothing listens at the embedding endpoint: every attempt is a transport error, which is retried.
            let relay = try DaemonProcess.relay(databaseURL: url, environment: [
                "OUTBOX_EMBEDDING_PROVIDER": "openai", "OUTBOX_EMBEDDING_BASE_URL": "http://127.0.0.1:\(try freePort())",
                "OUTBOX_EMBEDDING_API_KEY": "test-key", "OUTBOX_RELAY_MAX_ATTEMPTS": "2",
                "OUTBOX_RELAY_BACKOFF_INITIAL": "100ms", "OUTBOX_RELAY_BACKOFF_MAX": "200ms",
            ])
            try await eventually("dead letter", timeout: .seconds(30)) { try await db.count("outbox.dead_letters") == 1 }
            let error = try await db.query("SELECT error FROM outbox.dead_letters").first!.decode("error", as: String.self)
            #expect(error.hasPrefix("gave up after 2 attempts; last error: embedding failed: "), "\(error)")
            try await eventually("the dead letter counted", timeout: .seconds(5)) {
                await relay.metric(#"outbox_events_dead_lettered_total{destination="qdrant"}"#) == 1
            }
            let logged = relay.log.split(separator: "\n").filter { $0.contains("Event dead-lettered") }
            #expect(logged.count == 1, "\(relay.log.suffix(2000))")
            #expect(logged.first?.contains("outbox.key=out-of-attempts") == true, "\(logged)")
            #expect(logged.first?.contains("gave up after 2 attempts") == true, "\(logged)")
        }
    }

    /// A wrong Qdrant api-key (a rotation gone wrong) is the destination's fault, not the events':
    /// past `relay.max_attempts` they still wait, `/readyz` says why, and once the key is right
    /// they all land. (Before, each became a dead letter after one attempt while `/readyz` said ready.)
    @Test func aRefusedAPIKeyDeadLettersNothingAndTheEventsLandOnceItIsFixed() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let collection = TestEnvironment.uniqueName("rotated")
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
            try await db.transaction { tx in
                for n in 0..<5 {
                    try await OutboxWriter.enqueue(
                        .qdrantUpsert(collection: collection, id: .uuid(UUID()), vector: [1, 0, 0, Float(n)], key: "k\(n)"), on: tx)
                }
            }
            let fast = ["OUTBOX_RELAY_BACKOFF_INITIAL": "100ms", "OUTBOX_RELAY_BACKOFF_MAX": "200ms"]
            let wrong = try DaemonProcess.relay(databaseURL: url, environment: fast.merging([
                "OUTBOX_QDRANT_API_KEY": "rotated-but-wrong", "OUTBOX_RELAY_MAX_ATTEMPTS": "2",
            ]) { $1 })
            try await eventually("readyz 503 naming the refusal", timeout: .seconds(20)) {
                guard let ready = await wrong.get("/readyz"), ready.status == 503 else { return false }
                return ready.body.contains("qdrant failing") && ready.body.contains("401")
            }
            try await eventually("attempts past relay.max_attempts", timeout: .seconds(30)) {
                try await db.query("SELECT coalesce(min(attempts), 0) AS n FROM outbox.events").first!.decode("n", as: Int.self) >= 3
            }
            #expect(try await db.count("outbox.dead_letters") == 0)
            #expect(try await db.count("outbox.events") == 5)
            await wrong.stop()

            let fixed = try DaemonProcess.relay(databaseURL: url, environment: fast)
            try await eventually("every event delivered with the right key", timeout: .seconds(30)) {
                try await db.count("outbox.events") == 0
            }
            #expect(try await db.count("outbox.dead_letters") == 0)
            let points = try await qdrant.call(.POST, "/collections/\(collection)/points/count", ["exact": true])
            #expect(points.json?["result"]?["count"] == 5)
            try await eventually("ready again", timeout: .seconds(10)) { await fixed.get("/readyz")?.status == 200 }
            _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
        }
    }

}
