import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport
@testable import OutboxRelay

/// `outbox-relay serve` end to end: real Postgres (a fresh database per test, so each relay
/// drains only its own outbox), real Redis, the Qdrant stand-in.
@Suite struct RelayTests {
    @Test func drains10000EventsOver500KeysInOrderExactlyOnce() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let scenario = DrainScenario(keys: 500, rowsPerKey: 10)
            try await scenario.seed(db, qdrant: qdrant)
            #expect(try await scenario.pending(db) == 10_000)
            let relay = try DaemonProcess.relay(databaseURL: url)
            try await eventually("drain", timeout: .seconds(120)) { try await scenario.pending(db) == 0 }
            try await scenario.verify(db, qdrant: qdrant)
            let metrics = await relay.get("/metrics")?.body ?? ""
            #expect(metrics.contains(#"outbox_events_delivered_total{destination="redis"} 5000"#), "\(metrics.prefix(3000))")
            #expect(metrics.contains(#"outbox_events_delivered_total{destination="qdrant"} 5000"#))
            #expect(metrics.contains("outbox_delivery_latency_seconds_bucket"))
            // Every delivered event came from a claim that found events.
            for destination in ["redis", "qdrant"] {
                let claims = sample(metrics, #"outbox_relay_claims_total{destination="\#(destination)",result="events"}"#)
                #expect(claims.map { $0 > 0 && $0 <= 5000 } == true, "\(destination): \(claims.map(String.init) ?? "no claims counted")")
            }
        }
    }

    /// A deep backlog of a few hot keys: each claim takes the next share of every key rather than
    /// scanning the whole backlog for heads, and a claim that finds no heads stops at its window.
    @Test func claimsFollowHotKeysAndLookAtOneWindowOfRows() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { _, db in
            try await db.query(
                """
                SELECT count(outbox.enqueue('redis', 'set', 'hot' || (g % 3), jsonb_build_object('key', 'k', 'value', g::text)))
                FROM generate_series(1, 1500) g
                """)
            try await db.query(#"SELECT outbox.enqueue('redis', 'set', 'late', '{"key": "k", "value": "v"}')"#)
            let base: Int64 = try await db.query("SELECT min(id) - 1 AS base FROM outbox.events").first!.decode("base")
            let window = Int64(ClaimPlanning.window(batchSize: 10))
            #expect(window == 1_000)
            func claim(after: Int64, deliver: Bool) async throws -> OutboxStore.Claim {
                try await db.transaction { tx in
                    let claim = try await OutboxStore.claim(tx, destination: .redis, batchSize: 10, batchEvents: 60, maxPerKey: 20, after: after)
                    if deliver { try await tx.query("DELETE FROM outbox.events WHERE id = ANY($1)", [.intArray(claim.events.map(\.id))]) }
                    return claim
                }
            }
            // 3 heads, 20 events each (60 / 3): every key may have more, so the next claim starts
            // after the lowest of their last events.
            let first = try await claim(after: 0, deliver: true)
            #expect(first.heads == 3)
            #expect(first.events.map(\.id) == (1...60).map { base + $0 })
            #expect(first.next == ClaimPlanning.Scan(cursor: base + 58, more: true))  // hot1's 20th is event 58
            let second = try await claim(after: first.next.cursor, deliver: true)
            #expect(second.events.map(\.id) == (61...120).map { base + $0 })
            // Started past pending events of every key, a claim finds no heads in its window of
            // 1,000 rows and says to go on after it, without reading further.
            let blocked = try await claim(after: base + 200, deliver: false)
            #expect(blocked.events.isEmpty)
            #expect(blocked.next == ClaimPlanning.Scan(cursor: base + 200 + window, more: true))
            // The rest of the events fit in one window: the late key's head, then a new pass.
            let last = try await claim(after: blocked.next.cursor, deliver: false)
            #expect(last.events.map(\.key) == ["late"])
            #expect(last.next == ClaimPlanning.Scan(cursor: 0, more: true))
        }
    }

    /// Two lanes of one relay: a claim that passes over the keys its sibling holds reaches past
    /// their rows to other keys' heads; without them it ends its window among rows it cannot claim.
    @Test func aClaimPassesOverTheKeysASiblingHoldsAndTakesAtMostItsHeads() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            for (key, count) in [("held", 1500), ("free", 5), ("free2", 5)] {
                try await db.query(
                    "SELECT count(outbox.enqueue('redis', 'set', $1, jsonb_build_object('key', 'k', 'value', g::text))) FROM generate_series(1, $2) g",
                    [.text(key), .int(Int64(count))])
            }
            func claim(_ tx: PostgresConnection, excluding: [String] = [], maxHeads: Int? = nil) async throws -> OutboxStore.Claim {
                try await OutboxStore.claim(
                    tx, destination: .redis, batchSize: 10, batchEvents: 60, maxPerKey: 20, excludingKeys: excluding, maxHeads: maxHeads)
            }
            let sibling = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)
            try await sibling.transaction { siblingTx in
                // The sibling's claim: the first window holds only the deep key, which takes its whole share.
                let held = try await claim(siblingTx)
                #expect(held.events.map(\.key) == Array(repeating: "held", count: 20))
                #expect(held.saturated)
                try await db.transaction { tx in
                    let blind = try await claim(tx)
                    #expect(blind.events.isEmpty)
                    let passing = try await claim(tx, excluding: ["held"])
                    #expect(passing.events.map(\.key) == Array(repeating: "free", count: 5) + Array(repeating: "free2", count: 5))
                    #expect(!passing.saturated, "the keys ran out before their shares")
                }
                try await db.transaction { tx in
                    let one = try await claim(tx, excluding: ["held"], maxHeads: 1)
                    #expect(one.heads == 1)
                    #expect(one.events.map(\.key) == Array(repeating: "free", count: 5))
                }
            }
            await sibling.close()
        }
    }

    /// A relay beside another that holds every key makes one pass over the events per wake-up,
    /// not one pass after another (two relays on three hot keys: 120 empty claims a second).
    @Test func aRelayWhoseKeysAreAllHeldElsewhereWaitsForAWakeUpAfterAPass() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            try await db.query(
                "SELECT count(outbox.enqueue('redis', 'set', 'hot' || (g % 3), jsonb_build_object('key', 'k', 'value', g::text))) FROM generate_series(1, 3000) g")
            let holder = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)
            try await holder.transaction { tx in
                // Another relay's claim: the three keys' heads, locked until this transaction ends.
                let held = try await OutboxStore.claim(tx, destination: .redis, batchSize: 10, batchEvents: 30, maxPerKey: 10)
                #expect(held.heads == 3)
                let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_RELAY_POLL_INTERVAL": "2s"])
                try await relay.waitUntilReady()
                try await Task.sleep(for: .seconds(6))
                let metrics = await relay.get("/metrics")?.body ?? ""
                // A pass over 3,000 rows (three windows, and two looks at the front) is about six
                // claims; 6 s at one poll per 2 s, and the wake-up at start, are four passes.
                let empty = sample(metrics, #"outbox_relay_claims_total{destination="redis",result="empty"}"#)
                #expect(empty.map { $0 > 0 && $0 <= 60 } == true, "empty claims in 6 s: \(empty.map(String.init) ?? "none counted")")
                #expect(sample(metrics, #"outbox_relay_claims_total{destination="redis",result="events"}"#) == nil)
            }
            await holder.close()
        }
    }

    @Test func killMinus9MidDrainThenRestartLosesAndDuplicatesNothing() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let scenario = DrainScenario(keys: 300, rowsPerKey: 10)
            try await scenario.seed(db, qdrant: qdrant)
            // Small batches so the kill lands with work both done and in flight.
            let slow = ["OUTBOX_RELAY_BATCH_SIZE": "20"]
            let first = try DaemonProcess.relay(databaseURL: url, environment: slow)
            try await eventually("partial progress", timeout: .seconds(60)) {
                try await scenario.pending(db) < scenario.eventCount * 3 / 4
            }
            first.signal(SIGKILL)
            #expect(await first.waitForExit(timeout: .seconds(5)) != nil)
            let left = try await scenario.pending(db)
            #expect(left > 0, "the relay finished before it was killed; nothing was tested")

            let second = try DaemonProcess.relay(databaseURL: url)
            try await eventually("drain after restart", timeout: .seconds(120)) { try await scenario.pending(db) == 0 }
            try await scenario.verify(db, qdrant: qdrant)
            _ = second
        }
    }

    @Test func twoRelaysOnOneOutboxShareTheWorkWithoutDuplicates() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let scenario = DrainScenario(keys: 300, rowsPerKey: 10)
            let small = ["OUTBOX_RELAY_BATCH_SIZE": "50"]
            let a = try DaemonProcess.relay(databaseURL: url, environment: small)
            let b = try DaemonProcess.relay(databaseURL: url, environment: small)
            // Both wait before the events commit: a relay that started first could otherwise drain
            // the whole outbox (two lanes per destination) before the other connected.
            try await a.waitUntilReady()
            try await b.waitUntilReady()
            try await scenario.seed(db, qdrant: qdrant)
            try await eventually("drain by two relays", timeout: .seconds(120)) { try await scenario.pending(db) == 0 }
            try await scenario.verify(db, qdrant: qdrant)
            // Both took part.
            for relay in [a, b] {
                let metrics = await relay.get("/metrics")?.body ?? ""
                #expect(metrics.contains(#"outbox_events_delivered_total{destination="redis"}"#), "a relay delivered nothing")
            }
        }
    }

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

    @Test func readyzIs503WhilePostgresIsUnreachableAndTheRelayRecoversByItself() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let scenario = DrainScenario(keys: 100, rowsPerKey: 5)
            // The relay reaches Postgres through a TCP relay that the test cuts (as a stopped server
            // looks to a client), while the shared server keeps serving the other tests.
            var parts = try #require(URLParts(url))
            let cutPort = try freePort()
            let cutoff = try await startCutoff(port: cutPort, target: parts.port ?? 5432)
            parts.port = cutPort
            let viaCutoff = "postgresql://\(parts.user ?? ""):\(parts.password ?? "")@127.0.0.1:\(cutPort)\(parts.path)"
            let relay = try DaemonProcess.relay(databaseURL: viaCutoff, environment: ["OUTBOX_RELAY_POLL_INTERVAL": "1s"])
            try await relay.waitUntilReady()

            // SIGKILL: children of the test process inherit its blocked-signal mask, so SIGTERM
            // may never arrive; a killed relay also looks exactly like a stopped server.
            kill(cutoff.processIdentifier, SIGKILL)
            while cutoff.isRunning { try await Task.sleep(for: .milliseconds(20)) }
            try await eventually("readyz 503", timeout: .seconds(15)) { await relay.get("/readyz")?.status == 503 }
            let body = await relay.get("/readyz")?.body ?? ""
            let json = try JSONValue.parse(body)
            #expect(json["status"] == "not ready")
            #expect(json["reasons"]?.arrayValue?.first?.stringValue?.hasPrefix("postgres unreachable") == true, "\(body)")
            #expect(await relay.get("/livez")?.status == 200)

            // Work arrives while the relay cannot see it.
            try await scenario.seed(db, qdrant: qdrant)
            let restored = try await startCutoff(port: cutPort, target: URLParts(url)?.port ?? 5432)
            defer { kill(restored.processIdentifier, SIGKILL) }
            try await eventually("readyz 200 again", timeout: .seconds(30)) { await relay.get("/readyz")?.status == 200 }
            try await eventually("drain after reconnect", timeout: .seconds(60)) { try await scenario.pending(db) == 0 }
            try await scenario.verify(db, qdrant: qdrant)
        }
    }

    /// scripts/pg-wire-proxy.py: a TCP relay to Postgres that the test can kill, and that counts statements.
    func startCutoff(port: Int, target: Int, countFile: String? = nil) async throws -> Process {
        let python = URL(fileURLWithPath: try TestEnvironment.variable("OUTBOX_VENV")).appendingPathComponent("bin/python")
        return try await startProcess(python, [
            TestEnvironment.repositoryRoot.appendingPathComponent("scripts/pg-wire-proxy.py").path,
            String(port), "127.0.0.1", String(target),
        ] + (countFile.map { [$0] } ?? []))
    }

    @Test func sigtermMidDrainExits0WithinTheGraceAndARestartFinishes() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let scenario = DrainScenario(keys: 300, rowsPerKey: 10)
            try await scenario.seed(db, qdrant: qdrant)
            let first = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_RELAY_BATCH_SIZE": "20"])
            try await eventually("partial progress", timeout: .seconds(60)) {
                try await scenario.pending(db) < scenario.eventCount * 3 / 4
            }
            let signalled = ContinuousClock.now
            first.signal(SIGTERM)
            let status = await first.waitForExit(timeout: .seconds(12))  // shutdown_grace is 10 s
            #expect(status == 0, "exit status \(String(describing: status)); log: \(first.log.suffix(2000))")
            #expect(ContinuousClock.now - signalled < .seconds(11))
            #expect(first.log.contains("Relay stopped"))
            #expect(try await scenario.pending(db) > 0, "the relay finished before SIGTERM; nothing was tested")

            let second = try DaemonProcess.relay(databaseURL: url)
            try await eventually("drain after restart", timeout: .seconds(120)) { try await scenario.pending(db) == 0 }
            try await scenario.verify(db, qdrant: qdrant)
            _ = second
        }
    }

    /// Idle cost: only the fallback poll reaches the database, and the process sleeps. Statements
    /// are counted on the wire, between the relay and Postgres.
    @Test func idleRelayIssuesNoMoreThanTheFallbackPollsQueries() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            var parts = try #require(URLParts(url))
            let port = try freePort()
            let countFile = FileManager.default.temporaryDirectory.appendingPathComponent("statements-\(UUID().uuidString)").path
            let counter = try await startCutoff(port: port, target: parts.port ?? 5432, countFile: countFile)
            defer { kill(counter.processIdentifier, SIGKILL) }
            parts.port = port
            let relay = try DaemonProcess.relay(
                databaseURL: "postgresql://\(parts.user ?? ""):\(parts.password ?? "")@127.0.0.1:\(port)\(parts.path)",
                environment: ["OUTBOX_RELAY_POLL_INTERVAL": "2s"])
            try await relay.waitUntilReady()
            try await Task.sleep(for: .seconds(3))  // start-up settled
            func statements() -> Int { Int((try? String(contentsOfFile: countFile, encoding: .utf8)) ?? "") ?? -1 }
            let cpuBefore = cpuSeconds(relay.process.processIdentifier)
            let before = statements()
            try await Task.sleep(for: .seconds(10))
            let sent = statements() - before
            let cpu = cpuSeconds(relay.process.processIdentifier) - cpuBefore
            // 10 s at one poll per 2 s: 5 polls of one statement each (6 if the window straddles one).
            #expect(before >= 0 && sent <= 6, "idle relay sent \(sent) statements in 10 s")
            #expect(cpu < 0.2, "idle relay used \(cpu) s of CPU in 10 s")
        }
    }

    /// The value of the /metrics sample `name` (with its labels), if the relay reported it.
    func sample(_ metrics: String, _ name: String) -> Int? {
        metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }.map { Int($0) }
    }

    func cpuSeconds(_ pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the comm field).
        let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

extension HTTPDriverTests {
    /// Shares the serialized suite with the other stand-in fault tests: its faults are global.
    @Test func qdrantDownFor20SecondsDoesNotSlowRedisAndNothingIsDeadLettered() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let scenario = DrainScenario(keys: 100, rowsPerKey: 5)
            try await scenario.seed(db, qdrant: qdrant)
            try await qdrant.setFaults(["status": 503, "duration_s": 20, "paths": .string(scenario.collection)])
            let started = ContinuousClock.now
            let relay = try DaemonProcess.relay(databaseURL: url)
            func pending(_ destination: String) async throws -> Int {
                try await db.count("outbox.events WHERE destination = $1", [.text(destination)])
            }
            try await eventually("redis drained while qdrant is down", timeout: .seconds(15)) { try await pending("redis") == 0 }
            #expect(ContinuousClock.now - started < .seconds(20))
            #expect(try await pending("qdrant") > 0, "qdrant events landed during the outage?")
            var readyz = ""
            try await eventually("readyz reports qdrant failing (last: \(readyz))", timeout: .seconds(10)) {
                guard let r = await relay.get("/readyz") else { return false }
                readyz = r.body
                return r.status == 503 && r.body.contains("qdrant failing")
            }
            #expect(ContinuousClock.now - started < .seconds(20), "readyz did not report the outage while it lasted")

            try await eventually("qdrant drained after recovery", timeout: .seconds(60)) { try await pending("qdrant") == 0 }
            #expect(ContinuousClock.now - started >= .seconds(20))
            try await scenario.verify(db, qdrant: qdrant)
            try await eventually("readyz 200 after recovery", timeout: .seconds(10)) { await relay.get("/readyz")?.status == 200 }
        }
    }
}
