import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

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

    /// Writers notify only while a relay sleeps (schema/012; `WakeLock`): every arm and disarm of
    /// the relay races with writers that did not notify. With the fallback poll an hour away, a
    /// lost wake-up would leave a burst undelivered; 100 bursts of concurrent writers, at random
    /// sizes, spreads and gaps (so that they meet the relay asleep, arming, lingering and busy), each
    /// delivered within seconds.
    @Test func burstsOfConcurrentWritersNeverWaitForTheFallbackPoll() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_RELAY_POLL_INTERVAL": "1h"])
            try await relay.waitUntilReady()
            var writers: [PostgresConnection] = []
            for _ in 0..<4 { writers.append(try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)) }
            let stream = TestEnvironment.uniqueName("bursts")
            var rng = SystemRandomNumberGenerator()
            var written = 0
            for burst in 0..<100 {
                let sizes = writers.map { _ in Int.random(in: 0...6, using: &rng) }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for (writer, size) in zip(writers, sizes) where size > 0 {
                        group.addTask {
                            for _ in 0..<size {
                                // Spread over a few milliseconds, so that commits land around the relay's arming.
                                try await Task.sleep(for: .microseconds(Int.random(in: 0...3000)))
                                try await writer.query(
                                    "SELECT outbox.enqueue('redis', 'xadd', $1, jsonb_build_object('stream', $2::text, 'fields', '{\"f\":\"v\"}'::jsonb))",
                                    [.text("k\(Int.random(in: 0..<20))"), .text(stream)])
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                written += sizes.reduce(0, +)
                try await eventually("burst \(burst) delivered", timeout: .seconds(10)) {
                    try await db.count("outbox.events") == 0
                }
                try await Task.sleep(for: .milliseconds(Int.random(in: 0...40, using: &rng)))
            }
            #expect(written > 100)
            #expect(await relay.metric("outbox_events_delivered_total") == written)
            for writer in writers { await writer.close() }
        }
    }

    /// Issue 20: transactions that enqueue ten keys in random orders, four writers at once on few
    /// keys, while the relay drains. With the exclusive per-key locks of before schema/013, 0.25 to
    /// 0.35 % of such transactions died of a deadlock (40P01). Now none fails, and every key's
    /// events reach the stream exactly once and in id order: no smaller id committed after a larger
    /// one of its key was delivered (the Redis high-water mark would have dropped it, and the count
    /// would be short).
    @Test func concurrentMultiKeyWritersNeverDeadlockAndEveryKeyArrivesInIdOrder() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let relay = try DaemonProcess.relay(databaseURL: url)
            try await relay.waitUntilReady()
            let stream = "stream:" + TestEnvironment.uniqueName("multikey")
            let (writers, transactions, keysPerTransaction) = (4, 150, 10)
            let committed = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<writers {
                    group.addTask {
                        let writer = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)
                        for _ in 0..<transactions {
                            let keys = (0..<40).shuffled().prefix(keysPerTransaction)
                            try await writer.transaction { tx in
                                for key in keys {
                                    try await tx.query(
                                        "SELECT outbox.enqueue('redis', 'xadd', $1, jsonb_build_object('stream', $2::text, 'fields', jsonb_build_object('k', $1)))",
                                        [.text("k\(key)"), .text(stream)])
                                    // Keep the transaction open a moment, so that writers overlap.
                                    try await Task.sleep(for: .microseconds(Int.random(in: 0...500)))
                                }
                            }
                        }
                        await writer.close()
                        return transactions * keysPerTransaction
                    }
                }
                return try await group.reduce(0, +)
            }
            try await eventually("drain", timeout: .seconds(60)) { try await db.count("outbox.events") == 0 }
            #expect(try await db.count("outbox.dead_letters") == 0)
            let redis = try await TestEnvironment.redis()
            let entries = try await redis.command("XRANGE", stream, "-", "+").array ?? []
            var last: [String: Int64] = [:]
            var outOfOrder = 0
            var arrived = Set<Int64>()
            for entry in entries {
                let fields = entry.array?[1].array?.compactMap(\.string) ?? []
                var map: [String: String] = [:]
                for i in stride(from: 0, to: fields.count - 1, by: 2) { map[fields[i]] = fields[i + 1] }
                let key = map["k"] ?? "", id = Int64(map["outbox_id"] ?? "") ?? 0
                if id <= last[key] ?? 0 { outOfOrder += 1 }
                last[key] = id
                arrived.insert(id)
            }
            let missing = (1...Int64(committed)).filter { !arrived.contains($0) }
            #expect(entries.count == committed, "\(entries.count) stream entries for \(committed) committed events; missing ids: \(missing.prefix(20))")
            #expect(outOfOrder == 0, "\(outOfOrder) entries out of their key's id order")
            try await redis.command("DEL", stream)
        }
    }

    /// A destination the relay cannot reach is reported as failing in `/status` like one whose
    /// deliveries fail, and every per-destination series is on `/metrics` from the start, at zero.
    /// (Before, with Redis down, `redis.failing` was null and its failure counter absent; with
    /// Qdrant down, `/readyz` said ready until an event failed.)
    @Test func anUnreachableDestinationIsReportedFailingAndEveryMetricIsThereFromTheStart() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_REDIS_URL": "redis://127.0.0.1:\(try freePort())/0"])
            try await eventually("readyz 503 naming Redis", timeout: .seconds(20)) {
                guard let ready = await relay.get("/readyz"), ready.status == 503 else { return false }
                return ready.body.contains("redis unreachable")
            }
            let status = try JSONValue.parse(await relay.get("/status")?.body ?? "{}")
            let failing = status["destinations"]?["redis"]?["failing"]
            #expect(failing?["error"]?.stringValue?.hasPrefix("unreachable: ") == true, "\(status.jsonText)")
            #expect(failing?["since"]?.stringValue != nil, "\(status.jsonText)")
            #expect(status["destinations"]?["qdrant"]?["failing"] == .null, "\(status.jsonText)")
            let metrics = await relay.get("/metrics")?.body ?? ""
            expectEveryMetricHasHelp(metrics)

            // Qdrant, too, is reported unreachable from the start, with no event to fail.
            let noQdrant = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_QDRANT_URL": "http://127.0.0.1:\(try freePort())"])
            try await eventually("readyz 503 naming Qdrant", timeout: .seconds(20)) {
                guard let ready = await noQdrant.get("/readyz"), ready.status == 503 else { return false }
                return ready.body.contains("qdrant unreachable")
            }
            for destination in ["redis", "qdrant"] {
                for name in ["outbox_events_delivered_total", "outbox_events_failed_total", "outbox_events_dead_lettered_total"] {
                    #expect(sample(metrics, "\(name){destination=\"\(destination)\"}") == 0, "\(name) for \(destination): \(metrics)")
                }
            }
        }
    }

    /// An idle relay probes its destinations each `relay.poll_interval`: Qdrant stopped, or
    /// restarted with a rotated api key, shows on `/readyz` with no event to fail, and clears
    /// when Qdrant answers the relay again. (Before, an idle relay stayed ready through both.)
    @Test func anIdleRelayNoticesQdrantGoneOrItsKeyRotatedAndRecovers() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-probe-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freePort()
        let key = try TestEnvironment.qdrantAPIKey()
        func startQdrant(apiKey: String) async throws -> Process {
            let python = URL(fileURLWithPath: try TestEnvironment.variable("OUTBOX_VENV")).appendingPathComponent("bin/python")
            return try await startProcess(python, [
                TestEnvironment.repositoryRoot.appendingPathComponent("scripts/qdrant-standin/standin.py").path,
                "--host", "127.0.0.1", "--port", String(port), "--data", directory, "--api-key", apiKey,
            ], readyLine: "listening on http://")
        }
        var qdrant = try await startQdrant(apiKey: key)
        defer { kill(qdrant.processIdentifier, SIGKILL) }
        func stopQdrant() async throws {
            kill(qdrant.processIdentifier, SIGKILL)
            try await eventually("stand-in stopped", timeout: .seconds(10)) { !qdrant.isRunning }
        }
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            let relay = try DaemonProcess.relay(
                databaseURL: url, environment: ["OUTBOX_QDRANT_URL": "http://127.0.0.1:\(port)", "OUTBOX_RELAY_POLL_INTERVAL": "300ms"])
            try await relay.waitUntilReady()
            func readyz(_ what: String, status: Int, containing text: String) async throws {
                var last = ""
                try await eventually("\(what) (last: \(last))", timeout: .seconds(15)) {
                    guard let ready = await relay.get("/readyz") else { return false }
                    last = "\(ready.status) \(ready.body)"
                    return ready.status == status && ready.body.contains(text)
                }
            }

            try await stopQdrant()
            try await readyz("503 while Qdrant is stopped", status: 503, containing: "qdrant failing")
            let status = try JSONValue.parse(await relay.get("/status")?.body ?? "{}")
            #expect(status["destinations"]?["qdrant"]?["failing"]?["error"]?.stringValue?.hasPrefix("unreachable: ") == true, "\(status.jsonText)")

            qdrant = try await startQdrant(apiKey: "rotated-\(UUID().uuidString)")
            try await readyz("503 naming the refused key", status: 503, containing: "qdrant refused the relay: qdrant answered 401")
            #expect(await relay.get("/readyz")?.body.contains("rotated-") == false)

            try await stopQdrant()
            qdrant = try await startQdrant(apiKey: key)
            try await readyz("200 once Qdrant answers the relay again", status: 200, containing: "ready")
        }
    }

    /// The same for Redis: the relay's ACL user loses its permissions while the relay is idle.
    @Test func anIdleRelayNoticesItsRedisUserRevokedAndRecovers() async throws {
        let redis = try await TestEnvironment.redis()
        let user = "outbox-probe-\(UUID().uuidString.prefix(8))"
        let server = try #require(URLParts(try TestEnvironment.redisConfiguration().url))
        // The shipped config reads the password from the project's file, which this user shares.
        let password = try #require(server.password)
        #expect(try await redis.command("ACL", "SETUSER", user, "on", ">\(password)", "~*", "&*", "+@all") == .status("OK"))
        defer { Task { _ = try? await redis.command("ACL", "DELUSER", user) } }
        let port = try #require(server.port)
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            let relay = try DaemonProcess.relay(
                databaseURL: url,
                environment: ["OUTBOX_REDIS_URL": "redis://\(user):\(password)@127.0.0.1:\(port)/0", "OUTBOX_RELAY_POLL_INTERVAL": "300ms"])
            try await relay.waitUntilReady()
            _ = try await redis.command("ACL", "SETUSER", user, "-@all")
            try await eventually("readyz 503 naming the refused permission", timeout: .seconds(15)) {
                guard let ready = await relay.get("/readyz"), ready.status == 503 else { return false }
                return ready.body.contains("redis refused the relay: NOPERM")
            }
            #expect(await relay.get("/readyz")?.body.contains(password) == false)
            _ = try await redis.command("ACL", "SETUSER", user, "+@all")
            try await eventually("readyz 200 again", timeout: .seconds(15)) { await relay.get("/readyz")?.status == 200 }
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
