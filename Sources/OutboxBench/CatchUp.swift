import Foundation
import OutboxCore
import OutboxTestSupport

/// Vector dimensions of catch-up-qdrant's points: small, so the stand-in's ingest is not the subject.
private let catchUpDimensions = 8

extension Bench {
    /// Writers at a steady rate throughout; after a warm-up the destination (Redis, or the Qdrant
    /// stand-in) is unreachable for `outage` seconds, then back. The relay reaches it through
    /// scripts/pg-wire-proxy.py, which the bench kills and starts again, so the shared server is
    /// never touched. Reported: the backlog the outage left, the time to drain it after recovery,
    /// and the latency of the events written while the relay caught up.
    ///
    /// Latency here is commit→acknowledged: Qdrant keeps no time of arrival, so a statement-level
    /// trigger the bench adds to `outbox.events` in its scratch database logs the time of the
    /// relay's DELETE (its acknowledgement, a few ms after delivery), the same for both destinations.
    func catchUp(qdrant toQdrant: Bool, writers: Int, rate: Int, warmup: Int, outage: Int) async throws -> [(String, String)] {
        let suffix = UUID().uuidString.prefix(8).lowercased()
        let collection = "bench_catchup_\(suffix)", stream = "bench:catchup:\(suffix)"
        let redis = try await RedisConnection.connect(config.redis, logger: logger)
        let qdrant = QdrantClient(configuration: config.qdrant, logger: logger)
        let dimensions = catchUpDimensions
        if toQdrant {
            let reply = try await qdrant.call(.createCollection(collection), body: ["vectors": ["size": .number(Double(dimensions)), "distance": "Cosine"]])
            guard reply.status == 200 else { throw BenchError("cannot create collection \(collection): \(reply.status) \(reply.error ?? "")") }
        }
        var event = xaddEvent(stream)
        if toQdrant {
            event = { w, n in
                let vector: [Float] = (0..<dimensions).map { d in Float(1.5 + sin(Double(n + d))) }
                return .qdrantUpsert(collection: collection, id: .integer(UInt64(w) << 40 | UInt64(n)), vector: vector)
            }
        }
        let result: Result<[(String, String)], any Error>
        do {
            result = .success(try await withDatabase { url, db in
                try await catchUp(url, db, toQdrant: toQdrant, writers: writers, rate: rate, warmup: warmup, outage: outage, event: event) { written in
                    if toQdrant {
                        let count = try await qdrant.call(.countPoints(collection: collection), body: ["exact": true])
                        return "\(Int(count.result?["count"]?.numberValue ?? -1)) points in the collection of \(written) upserts"
                    }
                    return "\(try await redis.command("XLEN", stream).integer ?? -1) stream entries of \(written) xadds"
                }
            })
        } catch {
            result = .failure(error)
        }
        if toQdrant { _ = try? await qdrant.call(.deleteCollection(collection)) } else { _ = try? await redis.command("DEL", stream) }
        return try result.get()
    }

    private func catchUp(
        _ url: String, _ db: PostgresConnection, toQdrant: Bool, writers: Int, rate: Int, warmup: Int, outage: Int,
        event: @escaping @Sendable (Int, Int) -> OutboxEvent, landed: (Int) async throws -> String
    ) async throws -> [(String, String)] {
        try await db.simpleQuery(
            """
            CREATE UNLOGGED TABLE bench_acks (id bigint NOT NULL, at timestamptz NOT NULL);
            CREATE FUNCTION bench_log_acks() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO bench_acks SELECT id, clock_timestamp() FROM gone; RETURN NULL; END $$;
            CREATE TRIGGER bench_log_acks AFTER DELETE ON outbox.events REFERENCING OLD TABLE AS gone
                FOR EACH STATEMENT EXECUTE FUNCTION bench_log_acks();
            """)
        let destination = toQdrant ? "the Qdrant stand-in" : "Redis"
        let target = toQdrant ? config.qdrant.url : config.redis.url
        guard let parts = URLParts(target) else { throw BenchError("cannot read host and port of \(toQdrant ? "qdrant.url" : "redis.url")") }
        let forwarderPort = 18_481
        let start = { try await self.startForwarder(port: forwarderPort, to: parts.host, parts.port ?? (toQdrant ? 80 : 6379)) }
        var forwarder = try await start()
        defer { kill(forwarder.processIdentifier, SIGKILL) }
        let commits = CommitLog()
        func backlog() async throws -> Int { try await db.query("SELECT count(*) AS n FROM outbox.events").first!.decode("n") }
        func progress(_ text: String) { FileHandle.standardError.write(Data("  \(text)\n".utf8)) }

        let environment = [toQdrant ? "OUTBOX_QDRANT_URL" : "OUTBOX_REDIS_URL": Self.forwarded(target, port: forwarderPort)]
        var o = Outage()
        try await withRelay(url, port: 18_476, extra: environment) { relay in
            try await relay.waitUntilReady()
            try await withSteadyWriters(url, writers: writers, rate: rate, commits: commits, event: event) { stop in
                let writing = ContinuousClock.now
                /// Sleeps `seconds` in steps of a second, ending early with a writer's error.
                func pause(_ seconds: Int, every: Int = 0, _ report: (Int) async throws -> Void = { _ in }) async throws {
                    let from = ContinuousClock.now
                    for s in 0..<seconds {
                        try await Task.sleep(until: from + .seconds(s + 1))
                        try stop.check()
                        if every > 0, (s + 1) % every == 0, s + 1 < seconds { try await report(s + 1) }
                    }
                }
                /// Waits until every event up to `id` is acknowledged, saying every 30 s how many are left.
                func acknowledged(upTo id: Int64, within: Duration, _ what: String) async throws {
                    let (started, deadline) = (ContinuousClock.now, ContinuousClock.now + within)
                    var said = started
                    while try await db.query("SELECT EXISTS (SELECT FROM outbox.events WHERE id <= $1) AS e", [.int(id)]).first!.decode("e", as: Bool.self) {
                        try stop.check()
                        guard ContinuousClock.now < deadline else {
                            throw BenchError("\(what) not delivered within \(within) after \(destination) came back: \(try await backlog()) events in outbox.events")
                        }
                        if ContinuousClock.now - said >= .seconds(30) {
                            said = .now
                            let left = try await db.query("SELECT count(*) AS n FROM outbox.events WHERE id <= $1", [.int(id)]).first!.decode("n", as: Int.self)
                            progress("\(fmt((said - started).seconds)) s after recovery: \(left) left")
                        }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
                try await pause(warmup)
                o.warmBacklog = try await backlog()
                (o.start, o.lastBefore) = (Date(), await commits.maxID)
                kill(forwarder.processIdentifier, SIGKILL)
                forwarder.waitUntilExit()
                let (failed0, cpu0) = (await relay.metric("outbox_events_failed_total"), cpuSeconds(relay.pid))
                progress("0:00 \(destination) unreachable for \(outage) s (backlog \(o.warmBacklog) after \(warmup) s of warm-up)")
                try await pause(outage, every: 30) { s in progress(String(format: "%d:%02d backlog %d", s / 60, s % 60, try await backlog())) }
                o.backlog = try await backlog()
                o.failed = await relay.metric("outbox_events_failed_total") - failed0
                o.cpu = (cpuSeconds(relay.pid) - cpu0) / Double(outage) * 100
                o.lastOfOutage = await commits.maxID
                forwarder = try await start()
                o.recovered = Date()
                progress("\(destination) back; backlog \(o.backlog)")
                // Drained: every event written before the recovery acknowledged. A failed event
                // waits out its backoff (up to relay.backoff_max) before it is tried again.
                try await acknowledged(upTo: o.lastOfOutage, within: config.relay.backoff.maximum + .seconds(max(60, outage)), "the outage's backlog was")
                o.lastOfDrain = await commits.maxID
                progress("drained; waiting for the events written during the drain")
                try await acknowledged(upTo: o.lastOfDrain, within: .seconds(120), "the events written during the drain were")
                o.achieved = Double(await commits.count) / (ContinuousClock.now - writing).seconds
            }
            try await waitForDrain(relay, db, commits, after: "the writers", within: .seconds(120))
        }

        /// Commit→acknowledged ms of the events in (after, upTo], acknowledged before `ackedBefore`.
        func latencies(after: Int64, upTo: Int64, ackedBefore: Date = .distantFuture) async throws -> [Double] {
            let rows = try await db.query(
                "SELECT id, extract(epoch FROM at)::float8 * 1000 AS ms FROM bench_acks WHERE id > $1 AND id <= $2 AND at < $3",
                [.int(after), .int(upTo), .timestamptz(ackedBefore)]).rows
            let acked: [(Int64, Double)] = try rows.map { (try $0.decode("id"), try $0.decode("ms")) }
            let times = await commits.take(acked.map(\.0))
            return zip(acked, times).compactMap { entry, at in at.map { entry.1 - $0.timeIntervalSince1970 * 1000 } }
        }
        let drainEnd = try await db.query("SELECT extract(epoch FROM max(at))::float8 AS t FROM bench_acks WHERE id <= $1", [.int(o.lastOfOutage)])
            .first!.decode("t", as: Double.self)
        let dead = try await db.query("SELECT count(*) AS n FROM outbox.dead_letters").first!.decode("n", as: Int.self)
        let written = await commits.count
        let before = try await latencies(after: 0, upTo: o.lastBefore, ackedBefore: o.start)
        let behind = o.achieved < Double(rate) * 0.98
        return [
            ("load", "\(rate)/s from \(writers) writers (synchronous_commit on), one \(toQdrant ? "qdrant.upsert (\(catchUpDimensions)-dim vector)" : "redis.xadd") per transaction; "
                + "\(warmup) s warm-up, then \(destination) unreachable for \(outage) s (the relay's connection through a forwarder the bench kills)"),
            ("achieved rate", "\(fmt(o.achieved))/s of \(rate)/s" + (behind ? ": BEHIND, the writers did not keep the rate (each waits for its commit's WAL flush); more --writers may keep it" : "")),
            ("before the outage: commit→acknowledged ms p50 / p99 / max", latencySummary(before) + "; backlog \(o.warmBacklog) at its end"),
            ("backlog at the end of the outage", "\(o.backlog) events; \(o.failed) failed attempts during it, relay CPU \(fmt(o.cpu, 1)) % of a core"),
            ("time to drain it after recovery",
             "\(fmt(drainEnd - o.recovered.timeIntervalSince1970, 1)) s (relay.backoff \(config.relay.backoff.initial) … \(config.relay.backoff.maximum))"),
            ("written during the drain: commit→acknowledged ms p50 / p99 / max", latencySummary(try await latencies(after: o.lastOfOutage, upTo: o.lastOfDrain))),
            ("delivered", try await landed(written) + "; \(dead) dead letters"),
        ]
    }

    /// `url` with its host and port replaced by 127.0.0.1:`port`, its user, password and path kept.
    static func forwarded(_ url: String, port: Int) -> String {
        guard let scheme = url.range(of: "://") else { return url }
        let rest = url[scheme.upperBound...]
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        let userinfo = rest[..<authorityEnd].lastIndex(of: "@").map { String(rest[...$0]) } ?? ""
        return String(url[..<scheme.upperBound]) + userinfo + "127.0.0.1:\(port)" + rest[authorityEnd...]
    }
}

/// What catch-up saw, filled in as it goes.
private struct Outage {
    var warmBacklog = 0, backlog = 0, failed = 0
    var cpu = 0.0, achieved = 0.0
    var start = Date(), recovered = Date()
    /// The last event id committed before the outage, before the recovery, and before the drain ended.
    var lastBefore: Int64 = 0, lastOfOutage: Int64 = 0, lastOfDrain: Int64 = 0
}
