import Foundation
import OutboxCore

extension Bench {
    /// The reading side of WAL capture (issue 23): `events` logical messages (a `redis.xadd`
    /// event's JSON each) read from a logical slot by `PostgresReplicationConnection` and decoded
    /// (this process: its CPU is the reader's), against Postgres' own reader, `pg_recvlogical`,
    /// reading the same WAL from a second slot into /dev/null in the same run. Once with one event
    /// per transaction (three messages per event: begin, message, commit), once with 100.
    func walRead(events: Int) async throws -> [(String, String)] {
        try await withDatabase { url, db in
            guard let parts = URLParts(url) else { throw BenchError("cannot read the scratch database's URL") }
            let level = try await db.query("SHOW wal_level").first?.decode("wal_level", as: String.self)
            guard level == "logical" else { return [("wal read", "not run: wal_level is \(level ?? "?"), not logical (scripts/services up sets it)")] }
            let recvlogical = "/usr/lib/postgresql/15/bin/pg_recvlogical"
            try await db.query("CREATE PUBLICATION outbox_messages")
            let configuration = PostgresConfiguration(url: url)
            let setup = try await PostgresReplicationConnection.connect(configuration, logger: logger)
            for slot in ["bench_ours", "bench_reference"] { _ = try await setup.createSlotIfMissing(slot) }
            await setup.close()
            let payload = #"{"stream":"bench:events","fields":{"doc":"d-000001","status":"embedded","chars":"1234"}}"#

            var figures: [(String, String)] = [
                ("events", "\(events) logical messages of \(payload.utf8.count) bytes (prefix outbox), synchronous_commit off while writing"),
            ]
            for perTransaction in [1, 100] {
                try await db.query("SET synchronous_commit = off")
                try await db.query("""
                    DO $$ BEGIN FOR i IN 1..\(events) LOOP
                        PERFORM pg_logical_emit_message(true, 'outbox', '\(payload)');
                        IF i % \(perTransaction) = 0 THEN COMMIT; END IF;
                    END LOOP; END $$
                    """)
                let end = try await db.query("SELECT pg_current_wal_lsn()::text AS lsn").first?.decode("lsn", as: String.self) ?? "0/0"
                let shape = "\(perTransaction) event\(perTransaction == 1 ? "" : "s") per transaction"

                // Ours: read, decode, count the messages, confirm at the end.
                let reader = try await PostgresReplicationConnection.connect(configuration, logger: logger)
                try await reader.startReplication(slot: "bench_ours", publication: "outbox_messages", after: .zero)
                let cpu0 = cpuSeconds(clock: CLOCK_PROCESS_CPUTIME_ID)
                let started = ContinuousClock.now
                var seen = 0, last = LogSequenceNumber.zero
                while seen < events {
                    for frame in try await reader.read(timeout: .seconds(5), limit: 4096) {
                        guard case .walData(_, _, let message) = frame else { continue }
                        switch message {
                        case .message(_, _, "outbox", _): seen += 1
                        case .commit(_, let endLSN): last = endLSN
                        default: break
                        }
                    }
                    if ContinuousClock.now - started > .seconds(300) { throw BenchError("read \(seen) of \(events) messages in 300 s") }
                }
                let elapsed = (ContinuousClock.now - started).seconds
                let cpu = cpuSeconds(clock: CLOCK_PROCESS_CPUTIME_ID) - cpu0
                try await reader.confirm(last)
                await reader.close()
                figures.append(("\(shape): PostgresReplicationConnection",
                                "\(fmt(Double(events) / elapsed)) events/s (\(fmt(elapsed, 2)) s); reader CPU \(fmt(cpu / Double(events) * 1e6, 2)) µs/event"))

                // The reference: pg_recvlogical to the same end position.
                guard FileManager.default.isExecutableFile(atPath: recvlogical) else {
                    figures.append(("\(shape): pg_recvlogical", "not run: \(recvlogical) not found (Debian package postgresql-15)"))
                    continue
                }
                let log = FileManager.default.temporaryDirectory.appendingPathComponent("bench-recvlogical-\(getpid()).log").path
                defer { try? FileManager.default.removeItem(atPath: log) }
                var before = rusage(), after = rusage()
                getrusage(RUSAGE_CHILDREN.rawValue, &before)
                let referenceStart = ContinuousClock.now
                let status = try await runUnblocked(
                    recvlogical, ["-d", String(parts.path.dropFirst()), "--slot", "bench_reference", "--start", "--endpos", end, "--no-loop", "-f", "/dev/null",
                                  "-o", "proto_version=1", "-o", "publication_names=outbox_messages", "-o", "messages=true"],
                    environment: Pgbench.environment(parts, options: ""), stdout: "/dev/null", stderr: log,
                    deadline: .now + .seconds(300))
                let referenceElapsed = (ContinuousClock.now - referenceStart).seconds
                getrusage(RUSAGE_CHILDREN.rawValue, &after)
                func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
                let referenceCPU = seconds(after.ru_utime) + seconds(after.ru_stime) - seconds(before.ru_utime) - seconds(before.ru_stime)
                figures.append(("\(shape): pg_recvlogical (reference)",
                                status == 0
                                    ? "\(fmt(Double(events) / referenceElapsed)) events/s (\(fmt(referenceElapsed, 2)) s); its CPU \(fmt(referenceCPU / Double(events) * 1e6, 2)) µs/event"
                                    : "failed with status \(status): " + ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
                                        .trimmingCharacters(in: .whitespacesAndNewlines)))
            }
            return figures
        }
    }
}
