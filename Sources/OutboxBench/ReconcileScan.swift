import Foundation
import OutboxCore

extension Bench {
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
            _ = FileManager.default.createFile(atPath: out.path, contents: nil)
            process.standardOutput = try FileHandle(forWritingTo: out)
            process.standardError = FileHandle.nullDevice
            let started = ContinuousClock.now
            try process.run()
            var peak = 0.0
            while process.isRunning {
                peak = max(peak, proc(process.processIdentifier, "VmHWM"))
                try await Task.sleep(for: .milliseconds(20))
            }
            let elapsed = (ContinuousClock.now - started).seconds
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
