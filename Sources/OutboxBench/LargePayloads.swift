import Foundation
import OutboxCore
import OutboxTestSupport

extension Bench {
    /// A backlog of `redis.set` events with large values, committed before the relay starts: its
    /// peak memory, the time it takes to drain, retries and dead letters, and whether every value
    /// landed intact. The values are base64 text of a seeded PRNG's output (6 bits of entropy a
    /// character): TOAST cannot compress them, so the relay reads what a real backlog of such
    /// payloads would hand it.
    func largePayloads(events: Int, bytes: Int, keys: Int) async throws -> [(String, String)] {
        let redis = try await RedisConnection.connect(config.redis, logger: logger)
        let prefix = "bench:large:\(UUID().uuidString.prefix(8)):"
        let result: Result<[(String, String)], any Error>
        do {
            result = .success(try await withDatabase { url, db in
                // Preload: round trips of ~16 MiB, one transaction each.
                let perTrip = max(1, (16 << 20) / bytes)
                var done = 0
                let preloadStart = ContinuousClock.now
                while done < events {
                    let batch = (done..<min(events, done + perTrip)).map { i in
                        OutboxEvent.redisSet(key: prefix + String(i), value: String(decoding: largeValue(i, bytes: bytes), as: UTF8.self), ttlSeconds: 3600, key: "k\(i % keys)")
                    }
                    try await db.transaction { tx in _ = try await OutboxWriter.write([], enqueue: batch, on: tx) }
                    done += batch.count
                }
                let preload = (ContinuousClock.now - preloadStart).seconds
                let onDisk = try await db.query("SELECT pg_total_relation_size('outbox.events') AS n").first!.decode("n", as: Int.self)

                let started = ContinuousClock.now
                let (peak, elapsed, failed, deadLettered) = try await withRelay(url, port: 18_477) { relay in
                    var peak = 0.0
                    var (progress, progressAt) = (-1, ContinuousClock.now)
                    while true {
                        let settled = try await delivered(relay) + (await relay.metric("outbox_events_dead_lettered_total"))
                        peak = max(peak, proc(relay.pid, "VmHWM"))
                        if settled >= events { break }
                        if settled > progress {
                            (progress, progressAt) = (settled, .now)
                        } else if ContinuousClock.now - progressAt > .seconds(120) {
                            throw BenchError("no event delivered or dead-lettered for 120 s: \(max(0, settled)) of \(events) settled, "
                                + "\(await relay.metric("outbox_events_failed_total")) failed attempts (the relay's log follows)")
                        }
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    let elapsed = (ContinuousClock.now - started).seconds
                    return (max(peak, proc(relay.pid, "VmHWM")), elapsed, await relay.metric("outbox_events_failed_total"),
                            await relay.metric("outbox_events_dead_lettered_total"))
                }
                let dead = try await db.query("SELECT count(*) AS n FROM outbox.dead_letters").first!.decode("n", as: Int.self)

                // Every value's length; a few values byte for byte.
                var lengths = 0
                for from in stride(from: 0, to: events, by: 1000) {
                    let replies = try await redis.pipeline((from..<min(events, from + 1000)).map { RedisCommand("STRLEN", prefix + String($0)) })
                    lengths += replies.filter { $0.integer == Int64(bytes) }.count
                }
                let samples = Set([0, events / 3, events / 2, 2 * events / 3, events - 1]).sorted()
                var intact = 0
                for i in samples {
                    if case .bulk(let value) = try await redis.command("GET", prefix + String(i)), value == largeValue(i, bytes: bytes) { intact += 1 }
                }
                let mib = Double(events) * Double(bytes) / 1_048_576
                return [
                    ("backlog", "\(events) redis.set events of \(bytes) bytes (\(fmt(mib)) MiB of values) over \(min(keys, events)) keys; "
                        + "preloaded in \(fmt(preload, 1)) s; outbox.events on disk \(fmt(Double(onDisk) / 1_048_576)) MiB"),
                    ("relay peak RSS (VmHWM)", fmt(peak / 1024, 1) + " MB"),
                    ("drain s (from the relay's start) / MiB/s", "\(fmt(elapsed, 1)) / \(fmt(mib / elapsed, 1))"),
                    ("failed attempts (retried) / dead letters", "\(failed) / \(dead) (dead-lettered by this relay: \(deadLettered))"),
                    ("landed intact", "\(lengths) of \(events) values of the right length; \(intact) of \(samples.count) compared byte for byte equal"
                        + (lengths == events && intact == samples.count ? "" : ": NOT INTACT")),
                ]
            })
        } catch {
            result = .failure(error)
        }
        for from in stride(from: 0, to: events, by: 1000) {
            _ = try? await redis.command(RedisCommand(["UNLINK"] + (from..<min(events, from + 1000)).map { prefix + String($0) }))
        }
        return try result.get()
    }

    /// Value `i` of large-payloads: `bytes` characters of base64 over SplitMix64 seeded with `i`.
    private func largeValue(_ i: Int, bytes: Int) -> [UInt8] {
        var generator = SplitMix64(seed: UInt64(i) &+ 0x6c61_7267_6500)
        var raw: [UInt8] = []
        raw.reserveCapacity(bytes * 3 / 4 + 8)
        while raw.count * 4 < bytes * 3 { withUnsafeBytes(of: generator.next()) { raw.append(contentsOf: $0) } }
        return Array(Data(raw).base64EncodedData().prefix(bytes))
    }
}
