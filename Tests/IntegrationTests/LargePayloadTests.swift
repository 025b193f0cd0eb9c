import Foundation
import Testing
import OutboxCore
import OutboxTestSupport
@testable import OutboxRelay

/// Events that carry whole documents: the relay's memory stays bounded by `relay.batch_bytes`
/// whatever the payloads, a backlog of them drains without a retry, and an event over the
/// destination's own limit becomes a dead letter that names its size and the limit.
@Suite(.serialized) struct LargePayloadTests {
    /// Before: 400 × 4 MB `redis.set` events took the relay to 6.1 GB and failed again and again
    /// (`redis connection lost`) as whole claims went out in one pipeline.
    @Test func aBacklogOfMegabyteValuesDrainsIntactWithinTheMemoryCap() async throws {
        let redis = try await TestEnvironment.redis()
        let prefix = TestEnvironment.uniqueName("large")
        let events = 48, repeats = 2 * 1024 * 1024 / 32  // 2 MiB values: md5 hex (32 characters) repeated
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            // Written in SQL, as a writer in any language would: one event per value, 30 keys.
            _ = try await db.query(
                """
                SELECT outbox.enqueue('redis', 'set', 'k' || (n % 30),
                                      jsonb_build_object('key', $1 || n, 'value', n || ':' || repeat(md5(n::text), $2::int)))
                FROM generate_series(1, $3) n
                """, [.text(prefix + ":"), .int(Int64(repeats)), .int(Int64(events))])
            let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_RELAY_BATCH_BYTES": String(8 * 1024 * 1024)])
            try await eventually("the backlog drained", timeout: .seconds(120)) { try await db.count("outbox.events") == 0 }
            #expect(try await db.count("outbox.dead_letters") == 0)
            #expect(await relay.metric("outbox_events_failed_total{destination=\"redis\"}") == 0, "retried: \(relay.log.suffix(2000))")
            let peak = try #require(residentPeakKiB(relay.pid))
            // 8 MiB of payloads held at once (2 MiB per lane: one event per claim), a few copies of
            // each (text, JSON, script arguments), and the process itself (~40 MB). All 96 MiB in
            // one claim, as before, would be several hundred.
            #expect(peak < 160 * 1024, "peak RSS \(peak / 1024) MiB")
            let expected = try await db.query(
                "SELECT n, md5(n::text) AS md5 FROM generate_series(1, $1) n ORDER BY n", [.int(Int64(events))])
            for row in expected.rows {
                let n: Int = try row.decode("n")
                let md5: String = try row.decode("md5")
                let key = "\(prefix):\(n)"
                let length = try await redis.command("STRLEN", key).integer
                let head = "\(n):".count
                #expect(length == Int64(head + 32 * repeats), "\(key)")
                let tail = try await redis.command("GETRANGE", key, "-32", "-1").string
                #expect(tail == md5, "\(key)")
            }
            _ = try await redis.command(RedisCommand(["DEL"] + (1...events).map { "\(prefix):\($0)" }))
        }
    }

    /// Redis refuses a value over its `proto-max-bulk-len`, closing the connection: sent again and
    /// again, that event held its key for good. Now it is a dead letter naming its size and the
    /// limit, and its key's later events flow.
    @Test func aValueOverRedisLimitIsDeadLetteredWithItsSizeAndItsKeyGoesOn() async throws {
        let password = try #require(URLParts(try TestEnvironment.redisConfiguration().url)?.password)
        let port = try freePort()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-redis-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try await startProcess(URL(fileURLWithPath: "/usr/bin/redis-server"), [
            "--port", String(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "", "--appendonly", "no",
            "--requirepass", password, "--proto-max-bulk-len", "1mb",
        ], readyLine: "Ready to accept connections")
        defer { kill(server.processIdentifier, SIGKILL) }
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            try await db.transaction { tx in
                try await OutboxWriter.enqueue(.redisSet(key: "big", value: String(repeating: "x", count: 2 * 1024 * 1024), key: "doc"), on: tx)
                try await OutboxWriter.enqueue(.redisSet(key: "after", value: "small", key: "doc"), on: tx)
            }
            let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_REDIS_URL": "redis://127.0.0.1:\(port)/0"])
            try await eventually("both settled", timeout: .seconds(30)) { try await db.count("outbox.events") == 0 }
            let dead = try await db.query("SELECT key, error FROM outbox.dead_letters")
            #expect(dead.rows.count == 1)
            let error: String = try dead.rows.first?.decode("error") ?? ""
            #expect(error.contains("2097152 bytes") && error.contains("limit of 1048576 bytes (proto-max-bulk-len)"), "\(error)")
            var configuration = try TestEnvironment.redisConfiguration()
            configuration.url = "redis://:\(password)@127.0.0.1:\(port)/0"
            let own = try await RedisConnection.connect(configuration, logger: TestEnvironment.logger)
            #expect(try await own.command("GET", "after").string == "small")
            #expect(try await own.command("EXISTS", "big").integer == 0)
            #expect(relay.log.contains("Event dead-lettered"))
        }
    }

    /// `VmHWM` of process `pid`: its peak resident set, in KiB.
    func residentPeakKiB(_ pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        return status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }
            .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") }
    }
}
