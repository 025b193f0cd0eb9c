import Foundation
import OutboxCore
import OutboxTestSupport

extension Bench {
    /// Writers commit one `redis.xadd` per transaction at a steady rate for a long time, as an
    /// application does; the relay's commit→delivered latency (as `latency` measures it), its CPU
    /// and memory, Postgres' CPU and the backlog, interval by interval: does the relay hold a rate,
    /// or does something grow (the backlog, the tail, its memory)?
    func sustained(writers: Int, rate: Int, seconds: Int, reportEvery: Int) async throws -> [(String, String)] {
        try await withSustainedLoad { url, db, relay, stream, commits, latencies in
            var figures = [("load", "\(rate)/s from \(writers) writers (own sessions, synchronous_commit on) for \(seconds) s, one redis.xadd per transaction")]
            var all: [Double] = [], p99s: [Double] = []
            var behind = false
            let (first, last) = try await withSteadyWriters(url, writers: writers, rate: rate, commits: commits, event: xaddEvent(stream)) { stop in
                let first = try await Snapshot(self, relay, commits)
                var previous = first
                var window: [Double] = []
                for tick in 1...seconds {
                    try await Task.sleep(until: first.at + .seconds(tick))
                    try stop.check()
                    window += try await latencies.read()
                    guard tick % reportEvery == 0 || tick == seconds else { continue }
                    let now = try await Snapshot(self, relay, commits)
                    let backlog = try await db.query("SELECT count(*) AS n FROM outbox.events").first!.decode("n", as: Int.self)
                    let achieved = now.rate(of: \.written, since: previous)
                    behind = behind || achieved < Double(rate) * 0.98
                    let line = "written \(now.written - previous.written) (\(fmt(achieved))/s"
                        + (achieved < Double(rate) * 0.98 ? ", BEHIND \(rate)/s" : "") + "), delivered \(now.delivered - previous.delivered); "
                        + "ms p50 / p99 / max \(latencySummary(window)); backlog \(backlog); "
                        + "CPU relay \(fmt(now.relayCPU(since: previous))) %, postgres \(fmt(now.postgresCPU(since: previous))) %; "
                        + "relay RSS \(fmt(proc(relay.pid, "VmRSS") / 1024, 1)) MB"
                    let at = String(format: "%d:%02d", tick / 60, tick % 60)
                    FileHandle.standardError.write(Data("  \(at) \(line)\n".utf8))
                    figures.append((at, line))
                    p99s.append(percentile(window.sorted(), 0.99))
                    all += window
                    window = []
                    previous = now
                }
                return (first, previous)
            }
            // The writers have stopped: the events still in the outbox, delivered.
            let stopped = ContinuousClock.now
            let written = await commits.count
            while try await delivered(relay) + (await relay.metric("outbox_events_dead_lettered_total")) < written,
                ContinuousClock.now - stopped < .seconds(60)
            {
                try await Task.sleep(for: .milliseconds(20))
            }
            let left = written - (try await delivered(relay))
            let tail = try await latencies.read()
            all += tail
            let achieved = last.rate(of: \.written, since: first)
            figures += [
                ("achieved rate", "\(fmt(achieved))/s of \(rate)/s" + (behind
                    ? ": the writers did not keep the rate in every interval (BEHIND above); each waits for its commit's WAL flush. Figures are for the rate achieved; more --writers may reach it"
                    : "")),
                ("commit→delivered ms p50 / p99 / max, whole run", latencySummary(all)),
                ("p99 last interval / first interval", p99s.count < 2 ? "one interval only"
                    : "\(fmt(p99s.last! / max(p99s.first!, 0.001), 2)) (\(fmt(p99s.last!, 1)) / \(fmt(p99s.first!, 1)) ms)"),
                ("after the writers stopped", left <= 0
                    ? "the last \(tail.count) events delivered within \(fmt((ContinuousClock.now - stopped).seconds * 1000)) ms"
                    : "\(left) events not delivered 60 s later"),
                ("CPU % of a core, whole run: relay / postgres", "\(fmt(last.relayCPU(since: first))) / \(fmt(last.postgresCPU(since: first)))"),
                ("relay peak RSS (VmHWM)", fmt(proc(relay.pid, "VmHWM") / 1024, 1) + " MB"),
            ]
            return figures
        }
    }

    /// `sustained --find-max`: steps of --step-seconds at 1,000/s, 2,000/s, 4,000/s, … until a step
    /// fails, then two bisections between the last step that held and the first that did not. A
    /// step holds when the writers kept its rate and, over its second half, the backlog did not grow
    /// (its least-squares slope, sampled every second, under 2 % of the rate) and p99 stayed under
    /// 100 ms. The writers, relay and database stay up from step to step; after a failed step the
    /// backlog is drained before the next one.
    func sustainedMaxRate(writers: Int, stepSeconds: Int) async throws -> [(String, String)] {
        try await withSustainedLoad { url, db, relay, stream, commits, latencies in
            var figures = [("steps", "\(stepSeconds) s each, \(writers) writers (own sessions, synchronous_commit on), one redis.xadd per transaction; "
                + "a step holds when the writers kept its rate and, over its second half, the backlog's slope was under 2 % of it and p99 < 100 ms")]
            var held: Int?, failed: (rate: Int, writersOnly: Bool)?
            var bisections = 0
            var rate = 1000
            while true {
                let (line, reasons, writersOnly) = try await withSteadyWriters(url, writers: writers, rate: rate, commits: commits, event: xaddEvent(stream)) { stop in
                    let start = try await Snapshot(self, relay, commits)
                    var middle = start
                    var samples: [(Double, Double)] = []
                    var window: [Double] = []
                    for tick in 1...stepSeconds {
                        try await Task.sleep(until: start.at + .seconds(tick))
                        try stop.check()
                        let read = try await latencies.read()
                        if tick == stepSeconds / 2 { middle = try await Snapshot(self, relay, commits) }
                        guard tick > stepSeconds / 2 else { continue }
                        window += read
                        // Delivered first: an event is counted written before it can be counted delivered.
                        let settled = try await delivered(relay) + (await relay.metric("outbox_events_dead_lettered_total"))
                        samples.append((Double(tick), Double(await commits.count - settled)))
                    }
                    let end = try await Snapshot(self, relay, commits)
                    // The writers' rate over the whole step: behind in its first half and catching up
                    // in its second is behind.
                    let achieved = end.rate(of: \.written, since: start)
                    let slope = leastSquaresSlope(samples)
                    let p99 = percentile(window.sorted(), 0.99)
                    var reasons: [String] = []
                    if achieved < Double(rate) * 0.98 { reasons.append("the writers reached only \(fmt(achieved))/s") }
                    if slope >= Double(rate) * 0.02 { reasons.append("the backlog grew by \(fmt(slope))/s") }
                    if p99 >= 100 { reasons.append("p99 \(fmt(p99, 1)) ms") }
                    let deliveredRate = end.rate(of: \.delivered, since: middle)
                    let (first, last) = (Int(samples.first?.1 ?? 0), Int(samples.last?.1 ?? 0))
                    let verdict = reasons.isEmpty ? "holds" : reasons.joined(separator: ", ")
                    var line = "written \(fmt(achieved))/s (second half \(fmt(end.rate(of: \.written, since: middle)))/s), delivered \(fmt(deliveredRate))/s; "
                    line += "ms p50 / p99 / max \(latencySummary(window)); "
                    line += "backlog \(first) → \(last) (slope \(fmt(slope, 1))/s); "
                    line += "CPU relay \(fmt(end.relayCPU(since: middle))) %, postgres \(fmt(end.postgresCPU(since: middle))) %; "
                    line += "relay RSS \(fmt(proc(relay.pid, "VmRSS") / 1024, 1)) MB: \(verdict)"
                    return (line, reasons, reasons.count == 1 && achieved < Double(rate) * 0.98)
                }
                FileHandle.standardError.write(Data("  \(rate)/s \(line)\n".utf8))
                figures.append(("\(rate)/s", line))
                if reasons.isEmpty { held = rate } else { failed = (rate, writersOnly) }
                guard let failed else {
                    rate *= 2
                    continue
                }
                // Bisect twice between the last rate that held and the first that did not.
                let next = ((held ?? 0) + failed.rate) / 200 * 100
                guard bisections < 2 && next > (held ?? 0) && next < failed.rate else { break }
                bisections += 1
                if !reasons.isEmpty { try await waitForDrain(relay, db, commits, after: "the \(rate)/s step", within: .seconds(max(60, 2 * stepSeconds))) }
                rate = next
            }
            figures.append(("highest rate that holds", held.map { "\($0)/s" } ?? "none: \(failed?.rate ?? rate)/s did not hold"))
            if let failed, failed.writersOnly {
                figures.append(("limited by", "the writers: they could not write \(failed.rate)/s (each waits for its commit's WAL flush), "
                    + "the relay kept up with what they wrote; the relay's limit may be higher: try more --writers"))
            }
            return figures
        }
    }

    /// A fresh database, a relay on it, a Redis stream for the writers' events and a reader of its
    /// latencies, for `sustained` and `sustained --find-max`; the stream is deleted afterwards.
    private func withSustainedLoad(
        _ body: (String, PostgresConnection, DaemonProcess, String, CommitLog, inout StreamLatency) async throws -> [(String, String)]
    ) async throws -> [(String, String)] {
        let redis = try await RedisConnection.connect(config.redis, logger: logger)
        let stream = "bench:sustained:" + UUID().uuidString.prefix(8)
        let result: Result<[(String, String)], any Error>
        do {
            result = .success(try await withDatabase { url, db in
                try await withRelay(url, port: 18_475) { relay in
                    try await relay.waitUntilReady()
                    let commits = CommitLog()
                    var latencies = StreamLatency(redis: redis, stream: stream, commits: commits)
                    return try await body(url, db, relay, stream, commits, &latencies)
                }
            })
        } catch {
            result = .failure(error)
        }
        _ = try? await redis.command("DEL", stream)
        return try result.get()
    }

    /// The writers' event: a `redis.xadd` to `stream`, each writer over 100 keys of its own (as `latency`).
    func xaddEvent(_ stream: String) -> @Sendable (Int, Int) -> OutboxEvent {
        { w, n in .redisXAdd(stream: stream, fields: ["w": String(w)], key: "w\(w)-\(n % 100)") }
    }

    /// Waits until the relay has delivered (or dead-lettered) everything written; throws after `within`.
    func waitForDrain(_ relay: DaemonProcess, _ db: PostgresConnection, _ commits: CommitLog, after: String, within: Duration) async throws {
        let deadline = ContinuousClock.now + within
        while try await delivered(relay) + (await relay.metric("outbox_events_dead_lettered_total")) < (await commits.count) {
            guard ContinuousClock.now < deadline else {
                let backlog = try await db.query("SELECT count(*) AS n FROM outbox.events").first!.decode("n", as: Int.self)
                throw BenchError("the backlog left by \(after) was not delivered within \(within): \(backlog) events in outbox.events")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func leastSquaresSlope(_ points: [(Double, Double)]) -> Double {
        guard points.count > 1 else { return 0 }
        let n = Double(points.count)
        let mx = points.reduce(0) { $0 + $1.0 } / n, my = points.reduce(0) { $0 + $1.1 } / n
        let sxx = points.reduce(0) { $0 + ($1.0 - mx) * ($1.0 - mx) }
        return sxx == 0 ? 0 : points.reduce(0) { $0 + ($1.0 - mx) * ($1.1 - my) } / sxx
    }
}

/// Counters of one moment: events written and delivered, CPU seconds of the relay and of every
/// Postgres process.
private struct Snapshot {
    let at = ContinuousClock.now
    let written: Int
    let delivered: Int
    let relayCPU: Double
    let postgres: [Int32: Double]

    init(_ bench: Bench, _ relay: DaemonProcess, _ commits: CommitLog) async throws {
        written = await commits.count
        delivered = try await bench.delivered(relay)
        relayCPU = bench.cpuSeconds(relay.pid)
        postgres = bench.postgresCPU()
    }

    func rate(of counter: KeyPath<Snapshot, Int>, since earlier: Snapshot) -> Double {
        Double(self[keyPath: counter] - earlier[keyPath: counter]) / (at - earlier.at).seconds
    }
    /// % of a core since `earlier`.
    func relayCPU(since earlier: Snapshot) -> Double { (relayCPU - earlier.relayCPU) / (at - earlier.at).seconds * 100 }
    func postgresCPU(since earlier: Snapshot) -> Double {
        postgres.reduce(0) { $0 + $1.value - (earlier.postgres[$1.key] ?? 0) } / (at - earlier.at).seconds * 100
    }
}

/// Commit→delivered latencies of the events the relay appends to a stream, measured as `latency`
/// does (the entry id's time, set by Redis, minus the writer's commit time), but read as the run
/// goes and trimmed after each read, so a long run holds neither the whole stream nor every
/// commit time. An entry whose commit is not recorded yet (the relay was faster than the writer's
/// bookkeeping) is matched at the next read.
struct StreamLatency {
    let redis: RedisConnection
    let stream: String
    let commits: CommitLog
    private var last = "0-0"
    private var unmatched: [(id: Int64, ms: Double)] = []

    init(redis: RedisConnection, stream: String, commits: CommitLog) {
        self.redis = redis
        self.stream = stream
        self.commits = commits
    }

    /// Latencies in ms of the entries added since the last read.
    mutating func read() async throws -> [Double] {
        var entries = unmatched
        while true {
            let batch = try await redis.command("XRANGE", stream, "(" + last, "+", "COUNT", "10000").array ?? []
            for entry in batch {
                guard let parts = entry.array, let entryID = parts[0].string, let fields = parts[1].array?.compactMap(\.string),
                    let i = fields.firstIndex(of: "outbox_id"), let id = Int64(fields[i + 1]), let ms = Double(entryID.split(separator: "-")[0])
                else { continue }
                entries.append((id, ms))
                last = entryID
            }
            if batch.count < 10_000 { break }
        }
        if last != "0-0" { try await redis.command("XTRIM", stream, "MINID", last) }
        let times = await commits.take(entries.map(\.id))
        unmatched = []
        var latencies: [Double] = []
        for (entry, at) in zip(entries, times) {
            if let at { latencies.append(entry.ms - at.timeIntervalSince1970 * 1000) } else { unmatched.append(entry) }
        }
        return latencies
    }
}
