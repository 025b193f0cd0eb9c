import Foundation
import OutboxCore
import OutboxTestSupport

extension Bench {
    func drainRedis(events: Int, keys: Int) async throws -> [(String, String)] {
        let redis = try await RedisConnection.connect(config.redis, logger: logger)
        let stream = "bench:" + UUID().uuidString.prefix(8)
        // The relay is started on an empty outbox and the backlog committed in one transaction once
        // it is ready, so its rate is timed from that commit to its last acknowledgement, as the SQL
        // bound below is timed on a session already open. Its start-up (a process, three Postgres
        // sessions, Redis, the script) is a figure of its own: timed in, it was ~9 % of a 200,000-
        // event drain (docs/PERFORMANCE.md, stop 16).
        let (relayRate, startup, cpu, claims): (Double, Duration, (relay: Double, postgres: Double, redis: Double), (found: Int, empty: Int)) =
            try await withDatabase { url, db in
                let port = 18_470
                let spawned = ContinuousClock.now
                return try await withRelay(url, port: port) { relay in
                    try await relay.waitUntilReady()
                    let startup = ContinuousClock.now - spawned
                    try await db.transaction { tx in try await preloadXAdd(tx, events: events, keys: keys, stream: stream) }
                    let (postgresBefore, redisBefore, relayBefore) = (postgresCPU(), try await redisCPU(redis), cpuSeconds(relay.pid))
                    let started = ContinuousClock.now
                    // The stream's length (cheap to ask) says when the last XADD landed; /metrics then
                    // when its acknowledgement committed.
                    while case .integer(let length) = try await redis.command("XLEN", stream), length < events {
                        guard relay.isRunning else { throw BenchError("the relay exited during drain-redis (status \(relay.process.terminationStatus))") }
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    while try await delivered(relay) < events { try await Task.sleep(for: .milliseconds(2)) }
                    let elapsed = (ContinuousClock.now - started).seconds
                    let postgres = postgresCPU().reduce(0) { $0 + $1.value - (postgresBefore[$1.key] ?? 0) }
                    let cpu = (cpuSeconds(relay.pid) - relayBefore, postgres, try await redisCPU(redis) - redisBefore)
                    let claims = (
                        await relay.metric(#"outbox_relay_claims_total{destination="redis",result="events"}"#),
                        await relay.metric(#"outbox_relay_claims_total{destination="redis",result="empty"}"#))
                    return (Double(events) / elapsed, startup, cpu, claims)
                }
            }
        try await redis.command("DEL", stream)
        // Bound 1: the same rows drained by SQL alone, 1,000 per statement.
        let sqlRate: Double = try await withDatabase { _, db in
            try await db.transaction { tx in try await preloadXAdd(tx, events: events, keys: keys, stream: stream) }
            let started = ContinuousClock.now
            while try await db.query(
                "DELETE FROM outbox.events WHERE id IN (SELECT id FROM outbox.events ORDER BY id LIMIT 1000) RETURNING id, payload"
            ).rows.count > 0 {}
            return Double(events) / (ContinuousClock.now - started).seconds
        }
        // Bound 2: Redis' own pipelined XADD rate, 1,000 per pipeline.
        let started = ContinuousClock.now
        var sent = 0
        while sent < events {
            let n = min(1000, events - sent)
            _ = try await redis.pipeline((0..<n).map { RedisCommand("XADD", stream, "*", "seq", String(sent + $0), "outbox_id", String(sent + $0)) })
            sent += n
        }
        let xaddRate = Double(events) / (ContinuousClock.now - started).seconds
        try await redis.command("DEL", stream)
        return [
            ("relay events/s", fmt(relayRate)), ("sql drain bound events/s", fmt(sqlRate)),
            ("redis pipelined xadd events/s", fmt(xaddRate)), ("relay / sql bound", fmt(relayRate / sqlRate * 100, 1) + " %"),
            ("relay / xadd bound", fmt(relayRate / xaddRate * 100, 1) + " %"),
            ("relay start-up (process start to /readyz 200) ms", fmt(startup.seconds * 1000)),
            ("cpu per event: relay µs", fmt(cpu.relay / Double(events) * 1e6, 1)),
            ("cpu per event: postgres µs", fmt(cpu.postgres / Double(events) * 1e6, 1)),
            ("cpu per event: redis µs", fmt(cpu.redis / Double(events) * 1e6, 1)),
            ("relay claims: with events / empty", "\(claims.found) / \(claims.empty)"),
        ]
    }

    /// Enqueues `events` redis.xadd events for `stream` over `keys` keys (round robin), 50,000 per statement.
    private func preloadXAdd(_ db: PostgresConnection, events: Int, keys: Int, stream: String) async throws {
        var done = 0
        while done < events {
            let n = min(50_000, events - done)
            try await db.query(
                """
                SELECT count(outbox.enqueue('redis', 'xadd', 'k' || (g % $2), jsonb_build_object(
                  'stream', $3::text, 'fields', jsonb_build_object('seq', g::text))))
                FROM generate_series($1::int8, $1::int8 + $4 - 1) g
                """, [.int(Int64(done)), .int(Int64(keys)), .text(stream), .int(Int64(n))])
            done += n
        }
    }
}
