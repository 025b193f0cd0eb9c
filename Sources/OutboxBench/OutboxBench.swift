import ArgumentParser
import Foundation
import Logging
import OutboxCLI
import OutboxCore

/// `outbox-bench`: the relay and reconciler measured against the bounds of the same machine, in
/// the same run. Each scenario gets a fresh database; the relay runs as its own process (the
/// `outbox-relay` binary next to this one), as in production.
@main
struct OutboxBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-bench",
        abstract: "Benchmarks: relay and reconciler against the bounds of the same machine.",
        discussion: """
            Scenarios (default: all, in this order; name one or more to run only those):

            - drain-redis: --drain-events redis.xadd events over --keys keys (1,000), committed in one transaction once the \
            relay is up (its start-up is printed on its own); the relay's drain rate from that commit to its last \
            acknowledgement, against two bounds measured in the same run: a one-statement SQL drain of the same rows \
            (DELETE ... RETURNING, 1,000 per statement) and Redis' pipelined XADD (1,000 per pipeline).
            - drain-qdrant: preload --qdrant-events qdrant.upsert events with --vector-size vectors, one key each; the \
            relay's rate against the Qdrant stand-in ingesting the same points directly in the requests the relay \
            makes (a claim of relay.batch_size events, split at relay.qdrant_max_batch_bytes; PUT \
            /points?wait=true&ordering=strong, one request at a time).
            - idle: statements on the wire (scripts/pg-wire-proxy.py) and CPU seconds of an idle relay over --seconds.
            - memory: peak RSS (VmHWM) of the relay while it drains a --memory-events redis.set backlog over --keys keys.
            - writer-overhead: a domain-only insert transaction against the same transaction with a qdrant.upsert \
            event in the insert's round trip (OutboxWriter.write; synchronous_commit=off), p50 / p99 and CPU per \
            transaction of the writer and its Postgres backend, the two alternated on their own. Then, all taking \
            turns: the event in one statement with the insert (a CTE), in a round trip of its own, and yardsticks (a \
            second domain row, the event's values sent without a row, a bare outbox.events row). Then the reference: \
            the same transactions from libpq's own client (pgbench, all statements prepared), when pgbench is installed.
            - latency: writers commit at 1,000/s and 5,000/s for --seconds each; commit-to-delivered p50 / p90 / p99 / max.
            - reconcile-scan: outbox-reconciler reconcile (database-side categories) over --scan-rows rows, 1 % unembedded.

            Each scenario runs in a fresh database (created and dropped on the server of postgres.url); the relay \
            runs as its own process. Needs the local services (scripts/services up; eval "$(scripts/services env)") \
            and a release build (swift build -c release). Prints a table; --json writes the figures. Timings depend \
            on what else the machine runs: compare runs made back to back.
            """)

    @Argument(help: "Scenarios to run.")
    var scenarios: [String] = []

    @OptionGroup var options: GlobalOptions

    @Option(help: "Events preloaded for drain-redis.") var drainEvents = 200_000
    @Option(help: "Keys the drain-redis and memory backlogs are spread over (round robin).") var keys = 1000
    @Option(help: "qdrant.upsert events preloaded for drain-qdrant.") var qdrantEvents = 50_000
    @Option(help: "Vector dimensions for drain-qdrant.") var vectorSize = 384
    @Option(help: "Backlog for the memory scenario.") var memoryEvents = 1_000_000
    @Option(help: "Rows for reconcile-scan.") var scanRows = 1_000_000
    @Option(help: "Measured transactions per writer-overhead variant.") var writerTransactions = 5_000
    @Option(help: "Seconds per latency rate, and the idle window.") var seconds = 30
    @Option(help: "Write the figures as JSON to this file.") var json: String?
    @Option(help: ArgumentHelp("The outbox-relay binary to run (default: the one beside outbox-bench), e.g. another build for an A/B comparison.", valueName: "path"))
    var relay: String?
    @Option(help: ArgumentHelp("Log level of the relays the bench starts; trace logs every claim (keys, heads, where the next one starts).", valueName: "level"))
    var relayLogLevel = "warning"

    static let all = ["drain-redis", "drain-qdrant", "idle", "memory", "writer-overhead", "latency", "reconcile-scan"]

    func validate() throws {
        for s in scenarios where !Self.all.contains(s) {
            throw ValidationError("unknown scenario \(s); scenarios: \(Self.all.joined(separator: ", "))")
        }
    }

    func run() async throws {
        let logger = CommandSupport.bootstrapLogging(label: "outbox-bench")
        let config = await CommandSupport.loadConfiguration(path: options.config)
        let bench = Bench(
            config: config, configPath: options.config ?? "config/outbox.yaml", logger: logger, seconds: seconds,
            relayBinary: relay.map { URL(fileURLWithPath: $0) }, relayLogLevel: relayLogLevel, metricsHTTP: HTTPConnection(logger: logger))
        var results: [(String, [(String, String)])] = []
        for scenario in scenarios.isEmpty ? Self.all : scenarios {
            FileHandle.standardError.write(Data("== \(scenario)\n".utf8))
            let figures: [(String, String)]
            switch scenario {
            case "drain-redis": figures = try await bench.drainRedis(events: drainEvents, keys: keys)
            case "drain-qdrant": figures = try await bench.drainQdrant(events: qdrantEvents, dimensions: vectorSize)
            case "idle": figures = try await bench.idle()
            case "memory": figures = try await bench.memory(events: memoryEvents, keys: keys)
            case "writer-overhead": figures = try await bench.writerOverhead(transactions: writerTransactions)
            case "latency": figures = try await bench.latency()
            default: figures = try await bench.reconcileScan(rows: scanRows)
            }
            results.append((scenario, figures))
            let width = max(60, figures.map(\.0.count).max() ?? 0)
            for (name, value) in figures { print("\(scenario.padding(toLength: 16, withPad: " ", startingAt: 0)) \(name.padding(toLength: width, withPad: " ", startingAt: 0)) \(value)") }
        }
        if let json {
            let body: JSONValue = .object(Dictionary(uniqueKeysWithValues: results.map { scenario, figures in
                (scenario, JSONValue.object(Dictionary(uniqueKeysWithValues: figures.map { ($0.0, JSONValue.string($0.1)) })))
            }))
            try body.jsonText.write(toFile: json, atomically: true, encoding: .utf8)
        }
    }
}

struct Bench {
    let config: OutboxConfiguration
    let configPath: String
    let logger: Logger
    let seconds: Int
    let relayBinary: URL?
    let relayLogLevel: String
    /// Polls the relay's /readyz and /metrics (every 2–100 ms while it drains): one handle, not one per poll.
    /// A new connection per poll (a thread and a libcurl handle each) cost the bench 19 % of a
    /// core during drain-redis, taken from the processes it measures.
    let metricsHTTP: HTTPConnection

    var binDirectory: URL { URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent() }

    // MARK: Databases and processes

    func withDatabase<T>(_ body: (String, PostgresConnection) async throws -> T) async throws -> T {
        let admin = try await PostgresConnection.connect(config.postgres, logger: logger)
        let name = "bench_\(UUID().uuidString.prefix(8).lowercased())"
        try await admin.query("CREATE DATABASE \(name)")
        defer { Task { try? await admin.query("DROP DATABASE \(name) WITH (FORCE)") } }
        guard var parts = URLParts(config.postgres.url) else { throw BenchError("postgres.url must be a URL for the bench") }
        parts.path = "/" + name
        let password = config.postgres.password ?? parts.password ?? ""
        let url = "postgresql://\(parts.user ?? ""):\(password)@\(parts.host):\(parts.port ?? 5432)/\(name)"
        let db = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: logger)
        try await Migrator(directory: config.schemaDirectory, logger: logger).migrate(db)
        let result: Result<T, any Error>
        do { result = .success(try await body(url, db)) } catch { result = .failure(error) }
        do {
            try await removeDedupeKeys(db)
        } catch {
            FileHandle.standardError.write(Data("warning: could not remove the relay's Redis dedupe keys: \(error)\n".utf8))
        }
        await db.close()
        // An autovacuum worker in the database (after a bulk load) cannot be terminated by a
        // non-superuser: wait for it rather than lose the figures.
        for attempt in 1...20 {
            do {
                try await admin.query("DROP DATABASE \(name) WITH (FORCE)")
                break
            } catch {
                if attempt == 20 { FileHandle.standardError.write(Data("warning: could not drop database \(name): \(error)\n".utf8)) }
                try await Task.sleep(for: .seconds(1))
            }
        }
        return try result.get()
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

    func startRelay(_ url: String, port: Int, extra: [String: String] = [:]) throws -> Process {
        let process = Process()
        process.executableURL = relayBinary ?? binDirectory.appendingPathComponent("outbox-relay")
        process.arguments = ["serve", "--config", configPath]
        var env = ProcessInfo.processInfo.environment
        env["OUTBOX_POSTGRES_URL"] = url
        env["OUTBOX_RELAY_HTTP_PORT"] = String(port)
        env["OUTBOX_LOG_LEVEL"] = relayLogLevel
        for (k, v) in extra { env[k] = v }
        process.environment = env
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    func stop(_ process: Process) async {
        kill(process.processIdentifier, SIGTERM)
        while process.isRunning { try? await Task.sleep(for: .milliseconds(20)) }
    }

    /// Runs `body` with a relay started on `url`, and stops the relay when `body` returns or throws
    /// (a scenario that fails must not leave its relay running into the next one).
    func withRelay<T>(_ url: String, port: Int, _ body: (Process) async throws -> T) async throws -> T {
        let relay = try startRelay(url, port: port)
        let result: Result<T, any Error>
        do { result = .success(try await body(relay)) } catch { result = .failure(error) }
        await stop(relay)
        return try result.get()
    }

    /// Delivered events so far, from the relay's own /metrics (no load on Postgres).
    func delivered(port: Int) async -> Int { await counter("outbox_events_delivered_total", port: port) }

    /// The sum of the relay's /metrics samples whose line starts with `prefix`; -1 if it did not answer.
    func counter(_ prefix: String, port: Int) async -> Int {
        guard let r = try? await metricsHTTP.perform(HTTPRequest(method: .GET, url: "http://127.0.0.1:\(port)/metrics", timeout: .seconds(2)))
        else { return -1 }
        return r.bodyText.split(separator: "\n").filter { $0.hasPrefix(prefix) }
            .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0) { $0 + Int($1) }
    }

    /// Waits until the relay's /readyz answers 200 (connected to Postgres and Redis).
    func waitUntilReady(_ relay: Process, port: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let reply = try? await metricsHTTP.perform(HTTPRequest(method: .GET, url: "http://127.0.0.1:\(port)/readyz", timeout: .seconds(2)))
            if reply?.status == 200 { return }
            guard relay.isRunning else { throw BenchError("the relay exited during start-up (status \(relay.terminationStatus))") }
            guard ContinuousClock.now < deadline else { throw BenchError("the relay was not ready within 30 s") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    func proc(_ pid: Int32, _ field: String) -> Double {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
        return Double(line.split(separator: " ").dropFirst().first ?? "") ?? 0  // kB
    }

    func cpuSeconds(_ pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return 0 }
        let f = stat[stat.index(after: close)...].split(separator: " ")
        return ((Double(f[11]) ?? 0) + (Double(f[12]) ?? 0)) / Double(sysconf(Int32(_SC_CLK_TCK)))
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

    func preloadXAdd(_ db: PostgresConnection, events: Int, keys: Int, stream: String) async throws {
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

    func fmt(_ x: Double, _ digits: Int = 0) -> String { String(format: "%.\(digits)f", x) }

    func cpuSeconds(clock: clockid_t) -> Double {
        var t = timespec()
        clock_gettime(clock, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    func percentile(_ sorted: [Double], _ p: Double) -> Double {
        sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }

    // MARK: Scenarios

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
                    try await waitUntilReady(relay, port: port)
                    let startup = ContinuousClock.now - spawned
                    try await db.transaction { tx in try await preloadXAdd(tx, events: events, keys: keys, stream: stream) }
                    let (postgresBefore, redisBefore, relayBefore) = (postgresCPU(), try await redisCPU(redis), cpuSeconds(relay.processIdentifier))
                    let started = ContinuousClock.now
                    // The stream's length (cheap to ask) says when the last XADD landed; /metrics then
                    // when its acknowledgement committed.
                    while case .integer(let length) = try await redis.command("XLEN", stream), length < events {
                        guard relay.isRunning else { throw BenchError("the relay exited during drain-redis (status \(relay.terminationStatus))") }
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    while await delivered(port: port) < events { try await Task.sleep(for: .milliseconds(2)) }
                    let elapsed = (ContinuousClock.now - started).inSeconds
                    let postgres = postgresCPU().reduce(0) { $0 + $1.value - (postgresBefore[$1.key] ?? 0) }
                    let cpu = (cpuSeconds(relay.processIdentifier) - relayBefore, postgres, try await redisCPU(redis) - redisBefore)
                    let claims = (
                        await counter(#"outbox_relay_claims_total{destination="redis",result="events"}"#, port: port),
                        await counter(#"outbox_relay_claims_total{destination="redis",result="empty"}"#, port: port))
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
            return Double(events) / (ContinuousClock.now - started).inSeconds
        }
        // Bound 2: Redis' own pipelined XADD rate, 1,000 per pipeline.
        let started = ContinuousClock.now
        var sent = 0
        while sent < events {
            let n = min(1000, events - sent)
            _ = try await redis.pipeline((0..<n).map { RedisCommand("XADD", stream, "*", "seq", String(sent + $0), "outbox_id", String(sent + $0)) })
            sent += n
        }
        let xaddRate = Double(events) / (ContinuousClock.now - started).inSeconds
        try await redis.command("DEL", stream)
        return [
            ("relay events/s", fmt(relayRate)), ("sql drain bound events/s", fmt(sqlRate)),
            ("redis pipelined xadd events/s", fmt(xaddRate)), ("relay / sql bound", fmt(relayRate / sqlRate * 100, 1) + " %"),
            ("relay / xadd bound", fmt(relayRate / xaddRate * 100, 1) + " %"),
            ("relay start-up (process start to /readyz 200) ms", fmt(startup.inSeconds * 1000)),
            ("cpu per event: relay µs", fmt(cpu.relay / Double(events) * 1e6, 1)),
            ("cpu per event: postgres µs", fmt(cpu.postgres / Double(events) * 1e6, 1)),
            ("cpu per event: redis µs", fmt(cpu.redis / Double(events) * 1e6, 1)),
            ("relay claims: with events / empty", "\(claims.found) / \(claims.empty)"),
        ]
    }

    /// The relay's drain rate for `qdrant.upsert` events with vectors, against the stand-in's own
    /// ingest rate for the same points sent the way the relay sends them: the same point JSON, in
    /// requests of the same size (a claim's worth of events, capped at
    /// `relay.qdrant_max_batch_bytes`), `PUT /points?wait=true&ordering=strong`, one at a time.
    func drainQdrant(events: Int, dimensions: Int) async throws -> [(String, String)] {
        let qdrant = QdrantClient(configuration: config.qdrant, logger: logger)
        let suffix = UUID().uuidString.prefix(8).lowercased()
        let relayCollection = "bench_relay_\(suffix)", directCollection = "bench_direct_\(suffix)"
        for name in [relayCollection, directCollection] {
            let body: JSONValue = ["vectors": ["size": .number(Double(dimensions)), "distance": "Cosine"]]
            let reply = try await qdrant.call(.createCollection(name), body: body)
            guard reply.status == 200 else { throw BenchError("cannot create collection \(name): \(reply.status) \(reply.error ?? "")") }
        }
        let figures: Result<[(String, String)], any Error>
        do {
            figures = .success(try await drainQdrant(events: events, dimensions: dimensions, qdrant: qdrant,
                                                     relayCollection: relayCollection, directCollection: directCollection))
        } catch {
            figures = .failure(error)
        }
        for name in [relayCollection, directCollection] { _ = try? await qdrant.call(.deleteCollection(name)) }
        return try figures.get()
    }

    private func drainQdrant(
        events: Int, dimensions: Int, qdrant: QdrantClient, relayCollection: String, directCollection: String
    ) async throws -> [(String, String)] {
        try await withDatabase { url, db in
            // Preload: one key per point (the writer API's default), a small payload, a vector.
            var done = 0
            while done < events {
                let n = min(5_000, events - done)
                try await db.query(
                    """
                    SELECT count(outbox.enqueue('qdrant', 'upsert', g::text, jsonb_build_object(
                      'collection', $3::text, 'id', g, 'payload', jsonb_build_object('n', g),
                      'vector', (SELECT jsonb_agg(round(sin(g * 0.37 + i)::numeric, 6)) FROM generate_series(1, $4::int) i))))
                    FROM generate_series($1::int8, $1::int8 + $2 - 1) g
                    """, [.int(Int64(done + 1)), .int(Int64(n)), .text(relayCollection), .int(Int64(dimensions))])
                done += n
            }
            try await db.query("VACUUM ANALYZE outbox.events")

            // The relay's requests: a claim takes relay.batch_size keys (one event each here),
            // and its upserts go out as one request unless relay.qdrant_max_batch_bytes splits it.
            // The point JSON is the relay's: {"id","payload","vector"} without spaces.
            let claim = max(1, min(config.relay.batchSize, config.relay.batchEvents))
            var bodies: [[UInt8]] = []
            var lastID: Int64 = 0
            while true {
                let rows = try await db.query(
                    """
                    SELECT id, replace(jsonb_build_object('id', payload->'id', 'payload', coalesce(payload->'payload', '{}'::jsonb),
                                                          'vector', payload->'vector')::text, ' ', '') AS point
                    FROM outbox.events WHERE id > $1 ORDER BY id LIMIT $2
                    """, [.int(lastID), .int(Int64(claim))]).rows
                guard let last = rows.last else { break }
                lastID = try last.decode("id")
                var body: [UInt8] = []
                var size = 0
                for row in rows {
                    let point = Array(try row.decode("point", as: String.self).utf8)
                    if !body.isEmpty, size + point.count + 1 > config.relay.qdrantMaxBatchBytes {
                        bodies.append(Array("{\"points\":[".utf8) + body + Array("]}".utf8))
                        body = []
                        size = 0
                    }
                    if !body.isEmpty { body.append(UInt8(ascii: ",")) }
                    body += point
                    size += point.count + 1
                }
                bodies.append(Array("{\"points\":[".utf8) + body + Array("]}".utf8))
            }
            let bytes = bodies.reduce(0) { $0 + $1.count }
            let requests = bodies.count
            var started = ContinuousClock.now
            for body in bodies {
                let reply = try await qdrant.call(.upsertPoints(collection: directCollection), body: body)
                guard reply.status == 200, reply.updateStatus == "completed" else {
                    throw BenchError("direct ingest: \(reply.status) \(reply.updateStatus ?? "") \(reply.error ?? "")")
                }
            }
            let directRate = Double(events) / (ContinuousClock.now - started).inSeconds
            bodies = []

            let port = 18_474
            started = ContinuousClock.now
            let (peak, cpu, elapsed) = try await withRelay(url, port: port) { relay in
                var peak = 0.0
                var cpu = 0.0
                while await delivered(port: port) < events {
                    peak = max(peak, proc(relay.processIdentifier, "VmHWM"))
                    cpu = cpuSeconds(relay.processIdentifier)
                    try await Task.sleep(for: .milliseconds(50))
                }
                let elapsed = (ContinuousClock.now - started).inSeconds
                return (peak, max(cpu, cpuSeconds(relay.processIdentifier)), elapsed)
            }
            let relayRate = Double(events) / elapsed
            let count = try await qdrant.call(.countPoints(collection: relayCollection), body: ["exact": true])
            let landed = Int(count.result?["count"]?.numberValue ?? -1)
            return [
                ("events / dimensions", "\(events) / \(dimensions) (points in the relay's collection: \(landed))"),
                ("direct requests / points / KiB each", "\(requests) / \(fmt(Double(events) / Double(requests))) / \(fmt(Double(bytes) / Double(requests) / 1024))"),
                ("relay events/s", fmt(relayRate)), ("direct ingest events/s", fmt(directRate)),
                ("relay / direct", fmt(relayRate / directRate * 100, 1) + " %"),
                ("relay cpu s / peak RSS MB", "\(fmt(cpu, 1)) / \(fmt(peak / 1024, 1))"),
            ]
        }
    }

    func idle() async throws -> [(String, String)] {
        try await withDatabase { url, _ in
            // Count statements at the wire: scripts/pg-wire-proxy.py between the relay and Postgres.
            guard var parts = URLParts(url) else { return [] }
            let port = 18_480
            let countFile = FileManager.default.temporaryDirectory.appendingPathComponent("bench-statements").path
            let proxy = Process()
            proxy.executableURL = URL(fileURLWithPath: ProcessInfo.processInfo.environment["OUTBOX_VENV"].map { $0 + "/bin/python" } ?? "/usr/bin/python3")
            proxy.arguments = ["scripts/pg-wire-proxy.py", String(port), parts.host, String(parts.port ?? 5432), countFile]
            proxy.standardOutput = FileHandle.nullDevice
            try proxy.run()
            defer { kill(proxy.processIdentifier, SIGKILL) }
            try await Task.sleep(for: .milliseconds(500))
            parts.port = port
            func count() -> Int { Int((try? String(contentsOfFile: countFile, encoding: .utf8)) ?? "") ?? 0 }
            let (q0, c0, q1, c1) = try await withRelay(
                "postgresql://\(parts.user ?? ""):\(parts.password ?? "")@127.0.0.1:\(port)\(parts.path)", port: 18_471
            ) { relay in
                try await waitUntilReady(relay, port: 18_471)
                try await Task.sleep(for: .seconds(2))  // its first pass over the (empty) outbox done
                let (q0, c0) = (count(), cpuSeconds(relay.processIdentifier))
                try await Task.sleep(for: .seconds(seconds))
                return (q0, c0, count(), cpuSeconds(relay.processIdentifier))
            }
            return [
                ("window", "\(seconds) s at relay.poll_interval \(config.relay.pollInterval)"),
                ("statements", "\(q1 - q0) (\(fmt(Double(q1 - q0) / Double(seconds), 2))/s)"),
                ("cpu seconds", fmt(c1 - c0, 3) + " (\(fmt((c1 - c0) / Double(seconds) * 100, 3)) % of a core)"),
            ]
        }
    }

    func memory(events: Int, keys: Int) async throws -> [(String, String)] {
        try await withDatabase { url, db in
            var done = 0
            while done < events {
                let n = min(100_000, events - done)
                try await db.query(
                    """
                    SELECT count(outbox.enqueue('redis', 'set', 'k' || (g % $3), jsonb_build_object('key', 'bench:mem:' || (g % $3), 'value', g::text, 'ttl_seconds', 60)))
                    FROM generate_series($1::int8, $1::int8 + $2 - 1) g
                    """, [.int(Int64(done)), .int(Int64(n)), .int(Int64(keys))])
                done += n
            }
            let port = 18_472
            let started = ContinuousClock.now
            let (peak, elapsed) = try await withRelay(url, port: port) { relay in
                var peak = 0.0
                while await delivered(port: port) < events {
                    peak = max(peak, proc(relay.processIdentifier, "VmHWM"))
                    try await Task.sleep(for: .milliseconds(100))
                }
                peak = max(peak, proc(relay.processIdentifier, "VmHWM"))
                return (peak, (ContinuousClock.now - started).inSeconds)
            }
            return [("backlog", "\(events) redis.set events"), ("peak RSS (VmHWM)", fmt(peak / 1024, 1) + " MB"),
                    ("drain events/s", fmt(Double(events) / elapsed))]
        }
    }

    /// A writer's transaction (BEGIN, domain insert, COMMIT; synchronous_commit off) with and
    /// without a `qdrant.upsert` event, sent the ways a writer can send it. The variants take turns
    /// transaction by transaction, so a change in the machine's load hits them alike.
    func writerOverhead(transactions: Int) async throws -> [(String, String)] {
        try await withDatabase { url, db in
            try await db.query("SET synchronous_commit = off")
            let insert = "INSERT INTO extractions (id, source_id, content) VALUES ($1, 'doc', 'text')"
            @Sendable func event(_ id: UUID) -> OutboxEvent {
                .qdrantUpsert(collection: "c", id: .uuid(id), text: "text", source: ("extractions", id.uuidString.lowercased()))
            }
            let variants: [(name: String, run: @Sendable (PostgresConnection, UUID) async throws -> Void)] = [
                ("domain-only (insert)", { tx, id in try await tx.query(insert, [.uuid(id)]) }),
                ("+ event, same round trip (OutboxWriter.write)", { tx, id in
                    try await OutboxWriter.write((insert, [.uuid(id)]), enqueue: [event(id)], on: tx)
                }),
                ("+ event, one statement (CTE)", { tx, id in
                    let e = try event(id).enqueueStatement
                    try await tx.query(
                        """
                        WITH row AS (INSERT INTO extractions (id, source_id, content) VALUES ($6, 'doc', 'text') RETURNING id)
                        SELECT outbox.enqueue($1, $2, $3, $4::jsonb, $5::jsonb) AS id FROM row
                        """, e.parameters + [.uuid(id)])
                }),
                ("+ event, second round trip (enqueue)", { tx, id in
                    try await tx.query(insert, [.uuid(id)])
                    try await OutboxWriter.enqueue(event(id), on: tx)
                }),
                // Yardsticks: what any second row costs, what the event's values cost without a row,
                // and the outbox row without outbox.enqueue (prepared, as OutboxWriter prepares its
                // enqueue call). scripts/enqueue-profile splits the server's part further.
                ("ref: + 2nd domain row, same round trip", { tx, id in
                    _ = try await tx.pipeline([(insert, [.uuid(id)]), (insert, [.uuid(UUID())])])
                }),
                ("ref: + the event's values alone, same round trip", { tx, id in
                    let e = try event(id).enqueueStatement
                    _ = try await tx.pipeline([
                        PostgresStatement(insert, [.uuid(id)]),
                        PostgresStatement("SELECT $1::text, $2::text, $3::text, $4::jsonb, $5::jsonb", e.parameters, prepared: true),
                    ])
                }),
                ("ref: + bare outbox.events row, same round trip", { tx, id in
                    let e = try event(id).enqueueStatement
                    _ = try await tx.pipeline([
                        PostgresStatement(insert, [.uuid(id)]),
                        PostgresStatement(
                            "INSERT INTO outbox.events (destination, operation, key, payload, headers) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb) RETURNING id",
                            e.parameters, prepared: true),
                    ])
                }),
            ]
            // CPU time of this process (the writer) and of its Postgres backend, per variant.
            let backend = Int32(try await db.query("SELECT pg_backend_pid() AS pid").first!.decode("pid") as Int64)
            var backendClock = clockid_t()
            let serverCPU = clock_getcpuclockid(backend, &backendClock) == 0
            let warmup = transactions / 10
            func measure(_ variants: ArraySlice<(name: String, run: @Sendable (PostgresConnection, UUID) async throws -> Void)>)
                async throws -> [(String, String)]
            {
                var times = Array(repeating: [Double](), count: variants.count)
                var cpu = Array(repeating: (writer: 0.0, server: 0.0), count: variants.count)
                for i in 0..<(warmup + transactions) {
                    for (v, variant) in variants.enumerated() {
                        let started = ContinuousClock.now
                        let (writer0, server0) = (cpuSeconds(clock: CLOCK_PROCESS_CPUTIME_ID), serverCPU ? cpuSeconds(clock: backendClock) : 0)
                        try await db.transaction { tx in try await variant.run(tx, UUID()) }
                        if i >= warmup {
                            times[v].append((ContinuousClock.now - started).inSeconds * 1000)
                            cpu[v].writer += cpuSeconds(clock: CLOCK_PROCESS_CPUTIME_ID) - writer0
                            cpu[v].server += serverCPU ? cpuSeconds(clock: backendClock) - server0 : 0
                        }
                    }
                }
                let sorted = times.map { $0.sorted() }
                let base = percentile(sorted[0], 0.5)
                let perTransaction = { (seconds: Double) in fmt(seconds / Double(transactions) * 1e6, 1) }
                return zip(variants, sorted).enumerated().map { v, entry in
                    let p50 = percentile(entry.1, 0.5)
                    return (entry.0.name + " p50 / p99 ms", "\(fmt(p50, 3)) / \(fmt(percentile(entry.1, 0.99), 3))"
                        + (v == 0 ? "" : " (+\(fmt((p50 - base) / base * 100, 1)) % at p50)")
                        + "; CPU µs writer \(perTransaction(cpu[v].writer))" + (serverCPU ? ", server \(perTransaction(cpu[v].server))" : ""))
                }
            }
            // The scenario (domain-only against the same with the event) on its own, as a writer
            // runs its transaction again and again; then every shape and yardstick taking turns, for
            // comparison among them. Seven kinds of statement in turn share the backend's caches,
            // which adds to each (docs/PERFORMANCE.md, stop 15), so the two sets are not mixed.
            var figures = [("transactions per variant (after \(warmup) warm-up)", "\(transactions)")]
            figures += try await measure(variants.prefix(2))
            figures += try await measure(variants[...]).map { ("in turn: " + $0.0, $0.1) }
            figures += try await libpqReference(url, transactions: transactions)
            return figures
        }
    }

    /// The same transactions from libpq's own C client (pgbench, every statement prepared): what
    /// the server's part costs with no Swift in the way. The domain row's id is made by the server
    /// and the event's payload is the same text each time, so this is a lower bound.
    func libpqReference(_ url: String, transactions: Int) async throws -> [(String, String)] {
        let candidates = ["/usr/lib/postgresql/15/bin/pgbench"]
            + (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/pgbench" }
        guard let pgbench = candidates.first(where: FileManager.default.isExecutableFile(atPath:)), let parts = URLParts(url) else {
            return [("libpq reference (pgbench)", "not run: pgbench not found (Debian package postgresql-15)")]
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bench-pgbench-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let insert = "INSERT INTO extractions (id, source_id, content) VALUES (gen_random_uuid(), 'doc', 'text');"
        let second = [
            "SELECT outbox.enqueue('qdrant', 'upsert', :key, :payload::jsonb, '{}'::jsonb);",
            "INSERT INTO outbox.events (destination, operation, key, payload, headers) VALUES ('qdrant', 'upsert', :key, :payload::jsonb, '{}'::jsonb) RETURNING id;",
        ]
        let scripts = ["BEGIN;\n\(insert)\nCOMMIT;\n"] + second.map {
            "\\set key random(1, 1000000000000)\nBEGIN;\n\\startpipeline\n\(insert)\n\($0)\n\\endpipeline\nCOMMIT;\n"
        }
        let names = ["domain-only", "+ outbox.enqueue", "+ bare outbox.events row"]
        let id = UUID().uuidString.lowercased()
        let payload = #"{"collection":"c","id":"\#(id)","payload":{},"source":{"id":"\#(id)","table":"extractions"},"text":"text"}"#
        var latencies = Array(repeating: [Double](), count: scripts.count)
        // Rounds, the scripts taking turns, so a change in the machine's load hits them alike.
        let rounds = 10
        for round in 0..<rounds {
            for (v, script) in scripts.enumerated() {
                let file = directory.appendingPathComponent("\(v).sql")
                try script.write(to: file, atomically: true, encoding: .utf8)
                let process = Process()
                process.executableURL = URL(fileURLWithPath: pgbench)
                process.currentDirectoryURL = directory
                process.arguments = ["-n", "-M", "prepared", "-c", "1", "-t", String(transactions / rounds), "-f", file.path,
                                     "-D", "payload=\(payload)", "-l", "--log-prefix", "log\(v)-\(round)"]
                // The connection goes by environment, so no password is on a command line.
                var env = ProcessInfo.processInfo.environment
                env["PGHOST"] = parts.host
                env["PGPORT"] = String(parts.port ?? 5432)
                env["PGUSER"] = parts.user ?? ""
                env["PGPASSWORD"] = parts.password ?? ""
                env["PGDATABASE"] = String(parts.path.dropFirst())
                env["PGOPTIONS"] = "-c synchronous_commit=off"
                process.environment = env
                let errors = directory.appendingPathComponent("stderr")
                _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
                process.standardOutput = FileHandle.nullDevice
                process.standardError = try FileHandle(forWritingTo: errors)
                try process.run()
                while process.isRunning { try await Task.sleep(for: .milliseconds(10)) }
                guard process.terminationStatus == 0 else {
                    let message = (try? String(contentsOf: errors, encoding: .utf8))?.split(separator: "\n").last ?? ""
                    throw BenchError("pgbench exited with status \(process.terminationStatus): \(message)")
                }
                // Per transaction: client, transaction number, latency in µs, …
                for log in try FileManager.default.contentsOfDirectory(atPath: directory.path) where log.hasPrefix("log\(v)-\(round).") {
                    let text = try String(contentsOf: directory.appendingPathComponent(log), encoding: .utf8)
                    latencies[v] += text.split(separator: "\n").compactMap { line in
                        line.split(separator: " ").dropFirst(2).first.flatMap { Double($0) }.map { $0 / 1000 }
                    }
                }
            }
        }
        let p50s = latencies.map { percentile($0.sorted(), 0.5) }
        let base = p50s[0]
        return [("libpq reference (pgbench -M prepared) p50 ms", zip(names, p50s).enumerated().map { v, entry in
            "\(entry.0) \(fmt(entry.1, 3))" + (v == 0 ? "" : " (+\(fmt((entry.1 - base) / base * 100, 1)) %)")
        }.joined(separator: "; "))]
    }

    func latency() async throws -> [(String, String)] {
        var figures: [(String, String)] = []
        for rate in [1000, 5000] {
            let result: (String, String) = try await withDatabase { url, _ in
                let stream = "bench:lat:" + UUID().uuidString.prefix(8)
                let port = 18_473
                let commits = CommitLog()
                let total = try await withRelay(url, port: port) { relay in
                    try await waitUntilReady(relay, port: port)
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
                    while await delivered(port: port) < total { try await Task.sleep(for: .milliseconds(50)) }
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

    func reconcileScan(rows: Int) async throws -> [(String, String)] {
        try await withDatabase { url, db in
            try await db.query(
                """
                INSERT INTO extractions (source_id, content, created_at, embedding_id)
                SELECT 'doc', 'row ' || g, now() - interval '1 hour', CASE WHEN g % 100 = 0 THEN NULL ELSE gen_random_uuid() END
                FROM generate_series(1, $1::int) g
                """, [.int(Int64(rows))])
            try await db.query("ANALYZE extractions")
            let process = Process()
            process.executableURL = binDirectory.appendingPathComponent("outbox-reconciler")
            // DB-side categories: the missing_point lookup of 990,000 points would measure the stand-in.
            process.arguments = ["reconcile", "--dry-run", "--json", "--category", "unembedded", "--category", "stuck", "--category", "dead",
                                 "--config", configPath]
            process.environment = ProcessInfo.processInfo.environment.merging(["OUTBOX_POSTGRES_URL": url, "OUTBOX_RECONCILER_PAGE_SIZE": "10000"]) { $1 }
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("bench-reconcile.json")
            FileManager.default.createFile(atPath: out.path, contents: nil)
            process.standardOutput = try FileHandle(forWritingTo: out)
            process.standardError = FileHandle.nullDevice
            let started = ContinuousClock.now
            try process.run()
            var peak = 0.0
            while process.isRunning {
                peak = max(peak, proc(process.processIdentifier, "VmHWM"))
                try await Task.sleep(for: .milliseconds(20))
            }
            let elapsed = (ContinuousClock.now - started).inSeconds
            let report = try JSONValue.parse(String(contentsOf: out, encoding: .utf8))
            let found = report["tables"]?["extractions"]?["unembedded"]?["count"]?.numberValue ?? -1
            let scanSeconds = report["duration_seconds"]?.numberValue ?? elapsed
            return [
                ("rows / unembedded found", "\(rows) / \(Int(found))"),
                ("scan rows/s (rows of the table / scan time)", fmt(Double(rows) / scanSeconds)),
                ("process wall time s / peak RSS MB", "\(fmt(elapsed, 2)) / \(fmt(peak / 1024, 1))"),
            ]
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

actor CommitLog {
    private(set) var times: [Int64: Date] = [:]
    func record(_ id: Int64, _ at: Date) { times[id] = at }
    var count: Int { times.count }
}

extension Duration {
    var inSeconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}
