import Foundation
import OutboxCore

extension Bench {

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
                            times[v].append((ContinuousClock.now - started).seconds * 1000)
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
    private func libpqReference(_ url: String, transactions: Int) async throws -> [(String, String)] {
        guard let pgbench = Pgbench.path, let parts = URLParts(url) else {
            return [("libpq reference (pgbench)", Pgbench.notFound)]
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
                process.environment = Pgbench.environment(parts, options: "-c synchronous_commit=off")
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
}
