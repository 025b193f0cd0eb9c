import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

extension DaemonProcess {
    /// `outbox-relay serve` on `databaseURL`, as an operator runs it, with a short backoff ceiling.
    static func relay(databaseURL: String, environment: [String: String] = [:], config: String = "config/outbox.yaml") throws
        -> DaemonProcess
    {
        let settings = [
            "OUTBOX_POSTGRES_URL": databaseURL, "OUTBOX_RELAY_BACKOFF_MAX": "3s", "OUTBOX_RELAY_SHUTDOWN_GRACE": "10s",
            "OUTBOX_LOG_LEVEL": "info",
        ]
        return try DaemonProcess(
            executable: try TestEnvironment.executable("outbox-relay"), config: config, directory: TestEnvironment.repositoryRoot,
            port: try freePort(), environment: settings.merging(environment) { $1 }, logger: TestEnvironment.logger)
    }

    /// `outbox-reconciler serve` on `databaseURL`, scanning every second without repairs.
    static func reconciler(databaseURL: String, environment: [String: String] = [:]) throws -> DaemonProcess {
        let settings = ["OUTBOX_POSTGRES_URL": databaseURL, "OUTBOX_RECONCILER_INTERVAL": "1s", "OUTBOX_RECONCILER_REPAIR": "false"]
        return try DaemonProcess(
            executable: try TestEnvironment.executable("outbox-reconciler"), config: "config/outbox.yaml",
            directory: TestEnvironment.repositoryRoot, port: try freePort(), environment: settings.merging(environment) { $1 },
            logger: TestEnvironment.logger)
    }
}

/// Polls `condition` every 100 ms until it holds; records a failure naming `what` on timeout.
func eventually(_ what: @autoclosure () -> String, timeout: Duration, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(100))
    }
    if try await condition() { return }
    Issue.record("timed out after \(timeout) waiting for \(what())")
    throw CancellationError()
}

/// The workload of the relay tests: extraction rows written with a `qdrant.upsert` (with
/// `source`) and a `redis.xadd` carrying a per-key sequence number, in one transaction per row.
struct DrainScenario {
    let keys: Int
    let rowsPerKey: Int
    let collection = TestEnvironment.uniqueName("relay")
    let stream = "stream:" + TestEnvironment.uniqueName("relay")

    var eventCount: Int { keys * rowsPerKey * 2 }

    /// Creates the collection (384 dims: the relay embeds the text) and writes every row.
    func seed(_ db: PostgresConnection, qdrant: QdrantCalls) async throws {
        let created = try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 384, "distance": "Cosine"]])
        #expect(created.status == 200)
        // Row n of every key, then row n+1: each key's events interleave with the others'.
        try await db.query(
            """
            DO $$
            DECLARE r uuid;
            BEGIN
              FOR n IN 1..\(rowsPerKey) LOOP
                FOR k IN 1..\(keys) LOOP
                  r := gen_random_uuid();
                  INSERT INTO extractions (id, source_id, content) VALUES (r, 'doc-' || k, 'document ' || k || ' line ' || n);
                  PERFORM outbox.enqueue('qdrant', 'upsert', 'doc-' || k, jsonb_build_object(
                    'collection', '\(collection)', 'id', r::text, 'text', 'document ' || k || ' line ' || n,
                    'payload', jsonb_build_object('doc', 'doc-' || k),
                    'source', jsonb_build_object('table', 'extractions', 'id', r::text)));
                  PERFORM outbox.enqueue('redis', 'xadd', 'doc-' || k, jsonb_build_object(
                    'stream', '\(stream)', 'fields', jsonb_build_object('doc', 'doc-' || k, 'seq', n::text)));
                END LOOP;
              END LOOP;
            END $$
            """)
    }

    func pending(_ db: PostgresConnection) async throws -> Int {
        try await db.count("outbox.events")
    }

    /// The end state every relay test demands: nothing pending, nothing dead, every row's
    /// embedding_id = its point id, the collection holds exactly those points, the stream holds
    /// exactly one entry per xadd event and per key the sequence numbers are in order.
    func verify(_ db: PostgresConnection, qdrant: QdrantCalls) async throws {
        #expect(try await pending(db) == 0)
        let dead = try await db.query("SELECT count(*) AS n, max(error) AS e FROM outbox.dead_letters").first!
        #expect(try dead.decode("n", as: Int.self) == 0, "dead letters: \(dead["e"])")

        let rows = try await db.query("SELECT id, embedding_id FROM extractions")
        #expect(rows.rows.count == keys * rowsPerKey)
        let rowIDs = Set(try rows.rows.map { try $0.decode("id", as: UUID.self).uuidString.lowercased() })
        let unembedded = try rows.rows.filter { try $0.decode("embedding_id", as: UUID?.self) != $0.decode("id", as: UUID.self) }
        #expect(unembedded.isEmpty, "\(unembedded.count) rows without embedding_id = id")

        var points: [String] = []
        var offset: JSONValue = .null
        repeat {
            var body: [String: JSONValue] = ["limit": 1000, "with_payload": false, "with_vector": false]
            if offset != .null { body["offset"] = offset }
            let page = try await qdrant.call(.POST, "/collections/\(collection)/points/scroll", .object(body))
            #expect(page.status == 200)
            points += page.json?["result"]?["points"]?.arrayValue?.compactMap { $0["id"]?.stringValue } ?? []
            offset = page.json?["result"]?["next_page_offset"] ?? .null
        } while offset != .null
        #expect(points.count == rowIDs.count)
        #expect(Set(points) == rowIDs)

        let redis = try await TestEnvironment.redis()
        let entries = try await redis.command("XRANGE", stream, "-", "+").array ?? []
        #expect(entries.count == keys * rowsPerKey, "stream entries: \(entries.count)")
        var outboxIDs = Set<String>()
        var lastSeq: [String: Int] = [:]
        var outOfOrder = 0
        for entry in entries {
            let fields = entry.array?[1].array?.compactMap(\.string) ?? []
            var map: [String: String] = [:]
            for i in stride(from: 0, to: fields.count - 1, by: 2) { map[fields[i]] = fields[i + 1] }
            if let id = map["outbox_id"] { outboxIDs.insert(id) }
            let doc = map["doc"] ?? "", seq = Int(map["seq"] ?? "") ?? 0
            if seq != (lastSeq[doc] ?? 0) + 1 { outOfOrder += 1 }
            lastSeq[doc] = seq
        }
        #expect(outboxIDs.count == entries.count, "duplicate outbox_id in the stream")
        #expect(outOfOrder == 0, "\(outOfOrder) stream entries out of per-key order")
        #expect(lastSeq.count == keys && lastSeq.values.allSatisfy { $0 == rowsPerKey })
        try await redis.command("DEL", stream)
        _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
    }
}

/// The value of the /metrics sample `name` (with its labels), if the daemon reported it.
func sample(_ metrics: String, _ name: String) -> Int? {
    metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }.map { Int($0) }
}

/// Every metric on a daemon's `/metrics` has its `# HELP` line, and the build is named.
func expectEveryMetricHasHelp(_ metrics: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let lines = metrics.split(separator: "\n")
    let types = lines.filter { $0.hasPrefix("# TYPE ") }
    #expect(!types.isEmpty, "no metrics", sourceLocation: sourceLocation)
    for (index, line) in lines.enumerated() where line.hasPrefix("# TYPE ") {
        let name = line.split(separator: " ")[2]
        #expect(index > 0 && lines[index - 1].hasPrefix("# HELP \(name) "), "\(name) has no # HELP line", sourceLocation: sourceLocation)
    }
    let buildInfo = lines.first { $0.hasPrefix("outbox_build_info{") }
    #expect(buildInfo.map { $0 == "outbox_build_info{version=\"\(BuildInfo.version)\",revision=\"\(BuildInfo.revision)\"} 1.0" } == true, "\(buildInfo ?? "no outbox_build_info")",
            sourceLocation: sourceLocation)
}
