import Foundation
import OutboxCore
import OutboxTestSupport

extension Bench {
    func latency() async throws -> [(String, String)] {
        var figures: [(String, String)] = []
        for rate in [1000, 5000] {
            let result: (String, String) = try await withDatabase { url, _ in
                let stream = "bench:lat:" + UUID().uuidString.prefix(8)
                let port = 18_473
                let commits = CommitLog()
                let total = try await withRelay(url, port: port) { relay in
                    try await relay.waitUntilReady()
                    let writers = rate >= 2000 ? 4 : 1
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for w in 0..<writers {
                            group.addTask {
                                let db = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: logger)
                                try await db.query("SET synchronous_commit = off")
                                let interval = Duration.nanoseconds(Int64(1e9) * Int64(writers) / Int64(rate))
                                var next = ContinuousClock.now
                                let end = next + .seconds(seconds)
                                var n = 0
                                while next < end {
                                    let id = try await db.transaction { tx in
                                        try await OutboxWriter.enqueue(.redisXAdd(stream: stream, fields: ["w": String(w)], key: "w\(w)-\(n % 100)"), on: tx)
                                    }
                                    await commits.record(id, Date())
                                    n += 1
                                    next += interval
                                    if next > .now { try await Task.sleep(until: next) }
                                }
                            }
                        }
                        try await group.waitForAll()
                    }
                    let total = await commits.count
                    while try await delivered(relay) < total { try await Task.sleep(for: .milliseconds(50)) }
                    return total
                }
                let redis = try await RedisConnection.connect(config.redis, logger: logger)
                var latencies: [Double] = []
                let committed = await commits.times
                for entry in try await redis.command("XRANGE", stream, "-", "+").array ?? [] {
                    guard let parts = entry.array, let entryID = parts[0].string, let fields = parts[1].array?.compactMap(\.string),
                        let i = fields.firstIndex(of: "outbox_id"), let id = Int64(fields[i + 1]), let at = committed[id],
                        let ms = Double(entryID.split(separator: "-")[0])
                    else { continue }
                    latencies.append(ms - at.timeIntervalSince1970 * 1000)
                }
                try await redis.command("DEL", stream)
                let sorted = latencies.sorted()
                return ("\(rate)/s commit→delivered ms p50/p90/p99/max",
                        "\(fmt(percentile(sorted, 0.5), 1)) / \(fmt(percentile(sorted, 0.9), 1)) / \(fmt(percentile(sorted, 0.99), 1)) / \(fmt(sorted.last ?? 0, 1)) (n=\(sorted.count), achieved \(fmt(Double(total) / Double(seconds)))/s)")
            }
            figures.append(result)
        }
        return figures
    }
}
