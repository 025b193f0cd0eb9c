import Foundation
import OutboxCore
import OutboxTestSupport

extension Bench {
    func drainRedis(events: Int, keys: Int) async throws -> [(String, String)] {
        let redis = try await RedisConnection.connect(config.redis, logger: logger)
        let stream = "bench:" + UUID().uuidString.prefix(8)
        let drain = try await drainByRelay(events: events, keys: keys, stream: stream, redis: redis)
        let (relayRate, startup, cpu, claims) = (drain.rate, drain.startup, drain.cpu, drain.claims)
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

    /// What one relay drain of the drain-redis backlog measured.
    struct RelayDrain {
        var rate: Double
        var startup: Duration
        var cpu: (relay: Double, postgres: Double, redis: Double)
        var claims: (found: Int, empty: Int)
        var spansDropped = 0
    }

    /// The relay started on an empty outbox, the backlog committed in one transaction once it is
    /// ready, so its rate is timed from that commit to its last acknowledgement, as the SQL bound
    /// is timed on a session already open. Its start-up (a process, three Postgres sessions, Redis,
    /// the script) is a figure of its own: timed in, it was ~9 % of a 200,000-event drain
    /// (docs/PERFORMANCE.md, stop 16). With `traced`, every event carries a sampled `traceparent`.
    ///
    /// With `streams` above 1, key `k`'s events go to stream `<stream>:<k % streams>` (spread over
    /// a cluster's slots), and Redis' CPU is the sum over `redisNodes` (default: `redis`).
    func drainByRelay(
        events: Int, keys: Int, stream: String, redis: RedisConnection, traced: Bool = false, extra: [String: String] = [:],
        streams: Int = 1, redisNodes: [RedisConnection]? = nil
    ) async throws -> RelayDrain {
        let nodes = redisNodes ?? [redis]
        func nodesCPU() async throws -> Double {
            var total = 0.0
            for node in nodes { total += try await redisCPU(node) }
            return total
        }
        return try await withDatabase { url, db in
            let spawned = ContinuousClock.now
            return try await withRelay(url, port: 18_470, extra: extra) { relay in
                try await relay.waitUntilReady()
                let startup = ContinuousClock.now - spawned
                try await db.transaction { tx in
                    try await preloadXAdd(tx, events: events, keys: keys, stream: stream, traced: traced, streams: streams)
                }
                let (postgresBefore, redisBefore, relayBefore) = (postgresCPU(), try await nodesCPU(), cpuSeconds(relay.pid))
                let started = ContinuousClock.now
                // The stream's length (cheap to ask) says when the last XADD landed; /metrics then
                // when its acknowledgement committed.
                while streams == 1, case .integer(let length) = try await redis.command("XLEN", stream), length < events {
                    guard relay.isRunning else { throw BenchError("the relay exited during drain-redis (status \(relay.process.terminationStatus))") }
                    try await Task.sleep(for: .milliseconds(5))
                }
                while try await delivered(relay) < events { try await Task.sleep(for: .milliseconds(2)) }
                let elapsed = (ContinuousClock.now - started).seconds
                let postgres = postgresCPU().reduce(0) { $0 + $1.value - (postgresBefore[$1.key] ?? 0) }
                return RelayDrain(
                    rate: Double(events) / elapsed, startup: startup,
                    cpu: (cpuSeconds(relay.pid) - relayBefore, postgres, try await nodesCPU() - redisBefore),
                    claims: (
                        await relay.metric(#"outbox_relay_claims_total{destination="redis",result="events"}"#),
                        await relay.metric(#"outbox_relay_claims_total{destination="redis",result="empty"}"#)),
                    spansDropped: await relay.metric("outbox_tracing_spans_dropped_total"))
            }
        }
    }

    /// drain-redis-tracing: the drain-redis backlog drained with span export off and on (every
    /// event traced, sampled by its writer: a span per event and per Redis round trip, exported
    /// over OTLP/HTTP to a sink in this process that reads and discards them), alternated.
    func drainRedisTracing(events: Int, keys: Int, rounds: Int) async throws -> [(String, String)] {
        let redis = try await RedisConnection.connect(config.redis, logger: logger)
        let sink = try await OTLPSink.start()
        defer { sink.stop() }
        let tracing = [
            "OUTBOX_TRACING_ENDPOINT": sink.url, "OUTBOX_TRACING_QUEUE_SIZE": "65536", "OUTBOX_TRACING_EXPORT_INTERVAL": "1s",
        ]
        var off: [RelayDrain] = [], on: [RelayDrain] = []
        for round in 0..<rounds {
            let stream = "bench:" + UUID().uuidString.prefix(8)
            FileHandle.standardError.write(Data("drain-redis-tracing: round \(round + 1) of \(rounds)\n".utf8))
            off.append(try await drainByRelay(events: events, keys: keys, stream: stream, redis: redis))
            try await redis.command("DEL", stream)
            on.append(try await drainByRelay(events: events, keys: keys, stream: stream, redis: redis, traced: true, extra: tracing))
            try await redis.command("DEL", stream)
        }
        func list(_ drains: [RelayDrain], _ value: (RelayDrain) -> Double, digits: Int = 0) -> String {
            drains.map { fmt(value($0), digits) }.joined(separator: " / ")
        }
        let median = { (values: [Double]) in values.sorted()[values.count / 2] }
        let (rateOff, rateOn) = (median(off.map(\.rate)), median(on.map(\.rate)))
        let perEvent = { (drain: RelayDrain) in drain.cpu.relay / Double(events) * 1e6 }
        let received = await sink.received
        return [
            ("relay events/s, tracing off (each round)", list(off, \.rate)),
            ("relay events/s, every event traced (each round)", list(on, \.rate)),
            ("traced / off (medians)", fmt(rateOn / rateOff * 100, 1) + " %"),
            ("relay cpu per event µs, off (each round)", list(off, perEvent, digits: 1)),
            ("relay cpu per event µs, traced (each round)", list(on, perEvent, digits: 1)),
            ("postgres cpu per event µs, off / traced (medians)",
             fmt(median(off.map { $0.cpu.postgres / Double(events) * 1e6 }), 1) + " / " + fmt(median(on.map { $0.cpu.postgres / Double(events) * 1e6 }), 1)),
            ("spans exported: requests / MB", "\(received.requests) / " + fmt(Double(received.bytes) / 1e6, 1)),
            ("spans dropped (all traced rounds)", "\(on.reduce(0) { $0 + $1.spansDropped })"),
        ]
    }

    /// Enqueues `events` redis.xadd events for `stream` over `keys` keys (round robin), 50,000 per
    /// statement; `traced`: each with a sampled `traceparent` of a trace of its own.
    func preloadXAdd(_ db: PostgresConnection, events: Int, keys: Int, stream: String, traced: Bool = false, streams: Int = 1)
        async throws
    {
        var done = 0
        while done < events {
            let n = min(50_000, events - done)
            try await db.query(
                """
                SELECT count(outbox.enqueue('redis', 'xadd', 'k' || (g % $2), jsonb_build_object(
                  'stream', CASE WHEN $6 > 1 THEN $3 || ':' || (g % $2 % $6) ELSE $3 END, 'fields', jsonb_build_object('seq', g::text)),
                  CASE WHEN $5 THEN jsonb_build_object('traceparent', '00-' || lpad(to_hex(g + 1), 32, '0') || '-00f067aa0ba902b7-01')
                       ELSE '{}'::jsonb END))
                FROM generate_series($1::int8, $1::int8 + $4 - 1) g
                """, [.int(Int64(done)), .int(Int64(keys)), .text(stream), .int(Int64(n)), .bool(traced), .int(Int64(streams))])
            done += n
        }
    }
}
