import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport
@testable import Reconciler

/// `outbox-reconciler` as an operator runs it, against a fresh database and its own collection.
@Suite struct ReconcilerTests {
    /// A config file for one test: its database, its collection, the shared Redis and stand-in.
    func writeConfig(databaseURL: String, collection: String, extra: String = "") throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("reconciler-\(UUID().uuidString).yaml").path
        let yaml = """
            postgres: {url: "\(databaseURL)"}
            redis: {url: "\(try TestEnvironment.variable("OUTBOX_REDIS_URL"))"}
            qdrant:
              url: "\(try TestEnvironment.qdrantURL())"
              api_key: "\(try TestEnvironment.qdrantAPIKey())"
              collections:
                \(collection): {size: 384, distance: Cosine}
            schema: {directory: "\(TestEnvironment.schemaDirectory)"}
            relay: {backoff_max: 2s}
            reconciler:
              grace_period: 1s
              stuck_after: 10m
              stuck_attempts: 5
              page_size: 100
            \(extra)
            tables:
              extractions: {table: public.extractions, collection: \(collection)}
            """
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Runs `body` in a fresh database with a collection of 384-dimension vectors in the stand-in
    /// and a config file for both (`writeConfig`), `edit` applied to its text; removes both after.
    func withCollectionAndConfig(
        _ prefix: String, edit: (String) -> String = { $0 },
        _ body: (_ url: String, _ db: PostgresConnection, _ qdrant: QdrantCalls, _ collection: String, _ config: String) async throws -> Void
    ) async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let collection = TestEnvironment.uniqueName(prefix)
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 384, "distance": "Cosine"]]).status == 200)
            let config = try writeConfig(databaseURL: url, collection: collection)
            try edit(try String(contentsOfFile: config, encoding: .utf8)).write(toFile: config, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: config) }
            do {
                try await body(url, db, qdrant, collection, config)
            } catch {
                _ = try? await qdrant.call(.DELETE, "/collections/\(collection)")
                throw error
            }
            _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
        }
    }

    /// The environment overrides the config file, so the test's database goes there too.
    func reconcile(_ config: String, url: String, _ arguments: [String] = []) async throws
        -> (status: Int32, report: JSONValue, stderr: String)
    {
        let result = try await runProcess(
            try TestEnvironment.executable("outbox-reconciler"), ["reconcile", "--json", "--limit", "1000", "--config", config] + arguments,
            environment: ["OUTBOX_POSTGRES_URL": url])
        return (result.status, (try? JSONValue.parse(result.stdout)) ?? .null, result.stderr)
    }

    func ids(_ report: JSONValue, _ category: String) -> Set<String> {
        Set(report["tables"]?["extractions"]?[category]?["ids"]?.arrayValue?.compactMap(\.stringValue) ?? [])
    }

    func count(_ report: JSONValue, _ category: String) -> Int {
        Int(report["tables"]?["extractions"]?[category]?["count"]?.numberValue ?? -1)
    }

    @Test func seededMessIsFoundExactlyRepairedAndThenConsistent() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let collection = TestEnvironment.uniqueName("mess")
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 384, "distance": "Cosine"]]).status == 200)
            let config = try writeConfig(databaseURL: url, collection: collection)

            // 1,000 rows, an hour old: 928 healthy, 50 unembedded, 10 stuck, 5 dead, 7 missing points.
            let rows = (0..<1000).map { _ in UUID().uuidString.lowercased() }
            let healthy = Array(rows[0..<928]), unembedded = Array(rows[928..<978]), stuck = Array(rows[978..<988])
            let dead = Array(rows[988..<993]), missing = Array(rows[993..<1000])
            try await db.query(
                """
                INSERT INTO extractions (id, source_id, content, embedding_id, created_at)
                SELECT r::uuid, 'doc', 'text of ' || r, CASE WHEN r = ANY($2::text[]) THEN r::uuid END, now() - interval '1 hour'
                FROM unnest($1::text[]) AS r
                """, [.textArray(rows), .textArray(healthy + missing)])
            func upsert(_ id: String) -> String {
                #"{"collection": "\#(collection)", "id": "\#(id)", "text": "text of \#(id)", "source": {"table": "extractions", "id": "\#(id)"}}"#
            }
            for id in stuck {
                try await db.query(
                    """
                    INSERT INTO outbox.events (destination, operation, key, payload, created_at, attempts, last_error)
                    VALUES ('qdrant', 'upsert', $1, $2::jsonb, now() - interval '2 hours', 7, 'qdrant answered 503')
                    """, [.text(id), .jsonb(upsert(id))])
            }
            for (n, id) in dead.enumerated() {
                try await db.query(
                    """
                    INSERT INTO outbox.dead_letters (id, destination, operation, key, payload, created_at, attempts, error)
                    VALUES ($1, 'qdrant', 'upsert', $2, $3::jsonb, now() - interval '1 hour', 25, 'gave up after 25 attempts')
                    """, [.int(Int64(9_000_000 + n)), .text(id), .jsonb(upsert(id))])
            }
            let orphans = (0..<9).map { _ in UUID().uuidString.lowercased() }
            let vector: JSONValue = .array((0..<384).map { $0 == 0 ? 1 : 0 })
            for chunk in stride(from: 0, to: healthy.count + orphans.count, by: 200) {
                let ids = Array((healthy + orphans)[chunk..<min(chunk + 200, healthy.count + orphans.count)])
                let r = try await qdrant.call(.PUT, "/collections/\(collection)/points?wait=true", [
                    "points": .array(ids.map { ["id": .string($0), "vector": vector, "payload": [:]] }),
                ])
                #expect(r.status == 200)
            }
            let stuckEventIDs = Set(try await db.query("SELECT id::text AS id FROM outbox.events").rows.map { try $0.decode("id", as: String.self) })

            // Dry run: exactly the seeded drift, nothing changed, exit 1.
            let dry = try await reconcile(config, url: url, ["--dry-run"])
            #expect(dry.status == 1, "\(dry.stderr)")
            #expect(count(dry.report, "unembedded") == 50 && ids(dry.report, "unembedded") == Set(unembedded))
            #expect(count(dry.report, "stuck") == 10 && ids(dry.report, "stuck") == stuckEventIDs)
            #expect(count(dry.report, "dead") == 5 && ids(dry.report, "dead") == Set((0..<5).map { String(9_000_000 + $0) }))
            #expect(count(dry.report, "missing_point") == 7 && ids(dry.report, "missing_point") == Set(missing))
            #expect(count(dry.report, "orphan_point") == 9 && ids(dry.report, "orphan_point") == Set(orphans))
            #expect(try await db.count("outbox.events") == 10)
            #expect(try await db.query("SELECT count(embedding_id) AS n FROM extractions").first!.decode("n", as: Int.self) == 935)

            // Repair, twice: the second run enqueues nothing new.
            let repaired = try await reconcile(config, url: url)
            #expect(repaired.status == 1)
            let afterFirst = try await db.count("outbox.events")
            let upserts = try await db.count("outbox.events WHERE operation = 'upsert'")
            #expect(upserts == 10 + 50 + 7)  // the stuck ones, plus one per unembedded and per missing-point row
            let deleted = try await db.query(
                "SELECT i FROM outbox.events, jsonb_array_elements_text(payload -> 'ids') AS i WHERE operation = 'delete'")
            #expect(Set(try deleted.rows.map { try $0.decode("i", as: String.self) }) == Set(orphans))  // one delete per scroll page
            _ = try await reconcile(config, url: url)
            #expect(try await db.count("outbox.events") == afterFirst)

            // The relay drains; dead letters are requeued; then everything agrees.
            let relay = try DaemonProcess.relay(databaseURL: url, config: config)
            try await eventually("relay drains the repairs", timeout: .seconds(60)) {
                try await db.count("outbox.events") == 0
            }
            let requeue = try await reconcile(config, url: url, ["--requeue-dead"])
            #expect(requeue.status == 1)
            #expect(requeue.report["tables"]?["extractions"]?["dead"]?["repaired"] == 5)
            try await eventually("relay drains the requeued dead letters", timeout: .seconds(60)) {
                try await db.count("outbox.events") == 0
            }
            let final = try await reconcile(config, url: url)
            #expect(final.status == 0, "still drifting: \(final.report.jsonText)")
            #expect(final.report["consistent"] == true)
            let points = try await qdrant.call(.POST, "/collections/\(collection)/points/count", ["exact": true])
            #expect(points.json?["result"]?["count"] == 1000)
            _ = relay
            _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
        }
    }

    @Test func webhookGetsOneAlertPerTransitionAndAResolve() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let collection = TestEnvironment.uniqueName("alerts")
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 384, "distance": "Cosine"]]).status == 200)
            let port = try freePort()
            let record = FileManager.default.temporaryDirectory.appendingPathComponent("alerts-\(UUID().uuidString).jsonl").path
            let receiver = try await startHelper("webhook_receiver.py", [String(port), record])
            defer { kill(receiver.processIdentifier, SIGKILL) }
            let config = try writeConfig(databaseURL: url, collection: collection)
            // Repairs off, so the drift persists across scans; alerts to the webhook; a scan a second.
            try (try String(contentsOfFile: config, encoding: .utf8))
                .replacingOccurrences(of: "  page_size: 100", with: """
                      page_size: 100
                      repair: false
                      interval: 500ms
                      alert_webhook_url: http://127.0.0.1:\(port)/alerts
                      http: {port: \(try freePort())}
                    """)
                .write(toFile: config, atomically: true, encoding: .utf8)
            let daemon = Process()
            daemon.executableURL = try TestEnvironment.executable("outbox-reconciler")
            daemon.arguments = ["serve", "--config", config]
            daemon.standardError = FileHandle.nullDevice
            daemon.environment = ProcessInfo.processInfo.environment.merging(["OUTBOX_POSTGRES_URL": url]) { $1 }
            try daemon.run()
            defer { kill(daemon.processIdentifier, SIGKILL) }
            func alerts() -> [JSONValue] {
                ((try? String(contentsOfFile: record, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
            }

            try await Task.sleep(for: .seconds(2))  // several consistent scans: nothing to say
            #expect(alerts().isEmpty)
            try await db.query(
                "INSERT INTO extractions (source_id, content, created_at) SELECT 'doc', 'x' || g, now() - interval '1 hour' FROM generate_series(1, 3) g")
            try await eventually("firing alert", timeout: .seconds(30)) { !alerts().isEmpty }
            try await Task.sleep(for: .seconds(2))  // four more scans find the same drift
            #expect(alerts().count == 1, "\(alerts().map(\.jsonText))")
            #expect(alerts().first?["state"] == "firing")
            #expect(alerts().first?["category"] == "unembedded")
            #expect(alerts().first?["count"] == 3)
            #expect(alerts().first?["sample_ids"]?.arrayValue?.count == 3)

            try await db.query("DELETE FROM extractions")
            try await eventually("resolve notice", timeout: .seconds(10)) { alerts().count == 2 }
            try await Task.sleep(for: .seconds(2))
            #expect(alerts().count == 2)
            #expect(alerts().last?["state"] == "resolved")
            #expect(alerts().last?["category"] == "unembedded")

            // SIGTERM ends the daemon promptly (it must not wait out reconciler.interval).
            kill(daemon.processIdentifier, SIGTERM)
            try await eventually("reconciler exits after SIGTERM", timeout: .seconds(5)) { !daemon.isRunning }
            #expect(daemon.terminationStatus == 0)
            _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
        }
    }

    /// A firing alert whose webhook is down is kept, listed on `/status`, tried again with backoff,
    /// and delivered once the webhook is back. (Before: three attempts within the scan, then dropped;
    /// later scans found the same drift and sent nothing.)
    @Test func anAlertIsKeptUntilTheWebhookTakesIt() async throws {
        let port = try freePort()
        let record = FileManager.default.temporaryDirectory.appendingPathComponent("alerts-\(UUID().uuidString).jsonl").path
        let settings = """
              page_size: 100
              repair: false
              interval: 500ms
              alert_webhook_url: http://127.0.0.1:\(port)/alerts
            """
        try await withCollectionAndConfig("alerts", edit: { $0.replacingOccurrences(of: "  page_size: 100", with: settings) }) { url, db, _, _, config in
            let daemon = try DaemonProcess(
                executable: try TestEnvironment.executable("outbox-reconciler"), config: config, directory: TestEnvironment.repositoryRoot,
                port: try freePort(), environment: ["OUTBOX_POSTGRES_URL": url], logger: TestEnvironment.logger)
            func alerts() -> [JSONValue] {
                ((try? String(contentsOfFile: record, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
            }
            try await db.query(
                "INSERT INTO extractions (source_id, content, created_at) SELECT 'doc', 'x' || g, now() - interval '1 hour' FROM generate_series(1, 3) g")
            // Nothing listens on the webhook's port: the alert waits, and /status says so.
            try await eventually("the undelivered alert on /status", timeout: .seconds(15)) {
                let status = try JSONValue.parse(await daemon.get("/status")?.body ?? "{}")
                guard let pending = status["pending_alerts"]?.arrayValue, pending.count == 1 else { return false }
                return pending[0]["state"] == "firing" && pending[0]["channel"] == "webhook" && (pending[0]["attempts"]?.numberValue ?? 0) >= 2
            }
            let receiver = try await startHelper("webhook_receiver.py", [String(port), record])
            defer { kill(receiver.processIdentifier, SIGKILL) }
            try await eventually("the alert delivered once the webhook is back", timeout: .seconds(15)) { !alerts().isEmpty }
            try await Task.sleep(for: .seconds(2))
            #expect(alerts().count == 1, "\(alerts().map(\.jsonText))")
            #expect(alerts().first?["state"] == "firing")
            #expect(alerts().first?["count"] == 3)
            let status = try JSONValue.parse(await daemon.get("/status")?.body ?? "{}")
            #expect(status["pending_alerts"] == [], "\(status["pending_alerts"]?.jsonText ?? "")")
            expectEveryMetricHasHelp(await daemon.get("/metrics")?.body ?? "")
        }
    }

    /// A repair rebuilds the point's payload from the table's `payload_columns`, as the writer made
    /// it. (Before, a repaired point's payload came back as `{}`.)
    @Test func repairsCarryThePayloadColumns() async throws {
        try await withCollectionAndConfig("payload", edit: {
            $0.replacingOccurrences(of: "public.extractions, collection: ", with: "public.extractions, payload_columns: [source_id, created_at], collection: ")
        }) { url, db, _, _, config in
            // Two rows whose points are missing, one never embedded.
            try await db.query(
                """
                INSERT INTO extractions (id, source_id, content, embedding_id, created_at) VALUES
                  ('00000000-0000-4000-8000-000000000001', 'src-1', 'one', '00000000-0000-4000-8000-000000000001', '2026-01-02 03:04:05+00'),
                  ('00000000-0000-4000-8000-000000000002', 'src-2', 'two', '00000000-0000-4000-8000-000000000002', '2026-01-02 03:04:05+00'),
                  ('00000000-0000-4000-8000-000000000003', 'src-3', 'three', NULL, '2026-01-02 03:04:05+00')
                """)
            let repaired = try await reconcile(config, url: url)
            #expect(repaired.status == 1, "\(repaired.stderr)")
            #expect(count(repaired.report, "missing_point") == 2 && count(repaired.report, "unembedded") == 1, "\(repaired.report.jsonText)")
            let payloads = try await db.query("SELECT key, payload->'payload' AS p FROM outbox.events ORDER BY key").rows.map {
                (try $0.decode("key", as: String.self), try JSONValue.parse(try $0.decode("p", as: String.self)))
            }
            #expect(payloads.count == 3)
            for (key, payload) in payloads {
                #expect(payload["source_id"] == .string("src-" + String(key.suffix(1))), "\(key): \(payload.jsonText)")
                #expect(payload["created_at"]?.stringValue?.hasPrefix("2026-01-02T03:04:05") == true, "\(key): \(payload.jsonText)")
            }
            // A mistyped column name is refused at load, naming the key.
            try (try String(contentsOfFile: config, encoding: .utf8))
                .replacingOccurrences(of: "payload_columns: [source_id, created_at]", with: "payload_columns: [\"source id\"]")
                .write(toFile: config, atomically: true, encoding: .utf8)
            let refused = try await reconcile(config, url: url, ["--dry-run"])
            #expect(refused.status == 2)
            #expect(refused.stderr.hasPrefix("config: tables.extractions.payload_columns: invalid SQL identifier \"source id\""), "\(refused.stderr)")
        }
    }

    /// For a table that keeps its rows' vectors (`vector_column`), a repair sends the row's vector,
    /// not its text: the point comes back as the writer made it. A row without a vector falls back
    /// to its text; a column of another type is refused naming the key.
    @Test func repairsSendTheRowsOwnVectorFromTheVectorColumn() async throws {
        try await withCollectionAndConfig("vector", edit: {
            $0.replacingOccurrences(of: "public.extractions, collection: ", with: "public.extractions, vector_column: vec, collection: ")
        }) { url, db, qdrant, collection, config in
            try await db.query("ALTER TABLE extractions ADD COLUMN vec real[]")
            try await db.query(
                """
                INSERT INTO extractions (id, source_id, content, embedding_id, created_at, vec) VALUES
                  ('00000000-0000-4000-8000-000000000001', 'src-1', 'one', NULL, '2026-01-02 03:04:05+00',
                   (SELECT array_agg(g::real / 384) FROM generate_series(1, 384) g)),
                  ('00000000-0000-4000-8000-000000000002', 'src-2', 'two', NULL, '2026-01-02 03:04:05+00', NULL)
                """)
            let repaired = try await reconcile(config, url: url)
            #expect(repaired.status == 1, "\(repaired.stderr)")
            #expect(count(repaired.report, "unembedded") == 2, "\(repaired.report.jsonText)")
            let sent = try await db.query("SELECT key, payload ? 'vector' AS v, payload ? 'text' AS t FROM outbox.events ORDER BY key").rows.map {
                "\(try $0.decode("key", as: String.self).suffix(1)): vector \(try $0.decode("v", as: Bool.self)), text \(try $0.decode("t", as: Bool.self))"
            }
            #expect(sent == ["1: vector true, text false", "2: vector false, text true"])

            let relay = try DaemonProcess.relay(databaseURL: url, config: config)
            try await eventually("relay delivers the repairs", timeout: .seconds(60)) { try await db.count("outbox.events") == 0 }
            #expect(try await db.count("outbox.dead_letters") == 0)
            #expect(try await db.count("extractions WHERE embedding_id IS NULL") == 0)
            let point = try await qdrant.call(.POST, "/collections/\(collection)/points",
                                              ["ids": ["00000000-0000-4000-8000-000000000001"], "with_vector": true])
            let stored = point.json?["result"]?.arrayValue?.first?["vector"]?.arrayValue?.compactMap(\.numberValue) ?? []
            // The collection is Cosine: Qdrant keeps the vector normalised, so compare directions.
            let written = (1...384).map { Double($0) / 384 }
            let norm = sqrt(written.reduce(0) { $0 + $1 * $1 })
            #expect(stored.count == 384 && zip(stored, written).allSatisfy { abs($0 - $1 / norm) < 1e-5 }, "\(stored.prefix(4))")
            _ = relay

            try await db.query("ALTER TABLE extractions ALTER COLUMN vec TYPE text")
            let refused = try await reconcile(config, url: url, ["--dry-run"])
            #expect(refused.status == 2)
            #expect(refused.stderr.contains("tables.extractions.vector_column: public.extractions.vec is text; expected real[]"), "\(refused.stderr)")
        }
    }

    /// `--reembed-dead` replaces a dead upsert with one built from the row as it is now, which lands;
    /// `--requeue-dead` would resend the payload that died. (Before, requeueing was the only way.)
    @Test func reembedDeadRebuildsTheUpsertFromTheRow() async throws {
        try await withCollectionAndConfig("reembed") { url, db, _, collection, config in
            let row = UUID().uuidString.lowercased()
            try await db.query(
                "INSERT INTO extractions (id, source_id, content, created_at) VALUES ($1::uuid, 'doc', 'a sentence to embed', now() - interval '1 hour')",
                [.text(row)])
            try await db.query(
                """
                INSERT INTO outbox.dead_letters (id, destination, operation, key, payload, created_at, attempts, error)
                VALUES (9100000, 'qdrant', 'upsert', $1, $2::jsonb, now() - interval '1 hour', 1, 'qdrant answered 400: wrong vector size')
                """,
                [.text(row), .jsonb(#"{"collection": "\#(collection)", "id": "\#(row)", "vector": [1, 2, 3], "source": {"table": "extractions", "id": "\#(row)"}}"#)])
            let rebuilt = try await reconcile(config, url: url, ["--reembed-dead", "--category", "dead"])
            #expect(rebuilt.status == 1, "\(rebuilt.stderr)")
            #expect(rebuilt.report["tables"]?["extractions"]?["dead"]?["repaired"] == 1, "\(rebuilt.report.jsonText)")
            #expect(try await db.count("outbox.dead_letters") == 0)
            let payload = try JSONValue.parse(try await db.query("SELECT payload::text AS p FROM outbox.events").first!.decode("p", as: String.self))
            #expect(payload["text"] == "a sentence to embed" && payload["vector"] == nil, "\(payload.jsonText)")

            let relay = try DaemonProcess.relay(databaseURL: url, config: config)
            try await eventually("the rebuilt upsert lands", timeout: .seconds(30)) { try await db.count("outbox.events") == 0 }
            #expect(try await db.count("outbox.dead_letters") == 0)
            #expect(try await db.count("extractions WHERE embedding_id = id") == 1)
            let final = try await reconcile(config, url: url)
            #expect(final.status == 0, "still drifting: \(final.report.jsonText)")
            let both = try await reconcile(config, url: url, ["--reembed-dead", "--requeue-dead"])
            #expect(both.status == 64, "\(both.stderr)")
            _ = relay
        }
    }

    @Test func scanOf200000RowsRunsInBoundedMemory() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let collection = TestEnvironment.uniqueName("scan")
            let config = try writeConfig(databaseURL: url, collection: collection)
            try (try String(contentsOfFile: config, encoding: .utf8))
                .replacingOccurrences(of: "page_size: 100", with: "page_size: 5000")
                .write(toFile: config, atomically: true, encoding: .utf8)
            try await db.query(
                """
                INSERT INTO extractions (source_id, content, created_at)
                SELECT 'doc-' || (g % 1000), 'row ' || g, now() - interval '1 hour' FROM generate_series(1, 200000) g
                """)
            try await db.query("ANALYZE extractions")
            // Run through Python only to read the child's peak RSS (getrusage of its one child).
            let python = URL(fileURLWithPath: try TestEnvironment.variable("OUTBOX_VENV")).appendingPathComponent("bin/python")
            let measure = """
                import resource, subprocess, sys
                code = subprocess.run(sys.argv[1:]).returncode
                print("peak_rss_kb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
                sys.exit(code)
                """
            let started = ContinuousClock.now
            let result = try await runProcess(python, ["-c", measure, try TestEnvironment.executable("outbox-reconciler").path,
                                                       "reconcile", "--dry-run", "--json", "--category", "unembedded", "--config", config],
                                        environment: ["OUTBOX_POSTGRES_URL": url])
            let elapsed = ContinuousClock.now - started
            let peakKB = result.stderr.split(separator: "\n").last { $0.hasPrefix("peak_rss_kb") }
                .flatMap { Double($0.split(separator: " ").last ?? "") } ?? .infinity
            let report = try JSONValue.parse(result.stdout)
            #expect(result.status == 1)
            #expect(report["tables"]?["extractions"]?["unembedded"]?["count"] == 200_000)
            #expect(report["tables"]?["extractions"]?["unembedded"]?["ids"]?.arrayValue?.count == 20, "samples are capped")
            let rate = 200_000 / max(0.001, report["duration_seconds"]?.numberValue ?? elapsed.seconds)
            let peakMB = peakKB / 1024
            print("reconcile-scan: 200000 rows in \(report["duration_seconds"]?.numberValue ?? 0) s = \(Int(rate)) rows/s; peak RSS \(Int(peakMB)) MB")
            #expect(peakMB < 150, "peak RSS \(peakMB) MB")
        }
    }
}

extension ReconcilerTests {
    /// The shipped config, unchanged, on `scripts/services up`: repaired rows get embedded by the
    /// default (hashing) embedder and their collection is created when missing. Only the database
    /// is this test's own (through the environment, as an operator would override it).
    /// Note: resets the local stand-in's `extractions` collection (the demo's).
    @Test func shippedConfigRepairsEndToEndWithoutManualSetup() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            _ = try await qdrant.call(.DELETE, "/collections/extractions")
            let rows = (0..<5).map { _ in UUID().uuidString.lowercased() }
            try await db.query(
                "INSERT INTO extractions (id, source_id, content, created_at) SELECT r::uuid, 'doc', 'lost text ' || r, now() - interval '1 hour' FROM unnest($1::text[]) r",
                [.textArray(rows)])
            let shipped = "config/outbox.yaml"
            let first = try await reconcile(shipped, url: url)
            #expect(first.status == 1)
            #expect(ids(first.report, "unembedded") == Set(rows))
            let relay = try DaemonProcess.relay(databaseURL: url, config: shipped)
            try await eventually("repairs delivered", timeout: .seconds(30)) {
                try await db.query("SELECT count(embedding_id) AS n FROM extractions").first!.decode("n", as: Int.self) == 5
            }
            let lookup = try await qdrant.call(.POST, "/collections/extractions/points", ["ids": .array(rows.map(JSONValue.string)), "with_vector": true])
            let points = lookup.json?["result"]?.arrayValue ?? []
            #expect(points.count == 5)
            #expect(points.allSatisfy { $0["vector"]?.arrayValue?.count == 384 })
            let last = try await reconcile(shipped, url: url)
            #expect(last.status == 0, "\(last.report.jsonText)")
            _ = relay
            // Its rows vanish with the throwaway database; its points must not stay behind as orphans.
            let cleaned = try await qdrant.call(
                .POST, "/collections/extractions/points/delete?wait=true", ["points": .array(rows.map(JSONValue.string))])
            #expect(cleaned.status == 200)
        }
    }
}
