import Foundation
import Logging
import OutboxCore
import OutboxTestSupport
import Synchronization

/// The harness every scenario shares: its settings, a fresh database per scenario, the relay as a
/// child process, and readers of CPU time and memory. Each scenario is an extension in a file of its own.
struct Bench {
    let config: OutboxConfiguration
    let configPath: String
    let logger: Logger
    let seconds: Int
    let relayBinary: URL?
    let relayLogLevel: String

    var binDirectory: URL { URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent() }

    // MARK: Databases and processes

    /// Runs `body` in a fresh database (its URL and a connection to it) on the server of
    /// postgres.url, migrated, and dropped afterwards whether `body` returns or throws.
    func withDatabase<T>(_ body: (String, PostgresConnection) async throws -> T) async throws -> T {
        try await ScratchDatabase.with(
            server: config.postgres, prefix: "bench", schemaDirectory: config.schemaDirectory, logger: logger
        ) { url, db in
            let result: Result<T, any Error>
            do { result = .success(try await body(url, db)) } catch { result = .failure(error) }
            do {
                try await removeDedupeKeys(db)
            } catch {
                FileHandle.standardError.write(Data("warning: could not remove the relay's Redis dedupe keys: \(error)\n".utf8))
            }
            return try result.get()
        }
    }

    /// Deletes the Redis dedupe keys the relay wrote for this database (its instance id names
    /// them). Left behind, millions of them (with their TTL) slowed later scenarios and runs:
    /// Redis rewrote its append-only file in the middle of them.
    func removeDedupeKeys(_ db: PostgresConnection) async throws {
        guard let instance = try await db.query("SELECT id FROM outbox.instance").first?.decode("id", as: String.self) else { return }
        let redis = try await RedisConnection.connect(config.redis, logger: logger)
        var cursor = "0"
        repeat {
            let reply = try await redis.command("SCAN", cursor, "MATCH", "\(config.relay.dedupePrefix):\(instance):*", "COUNT", "10000").array ?? []
            cursor = reply.first?.string ?? "0"
            let keys = reply.count > 1 ? (reply[1].array ?? []).compactMap(\.string) : []
            if !keys.isEmpty { try await redis.command(RedisCommand(["UNLINK"] + keys)) }
        } while cursor != "0"
    }

    /// Starts `outbox-relay serve` (the `--relay` binary, or the one beside this one) on the
    /// database at `url`, its health server on `port`; its output goes to the `DaemonProcess`'s log
    /// file (`withRelay` copies it to standard error once the relay stops). Its `/readyz` and
    /// `/metrics` polls (every 2–100 ms while it drains) go through the one HTTP handle the
    /// `DaemonProcess` keeps: a new connection per poll cost the bench 19 % of a core during
    /// drain-redis, taken from the processes it measures.
    func startRelay(_ url: String, port: Int, extra: [String: String] = [:]) throws -> DaemonProcess {
        try DaemonProcess(
            executable: relayBinary ?? binDirectory.appendingPathComponent("outbox-relay"), config: configPath,
            directory: URL(fileURLWithPath: FileManager.default.currentDirectoryPath), port: port,
            environment: ["OUTBOX_POSTGRES_URL": url, "OUTBOX_LOG_LEVEL": relayLogLevel].merging(extra) { $1 },
            logger: logger)
    }

    /// Runs `body` with a relay started on `url`, and stops the relay when `body` returns or throws
    /// (a scenario that fails must not leave its relay running into the next one).
    func withRelay<T>(
        _ url: String, port: Int, extra: [String: String] = [:], _ body: (DaemonProcess) async throws -> T
    ) async throws -> T {
        let relay = try startRelay(url, port: port, extra: extra)
        let result: Result<T, any Error>
        do { result = .success(try await body(relay)) } catch { result = .failure(error) }
        await relay.stop()
        copyLog(of: relay)
        return try result.get()
    }

    /// Copies the relay's log (its standard error: warnings, and every claim at
    /// `--relay-log-level trace`) to the bench's standard error, where the relay wrote it before
    /// it ran as a `DaemonProcess`; in chunks, as a trace log of a long drain is large.
    func copyLog(of relay: DaemonProcess) {
        guard let log = try? FileHandle(forReadingFrom: relay.logURL) else { return }
        defer { try? log.close() }
        while let chunk = try? log.read(upToCount: 1 << 16), !chunk.isEmpty { FileHandle.standardError.write(chunk) }
    }

    /// Delivered events so far, from the relay's own /metrics (no load on Postgres); -1 if it did
    /// not answer. Throws once the relay has exited, so a scenario waiting for a count ends.
    func delivered(_ relay: DaemonProcess) async throws -> Int {
        guard relay.isRunning else { throw BenchError("the relay exited (status \(relay.process.terminationStatus))") }
        return await relay.metric("outbox_events_delivered_total")
    }

    /// scripts/pg-wire-proxy.py listening on 127.0.0.1:`port` and forwarding to `host`:`target`,
    /// counting statements into `countFile` when given (Postgres' wire protocol). A destination
    /// the bench can make unreachable and bring back: SIGKILL resets its open connections and
    /// refuses new ones, as a stopped server would, and a new one on the same port serves again.
    /// Returns once it listens.
    func startForwarder(port: Int, to host: String, _ target: Int, countFile: String? = nil) async throws -> Process {
        let proxy = Process()
        proxy.executableURL = URL(fileURLWithPath: ProcessInfo.processInfo.environment["OUTBOX_VENV"].map { $0 + "/bin/python" } ?? "/usr/bin/python3")
        proxy.arguments = ["scripts/pg-wire-proxy.py", String(port), host, String(target)] + (countFile.map { [$0] } ?? [])
        let output = Pipe()
        proxy.standardOutput = output
        try proxy.run()
        // "ready\n", or nothing when it exits; the whole line is read before the pipe closes, as
        // Python may write the newline on its own (and would die of a broken pipe).
        let reader = output.fileHandleForReading
        let said = await Task.detached {
            var said = Data()
            while !said.contains(UInt8(ascii: "\n")) {
                let more = reader.availableData
                if more.isEmpty { break }
                said += more
            }
            return said
        }.value
        try? reader.close()
        guard String(decoding: said, as: UTF8.self).hasPrefix("ready") else {
            kill(proxy.processIdentifier, SIGKILL)
            throw BenchError("scripts/pg-wire-proxy.py did not start listening on 127.0.0.1:\(port) (its error is above)")
        }
        return proxy
    }

    // MARK: Writers at a steady rate

    /// Runs `body` while `writers` sessions (each its own connection, synchronous_commit on, as
    /// writers run) commit one-event transactions, `rate` a second in all, until `body` returns.
    /// Paced by absolute time: commit k of all (writer k % writers) is due at start + k / rate,
    /// so a slow commit is made up by the next ones instead of delaying every later one, and a
    /// writer that is behind commits at once. `stop.check()` throws the first writer's error;
    /// `body` calls it as it waits, so a failing writer ends the scenario. Each commit's id and
    /// time (after COMMIT returned) go into `commits`.
    func withSteadyWriters<T>(
        _ url: String, writers: Int, rate: Int, commits: CommitLog,
        event: @escaping @Sendable (_ writer: Int, _ n: Int) -> OutboxEvent, _ body: (WriterStop) async throws -> T
    ) async throws -> T {
        var sessions: [PostgresConnection] = []
        for _ in 0..<writers {
            let db = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: logger)
            try await db.query("SET synchronous_commit = on")
            sessions.append(db)
        }
        let stop = WriterStop()
        let start = ContinuousClock.now
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for (w, db) in sessions.enumerated() {
                group.addTask {
                    var n = 0
                    do {
                        while true {
                            let due = start + .seconds(Double(n * writers + w) / Double(rate))
                            let end = stop.end
                            guard due < end, ContinuousClock.now < end else { break }
                            if due > .now { try await Task.sleep(until: due) }
                            let id = try await db.transaction { tx in try await OutboxWriter.enqueue(event(w, n), on: tx) }
                            await commits.record(id, Date())
                            n += 1
                        }
                    } catch {
                        stop.fail(BenchError("writer \(w) failed: \(error)"))
                    }
                }
            }
            let result: Result<T, any Error>
            do { result = .success(try await body(stop)) } catch { result = .failure(error) }
            stop.now()
            try await group.waitForAll()
            try stop.check()
            return try result.get()
        }
    }

    // MARK: CPU and memory

    /// A field of /proc/<pid>/status in kB (VmHWM: peak RSS).
    func proc(_ pid: Int32, _ field: String) -> Double {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
        return Double(line.split(separator: " ").dropFirst().first ?? "") ?? 0  // kB
    }

    /// CPU seconds so far (user + system) of a process, from /proc/<pid>/stat.
    func cpuSeconds(_ pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return 0 }
        let f = stat[stat.index(after: close)...].split(separator: " ")
        return ((Double(f[11]) ?? 0) + (Double(f[12]) ?? 0)) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// CPU seconds so far of a clock (CLOCK_PROCESS_CPUTIME_ID: this process; clock_getcpuclockid: another's).
    func cpuSeconds(clock: clockid_t) -> Double {
        var t = timespec()
        clock_gettime(clock, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// CPU seconds so far of every Postgres server process, by pid (backends come and go).
    func postgresCPU() -> [Int32: Double] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap(Int32.init) ?? []
        var cpu: [Int32: Double] = [:]
        for pid in pids where (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) == "postgres\n" {
            cpu[pid] = cpuSeconds(pid)
        }
        return cpu
    }

    /// CPU seconds of the Redis server so far, its forks (AOF rewrites) included.
    func redisCPU(_ redis: RedisConnection) async throws -> Double {
        let info = try await redis.command("INFO", "cpu").string ?? ""
        return info.split(whereSeparator: \.isNewline).reduce(0) { sum, line in
            let parts = line.split(separator: ":")
            let counted = ["used_cpu_sys", "used_cpu_user", "used_cpu_sys_children", "used_cpu_user_children"]
            return parts.count == 2 && counted.contains(String(parts[0])) ? sum + (Double(parts[1]) ?? 0) : sum
        }
    }

    // MARK: Formatting and percentiles

    func fmt(_ x: Double, _ digits: Int = 0) -> String { String(format: "%.\(digits)f", x) }

    func percentile(_ sorted: [Double], _ p: Double) -> Double {
        sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }

    /// "p50 / p99 / max (n=…)" of latencies in ms.
    func latencySummary(_ values: [Double]) -> String {
        let sorted = values.sorted()
        return "\(fmt(percentile(sorted, 0.5), 1)) / \(fmt(percentile(sorted, 0.99), 1)) / \(fmt(sorted.last ?? 0, 1)) (n=\(sorted.count))"
    }
}

/// The commit time of each event the bench's writers enqueued, by outbox id.
actor CommitLog {
    private(set) var times: [Int64: Date] = [:]
    /// Commits recorded so far (`take` does not lower it).
    private(set) var count = 0
    private(set) var maxID: Int64 = 0
    func record(_ id: Int64, _ at: Date) {
        times[id] = at
        count += 1
        maxID = max(maxID, id)
    }
    /// The commit times of `ids` (nil: not recorded, or taken already), forgotten once taken so a
    /// long run does not hold them all.
    func take(_ ids: [Int64]) -> [Date?] { ids.map { times.removeValue(forKey: $0) } }
}

/// When `Bench.withSteadyWriters`' writers stop, and the first error one of them met.
final class WriterStop: Sendable {
    private let state = Mutex<(end: ContinuousClock.Instant, failure: BenchError?)>((.now + .seconds(365 * 86_400), nil))
    var end: ContinuousClock.Instant { state.withLock { $0.end } }
    func now() { state.withLock { $0.end = min($0.end, .now) } }
    func fail(_ error: BenchError) {
        state.withLock {
            if $0.failure == nil { $0.failure = error }
            $0.end = min($0.end, .now)
        }
    }
    /// Throws the first writer's error.
    func check() throws { if let failure = state.withLock({ $0.failure }) { throw failure } }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
