import Foundation
import OutboxCore

extension Bench {

    /// Concurrent writers' throughput (issue 20), measured with libpq's own client: pgbench, every
    /// statement prepared, synchronous_commit on (as users run their writers), at each of `clients`
    /// for seven transactions: the domain insert alone and with one event, a bare `outbox.events` row
    /// against `outbox.enqueue` alone, ten events in one transaction (keys random over 1,000)
    /// against ten bare rows with the same keys, and the domain insert with the event as a logical
    /// WAL message (`pg_logical_emit_message`, what WAL capture writes instead of a row; issue 23).
    /// No relay runs: the figures are the writers' side.
    ///
    /// In `rounds` rounds every (transaction, clients) cell runs `seconds` in turn, so a change in
    /// the machine's load hits every cell alike; a cell's tps is the median over rounds, its latency
    /// percentiles are over all its rounds' transactions (pgbench's per-transaction log, `-l`).
    /// `--max-tries 1 --failures-detailed`: a deadlock or serialization failure is counted as a failed
    /// transaction (as the application would see it: an error), not retried and not an aborted run.
    func writerThroughput(seconds: Int, rounds: Int, clients: [Int]) async throws -> [(String, String)] {
        guard let pgbench = Pgbench.path else { return [("writer throughput (pgbench)", Pgbench.notFound)] }
        return try await withDatabase { url, db in
            guard let parts = URLParts(url) else { throw BenchError("cannot read the scratch database's URL") }
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bench-writer-throughput-\(getpid())")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }

            let transactions = Self.writerThroughputScripts
            for (t, transaction) in transactions.enumerated() {
                try transaction.script.write(to: directory.appendingPathComponent("t\(t).sql"), atomically: true, encoding: .utf8)
            }
            var environment = Pgbench.environment(parts, options: "-c synchronous_commit=on")
            environment["PGAPPNAME"] = "outbox-bench writer-throughput"

            // What is measured: the schema this checkout migrated, and whether outbox.enqueue
            // notifies in every call (a NOTIFY serialises commits: issue 20).
            let newest = try await db.query("SELECT name FROM outbox.schema_migrations ORDER BY version DESC LIMIT 1").first?.decode("name", as: String.self) ?? "?"
            let body = try await db.query(
                "SELECT pg_get_functiondef('outbox.enqueue(text, text, text, jsonb, jsonb)'::regprocedure) AS body").first?.decode("body", as: String.self) ?? ""
            let version = try await pgbenchVersion(pgbench)

            var cells: [Cell] = []
            for n in clients { for t in transactions.indices { cells.append(Cell(transaction: t, clients: n)) } }
            for round in 0..<rounds {
                for c in cells.indices {
                    // Each cell starts from empty tables: one cell's rows do not slow the next.
                    try await db.query("TRUNCATE outbox.events, extractions")
                    let name = "\(transactions[cells[c].transaction].name), \(cells[c].clients) client\(cells[c].clients == 1 ? "" : "s")"
                    FileHandle.standardError.write(Data("round \(round + 1)/\(rounds): \(name)\n".utf8))
                    let (run, latencies) = try await runPgbench(
                        pgbench, script: directory.appendingPathComponent("t\(cells[c].transaction).sql"), clients: cells[c].clients,
                        seconds: seconds, directory: directory, environment: environment)
                    cells[c].rounds.append(run)
                    cells[c].latencies += latencies
                }
            }
            try await db.query("TRUNCATE outbox.events, extractions")

            func cell(_ t: Int, _ n: Int) -> Cell? { cells.first { $0.transaction == t && $0.clients == n } }
            func percent(_ x: Double) -> String { "\(fmt(x * 100, 1)) %" }
            /// A over B: of the medians, and round by round (both ran in the same round, close in time).
            func ratio(_ a: Int, _ b: Int, _ n: Int) -> String {
                guard let a = cell(a, n), let b = cell(b, n), b.medianTPS > 0 else { return "n/a" }
                let perRound = zip(a.rounds, b.rounds).map { $1.tps > 0 ? percent($0.tps / $1.tps) : "n/a" }
                return "\(percent(a.medianTPS / b.medianTPS)) (rounds: \(perRound.joined(separator: ", ")))"
            }

            var figures: [(String, String)] = [
                ("relay", "none running: the figures are the writers' side alone"),
                ("pgbench", "\(version), -M prepared, -j 1, --max-tries 1 --failures-detailed, synchronous_commit on; "
                    + "\(seconds) s per cell, \(rounds) round\(rounds == 1 ? "" : "s") of every cell in turn; "
                    + "outbox.events and extractions truncated before each cell"),
                ("schema", "newest migration \(newest); outbox.enqueue \(Self.notifyDescription(body))"),
            ]
            for c in cells {
                let failed = c.rounds.reduce(0) { $0 + $1.failed }
                let processed = c.rounds.reduce(0) { $0 + $1.processed }
                let deadlocks = c.rounds.reduce(0) { $0 + $1.deadlocks }
                let serialization = c.rounds.reduce(0) { $0 + $1.serialization }
                let sorted = c.latencies.sorted()
                var value = "tps \(fmt(c.medianTPS)) (rounds: \(c.rounds.map { fmt($0.tps) }.joined(separator: ", "))); "
                    + "p50 / p99 ms \(fmt(percentile(sorted, 0.5), 2)) / \(fmt(percentile(sorted, 0.99), 2)); "
                    + "failed \(failed) of \(failed + processed) (\(fmt(Double(failed) / Double(max(1, failed + processed)) * 100, 3)) %; "
                    + "deadlock \(deadlocks), serialization \(serialization))"
                let aborted = c.rounds.compactMap(\.aborted)
                if !aborted.isEmpty { value += "; ABORTED: " + aborted.joined(separator: " | ") }
                figures.append(("\(c.transaction + 1). \(transactions[c.transaction].name), \(c.clients) cl.", value))
            }
            // The ratios issue 20's targets name (and the event's cost on the domain transaction).
            for n in clients where n > 1 {
                figures.append(("enqueue tps / bare row tps, \(n) clients (target >= 80 %)", ratio(3, 2, n)))
            }
            for n in clients {
                figures.append(("10-key tps / ten bare rows' tps, \(n) cl. (target >= 80 %)", ratio(4, 5, n)))
            }
            for n in clients {
                guard let c = cell(4, n) else { continue }
                let failed = c.rounds.reduce(0) { $0 + $1.failed }, total = failed + c.rounds.reduce(0) { $0 + $1.processed }
                figures.append(("10-key failed transactions, \(n) cl. (target 0)",
                                "\(failed) of \(total) (\(fmt(Double(failed) / Double(max(1, total)) * 100, 3)) %; "
                                    + "rounds: \(c.rounds.map { "\($0.failed)" }.joined(separator: ", ")))"))
            }
            for n in clients {
                figures.append(("domain insert + event tps / domain insert alone, \(n) cl.", ratio(1, 0, n)))
            }
            for n in clients {
                figures.append(("domain insert + WAL message tps / domain insert alone, \(n) cl. (issue 23: >= 90 %)", ratio(6, 0, n)))
            }
            return figures
        }
    }

    /// One (transaction, clients) cell: each round's pgbench figures, and every successful
    /// transaction's latency (ms) over all rounds.
    private struct Cell {
        let transaction: Int
        let clients: Int
        var rounds: [PgbenchRun] = []
        var latencies: [Double] = []
        var medianTPS: Double {
            let tps = rounds.map(\.tps).sorted()
            guard !tps.isEmpty else { return 0 }
            return tps.count % 2 == 1 ? tps[tps.count / 2] : (tps[tps.count / 2 - 1] + tps[tps.count / 2]) / 2
        }
    }

    private struct PgbenchRun {
        var tps = 0.0
        var processed = 0
        var failed = 0
        var deadlocks = 0
        var serialization = 0
        /// Why pgbench ended early (a client aborted on an error that is not a deadlock or a
        /// serialization failure), nil when it ran its time.
        var aborted: String?
    }

    /// The seven transactions (pgbench scripts). Every event is a `redis.xadd` with the same payload
    /// (`:payload`, defined with -D, sent as a parameter as a writer sends it); keys are random.
    private static let writerThroughputScripts: [(name: String, script: String)] = {
        let insert = "INSERT INTO extractions (id, source_id, content) VALUES (gen_random_uuid(), 'doc', 'text');"
        func enqueue(_ key: String) -> String { "SELECT outbox.enqueue('redis', 'xadd', :\(key), :payload::jsonb, '{}'::jsonb);" }
        func bare(_ key: String) -> String {
            "INSERT INTO outbox.events (destination, operation, key, payload, headers) VALUES ('redis', 'xadd', :\(key), :payload::jsonb, '{}'::jsonb);"
        }
        let key = "\\set key random(1, 1000000000)\n"
        let keys = (1...10).map { "\\set k\($0) random(1, 1000)\n" }.joined()
        return [
            ("domain insert alone", "BEGIN;\n\(insert)\nCOMMIT;\n"),
            ("domain insert + enqueue", "\(key)BEGIN;\n\(insert)\n\(enqueue("key"))\nCOMMIT;\n"),
            ("bare outbox.events row", "\(key)BEGIN;\n\(bare("key"))\nCOMMIT;\n"),
            ("outbox.enqueue alone", "\(key)BEGIN;\n\(enqueue("key"))\nCOMMIT;\n"),
            ("10-key: 10 x enqueue, keys of 1,000", "\(keys)BEGIN;\n\((1...10).map { enqueue("k\($0)") }.joined(separator: "\n"))\nCOMMIT;\n"),
            ("ten bare rows, same keys", "\(keys)BEGIN;\n\((1...10).map { bare("k\($0)") }.joined(separator: "\n"))\nCOMMIT;\n"),
            // WAL capture (issue 23) carries the event in the transaction's WAL instead of a row:
            // its floor, before validation and the event's envelope are added.
            ("domain insert + WAL message", "BEGIN;\n\(insert)\nSELECT pg_logical_emit_message(true, 'outbox', :payload);\nCOMMIT;\n"),
        ]
    }()

    /// Whether the body of outbox.enqueue calls pg_notify, and if so whether in every call (not
    /// inside an IF or CASE of the body): read from the function's definition in the database.
    private static func notifyDescription(_ body: String) -> String {
        let lines = body.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces).uppercased() }
        guard let at = lines.firstIndex(where: { $0.contains("PG_NOTIFY") }) else {
            return "does not call pg_notify in its own body"
        }
        var depth = 0
        for line in lines[..<at] {
            if line.hasPrefix("END IF") || line.hasPrefix("END CASE") {
                depth -= 1
            } else if line.hasPrefix("IF ") || line.hasPrefix("CASE") {
                depth += 1
            }
        }
        return depth > 0 ? "calls pg_notify inside a condition (not in every call)" : "calls pg_notify in every call (unconditionally)"
    }

    /// Runs `executable` to its end and returns its exit status (128 + the signal if one ended it).
    /// Not with Foundation's `Process`: its children inherit this process' blocked signals, SIGALRM
    /// among them, and pgbench ends a `-T` run on SIGALRM; a run of 3 s went on for 10 minutes. So
    /// posix_spawn with an empty signal mask and default handlers. Killed (SIGKILL) past `deadline`
    /// or when the task is cancelled.
    func runUnblocked(
        _ executable: String, _ arguments: [String], environment: [String: String], stdout: String, stderr: String,
        deadline: ContinuousClock.Instant
    ) async throws -> Int32 {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGALRM, SIGTERM, SIGINT, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid = pid_t()
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard spawned == 0 else { throw BenchError("could not start \(executable): \(String(cString: strerror(spawned)))") }
        var status: Int32 = 0
        while true {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { break }
            if done < 0 && errno != EINTR { throw BenchError("waitpid(\(executable)): \(String(cString: strerror(errno)))") }
            if ContinuousClock.now > deadline || Task.isCancelled {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                throw BenchError("\(executable) did not finish in time; killed")
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    private func pgbenchVersion(_ pgbench: String) async throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: pgbench)
        process.arguments = ["--version"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// One pgbench run of `script` for `seconds` with `clients` clients; its summary, and the
    /// latencies of its successful transactions (ms).
    private func runPgbench(
        _ pgbench: String, script: URL, clients: Int, seconds: Int, directory: URL, environment: [String: String]
    ) async throws -> (PgbenchRun, [Double]) {
        let payload = #"{"stream":"bench","fields":{"kind":"extraction","text":"text"}}"#
        let prefix = "log-\(UUID().uuidString.prefix(8))"
        let arguments = ["-n", "-M", "prepared", "-c", String(clients), "-j", "1", "-T", String(seconds), "-f", script.path,
                         "-D", "payload=\(payload)", "--max-tries", "1", "--failures-detailed",
                         "-l", "--log-prefix", directory.appendingPathComponent(prefix).path]
        let out = directory.appendingPathComponent("stdout"), errors = directory.appendingPathComponent("stderr")
        let status = try await runUnblocked(pgbench, arguments, environment: environment, stdout: out.path, stderr: errors.path,
                                            deadline: .now + .seconds(seconds + 120))
        let stdout = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        let stderr = (try? String(contentsOf: errors, encoding: .utf8)) ?? ""

        // "tps = 1234.5 (without initial connection time)", "number of failed transactions: 3 (0.1%)", ...
        func number(after label: String) -> Double? {
            guard let line = stdout.split(separator: "\n").first(where: { $0.hasPrefix(label) }) else { return nil }
            return Double(line.dropFirst(label.count).trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "")
        }
        guard let tps = number(after: "tps =") else {
            let message = stderr.split(separator: "\n").last.map(String.init) ?? ""
            throw BenchError("pgbench exited with status \(status) and no figures: \(message)")
        }
        var run = PgbenchRun(tps: tps)
        run.processed = Int(number(after: "number of transactions actually processed:") ?? 0)
        run.failed = Int(number(after: "number of failed transactions:") ?? 0)
        run.deadlocks = Int(number(after: "number of deadlock failures:") ?? 0)
        run.serialization = Int(number(after: "number of serialization failures:") ?? 0)
        if status != 0 {
            // A client aborted (an error other than a deadlock or serialization failure): its
            // figures are partial. The first error names the cause.
            let first = stderr.split(separator: "\n").first { $0.contains("error") || $0.contains("ERROR") || $0.contains("aborted") }
            run.aborted = "pgbench status \(status): \(first.map(String.init) ?? "")"
        }
        var latencies: [Double] = []
        // Per transaction: client, transaction number, latency in µs (or "failed", "deadlock",
        // "serialization"), script, epoch seconds, µs.
        for log in try FileManager.default.contentsOfDirectory(atPath: directory.path) where log.hasPrefix(prefix + ".") {
            let file = directory.appendingPathComponent(log)
            let text = try String(contentsOf: file, encoding: .utf8)
            latencies += text.split(separator: "\n").compactMap { line in
                line.split(separator: " ").dropFirst(2).first.flatMap { Double($0) }.map { $0 / 1000 }
            }
            try? FileManager.default.removeItem(at: file)
        }
        return (run, latencies)
    }
}
