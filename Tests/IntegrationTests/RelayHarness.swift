import Foundation
import Testing

@testable import OutboxCore

/// A free TCP port on 127.0.0.1, below Linux' ephemeral range (32768–60999): a port the kernel
/// picked (bind to port 0) could be handed out again, as the local port of one of the many
/// client connections the tests open, before the process meant to listen on it had bound it.
func freePort() throws -> Int {
    for _ in 0..<100 {
        let port = Int.random(in: 20_000..<32_000)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        if bound { return port }
    }
    throw TestEnvironment.Missing(name: "a free TCP port")
}

/// `outbox-relay serve` as a child process, as an operator runs it.
final class RelayProcess: @unchecked Sendable {
    // @unchecked Sendable: the Process is only touched from the test task that owns this object.
    let process = Process()
    let port: Int
    let logURL: URL

    init(databaseURL: String, environment: [String: String] = [:], config: String = "config/outbox.yaml") throws {
        port = try freePort()
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-relay-\(UUID().uuidString).log")
        FileManager.default.createFile(atPath: logURL.path, contents: nil)
        process.executableURL = try TestEnvironment.executable("outbox-relay")
        process.arguments = ["serve", "--config", config]
        process.currentDirectoryURL = TestEnvironment.repositoryRoot
        var env = ProcessInfo.processInfo.environment
        env["OUTBOX_POSTGRES_URL"] = databaseURL
        env["OUTBOX_RELAY_HTTP_PORT"] = String(port)
        env["OUTBOX_RELAY_BACKOFF_MAX"] = "3s"
        env["OUTBOX_RELAY_SHUTDOWN_GRACE"] = "10s"
        env["OUTBOX_LOG_LEVEL"] = "info"
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let log = try FileHandle(forWritingTo: logURL)
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
        } else if !signalled {
            // A relay that died under a test (a port taken, a crash) shows why in the test's output.
            FileHandle.standardError.write(Data(
                "outbox-relay on port \(port) exited on its own (status \(process.terminationStatus)); its log ends:\n\(log.suffix(3000))\n".utf8))
        }
        try? FileManager.default.removeItem(at: logURL)
    }

    var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    /// The test signalled it, so an exit is expected.
    private var signalled = false

    func signal(_ signal: Int32) {
        signalled = true
        kill(process.processIdentifier, signal)
    }

    /// Waits for the process to exit; returns its status, or nil on timeout.
    func waitForExit(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// GET `path` on the relay's health server: (status, body), or nil if it did not answer.
    func get(_ path: String) async -> (status: Int, body: String)? {
        let http = HTTPConnection(logger: TestEnvironment.logger)
        guard let r = try? await http.perform(HTTPRequest(method: .GET, url: "http://127.0.0.1:\(port)\(path)", timeout: .seconds(2)))
        else { return nil }
        return (r.status, r.bodyText)
    }

    func waitUntilReady(timeout: Duration = .seconds(20)) async throws {
        try await eventually("relay ready (log: \(log.suffix(2000)))", timeout: timeout) { await self.get("/readyz")?.status == 200 }
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
        try await db.query("SELECT count(*) AS n FROM outbox.events").first!.decode("n")
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
