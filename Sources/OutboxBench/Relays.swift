import Foundation
import OutboxCore
import OutboxTestSupport

extension Bench {
    /// relays: the drain-redis backlog (`events` redis.xadd over `keys` keys, one stream) drained by
    /// 1, 2, 4, ... relay processes on one database. Each drain is drainByRelay's, with `n` relays:
    /// all started and ready on an empty outbox, the backlog committed in one transaction, timed
    /// from that commit to the last acknowledgement (the relays' delivered counters summed). The
    /// counts take turns, round after round (the order reversed every other round, so a machine
    /// that gets busier or quieter does not favour one count); each round's figures and the medians.
    func relays(counts: [Int], events: Int, keys: Int, rounds: Int) async throws -> [(String, String)] {
        let redis = try await RedisConnection.connect(config.redis, logger: logger)
        var drains: [Int: [RelaysDrain]] = [:]
        for round in 0..<rounds {
            for n in round % 2 == 0 ? counts : counts.reversed() {
                let stream = "bench:" + UUID().uuidString.prefix(8)
                let drain: RelaysDrain
                do {
                    drain = try await drainByRelays(n, events: events, keys: keys, stream: stream, redis: redis)
                } catch {
                    try? await redis.command("DEL", stream)
                    throw error
                }
                try await redis.command("DEL", stream)
                drains[n, default: []].append(drain)
                FileHandle.standardError.write(Data("relays: round \(round + 1) of \(rounds), \(n) relay(s): \(describe(drain, events: events))\n".utf8))
            }
        }
        let median = { (values: [Double]) in values.sorted()[values.count / 2] }
        let perEvent = { (seconds: Double) in seconds / Double(events) * 1e6 }
        var figures = [("backlog", "\(events) redis.xadd over \(keys) keys, one stream; \(rounds) round(s), counts alternated")]
        for n in counts {
            let runs = drains[n] ?? []
            let label = n == 1 ? "1 relay" : "\(n) relays"
            figures += [
                ("\(label): events/s (each round) → median", runs.map { fmt($0.rate) }.joined(separator: " / ") + " → " + fmt(median(runs.map(\.rate)))),
                ("\(label): relay cpu µs/event, all relays (each round)", runs.map { fmt(perEvent($0.cpu.relays), 1) }.joined(separator: " / ")),
                ("\(label): cpu µs/event relays / postgres / redis (medians)",
                 [\RelaysDrain.cpu.relays, \.cpu.postgres, \.cpu.redis].map { path in fmt(median(runs.map { perEvent($0[keyPath: path]) }), 1) }
                    .joined(separator: " / ")),
                ("\(label): claims with events / empty, all relays (each round)", runs.map { "\($0.claims.found)/\($0.claims.empty)" }.joined(separator: ", ")),
                ("\(label): cores busy relays / postgres / redis / bench / rest (medians)",
                 [\RelaysDrain.cores.relays, \.cores.postgres, \.cores.redis, \.cores.bench, \.cores.rest].map { path in fmt(median(runs.map { $0[keyPath: path] }), 2) }
                    .joined(separator: " / ")),
                ("\(label): delivered by each relay (last round)", runs.last.map { $0.deliveredBy.map(String.init).joined(separator: " / ") } ?? ""),
            ]
        }
        if let first = counts.first, let base = drains[first].map({ median($0.map(\.rate)) }), base > 0 {
            figures.append(("events/s against \(first) relay(s) (medians)",
                            counts.map { n in "\(n): " + fmt(median((drains[n] ?? []).map(\.rate)) / base * 100) + " %" }.joined(separator: ", ")))
        }
        return figures
    }

    /// What one drain by `n` relays measured. CPU seconds over the drain; `cores`: each party's
    /// CPU seconds over the drain's wall time, and `rest` the machine's busy time (/proc/stat) less
    /// all of those: whatever else ran on the machine meanwhile.
    struct RelaysDrain {
        var rate: Double
        var cpu: (relays: Double, postgres: Double, redis: Double)
        var cores: (relays: Double, postgres: Double, redis: Double, bench: Double, rest: Double)
        var claims: (found: Int, empty: Int)
        var deliveredBy: [Int]
    }

    func describe(_ drain: RelaysDrain, events: Int) -> String {
        let perEvent = { (seconds: Double) in self.fmt(seconds / Double(events) * 1e6, 1) }
        return "\(fmt(drain.rate)) events/s; cpu µs/event relays \(perEvent(drain.cpu.relays)), postgres \(perEvent(drain.cpu.postgres)), "
            + "redis \(perEvent(drain.cpu.redis)); claims with events / empty \(drain.claims.found) / \(drain.claims.empty); "
            + "cores busy relays \(fmt(drain.cores.relays, 2)), postgres \(fmt(drain.cores.postgres, 2)), redis \(fmt(drain.cores.redis, 2)), "
            + "bench \(fmt(drain.cores.bench, 2)), rest \(fmt(drain.cores.rest, 2)); delivered by each \(drain.deliveredBy.map(String.init).joined(separator: "/"))"
    }

    /// drainByRelay with `n` relays on one fresh database (health ports 18480, 18481, ...).
    func drainByRelays(_ n: Int, events: Int, keys: Int, stream: String, redis: RedisConnection) async throws -> RelaysDrain {
        try await withDatabase { url, db in
            try await withRelays(url, count: n, firstPort: 18_480) { relays in
                for relay in relays { try await relay.waitUntilReady() }
                try await db.transaction { tx in try await preloadXAdd(tx, events: events, keys: keys, stream: stream) }
                let relayCPU = { relays.reduce(0) { $0 + self.cpuSeconds($1.pid) } }
                let benchCPU = { self.cpuSeconds(clock: CLOCK_PROCESS_CPUTIME_ID) }
                let (postgresBefore, redisBefore, relaysBefore, benchBefore, machineBefore) =
                    (postgresCPU(), try await redisCPU(redis), relayCPU(), benchCPU(), machineBusySeconds())
                let started = ContinuousClock.now
                while case .integer(let length) = try await redis.command("XLEN", stream), length < events {
                    for relay in relays where !relay.isRunning {
                        throw BenchError("a relay exited during the relays scenario (status \(relay.process.terminationStatus))")
                    }
                    try await Task.sleep(for: .milliseconds(5))
                }
                var deliveredBy: [Int] = []
                repeat {
                    deliveredBy = []
                    for relay in relays { deliveredBy.append(try await delivered(relay)) }
                    if deliveredBy.reduce(0, +) < events { try await Task.sleep(for: .milliseconds(2)) }
                } while deliveredBy.reduce(0, +) < events
                let elapsed = (ContinuousClock.now - started).seconds
                let postgres = postgresCPU().reduce(0) { $0 + $1.value - (postgresBefore[$1.key] ?? 0) }
                let cpu = (relays: relayCPU() - relaysBefore, postgres: postgres, redis: try await redisCPU(redis) - redisBefore)
                let bench = benchCPU() - benchBefore, machine = machineBusySeconds() - machineBefore
                var found = 0, empty = 0
                for relay in relays {
                    found += await relay.metric(#"outbox_relay_claims_total{destination="redis",result="events"}"#)
                    empty += await relay.metric(#"outbox_relay_claims_total{destination="redis",result="empty"}"#)
                }
                return RelaysDrain(
                    rate: Double(events) / elapsed, cpu: cpu,
                    cores: (cpu.relays / elapsed, cpu.postgres / elapsed, cpu.redis / elapsed, bench / elapsed,
                            (machine - cpu.relays - cpu.postgres - cpu.redis - bench) / elapsed),
                    claims: (found, empty), deliveredBy: deliveredBy)
            }
        }
    }

    /// Runs `body` with `count` relays on `url` (withRelay, one inside the other: each is stopped,
    /// and its log copied, whether `body` returns or throws), health ports from `firstPort` up.
    func withRelays<T>(_ url: String, count: Int, firstPort: Int, _ body: ([DaemonProcess]) async throws -> T) async throws -> T {
        guard count > 0 else { return try await body([]) }
        return try await withRelay(url, port: firstPort) { relay in
            try await withRelays(url, count: count - 1, firstPort: firstPort + 1) { others in try await body([relay] + others) }
        }
    }

    /// CPU seconds the whole machine has been busy (all cores; /proc/stat: everything but idle and iowait).
    func machineBusySeconds() -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = stat.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { return 0 }
        let ticks = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard ticks.count >= 5 else { return 0 }
        // user nice system idle iowait irq softirq steal (guest and guest_nice are inside user and nice)
        let busy = ticks.prefix(8).reduce(0, +) - ticks[3] - ticks[4]
        return busy / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
