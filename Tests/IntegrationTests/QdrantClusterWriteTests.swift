import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// A stand-in of this checkout's `scripts/qdrant-standin`, on a free port with its own data, whose
/// `GET /__standin/requests` shows what a client sent (the shared one may be another checkout's).
struct OwnStandin {
    let process: Process
    let url: String
    let directory: String

    static func start() async throws -> OwnStandin {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-standin-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let port = try freePort()
        let python = URL(fileURLWithPath: try TestEnvironment.variable("OUTBOX_VENV")).appendingPathComponent("bin/python")
        let process = try await startProcess(python, [
            TestEnvironment.repositoryRoot.appendingPathComponent("scripts/qdrant-standin/standin.py").path,
            "--host", "127.0.0.1", "--port", String(port), "--data", directory, "--api-key", try TestEnvironment.qdrantAPIKey(),
        ], readyLine: "listening on http://")
        return OwnStandin(process: process, url: "http://127.0.0.1:\(port)", directory: directory)
    }

    /// SIGKILL (children inherit the test process's blocked signals), then its data goes.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The requests it answered whose path contains `collection`: `{method, path, wait, ordering, status, shard_key?}`.
    func requests(to collection: String) async throws -> [JSONValue] {
        let reply = try await QdrantCalls(baseURL: url).call(.GET, "/__standin/requests")
        return (reply.json?["requests"]?.arrayValue ?? []).filter { $0["path"]?.stringValue?.contains("/collections/\(collection)/") == true }
    }
}

/// Per-collection write `ordering` and `shard_key` (issue 22): what the relay and the reconciler
/// send, as the stand-in received it, and as the contract proxy checks it against Qdrant's spec.
@Suite struct QdrantClusterWriteTests {
    /// A copy of the shipped config with `collections` (YAML lines, indented 4) added under `qdrant.collections`.
    func config(collections: [String]) throws -> String {
        try TestEnvironment.configCopy {
            $0.replacingOccurrences(of: "  collections:\n", with: "  collections:\n" + collections.map { "    \($0)\n" }.joined())
        }
    }

    func enqueue(_ db: PostgresConnection, _ operation: String, key: String, _ payload: JSONValue) async throws {
        _ = try await db.query("SELECT outbox.enqueue('qdrant', $1, $2, $3::jsonb)", [.text(operation), .text(key), .text(payload.jsonText)])
    }

    /// The events of both tests: writes of every kind to a collection with a fixed shard key and to
    /// one keyed by each event's `tenant`, and two events whose `tenant` cannot be a shard key.
    func enqueueWorkload(_ db: PostgresConnection, fixed: String, field: String) async throws {
        try await enqueue(db, "upsert", key: "f1", ["collection": .string(fixed), "id": 1, "vector": [1, 0, 0, 0], "payload": ["a": 1]])
        try await enqueue(db, "set_payload", key: "f1", ["collection": .string(fixed), "ids": [1], "payload": ["b": 2]])
        try await enqueue(db, "upsert", key: "f2", ["collection": .string(fixed), "id": 2, "vector": [0, 1, 0, 0]])
        try await enqueue(db, "delete", key: "f2", ["collection": .string(fixed), "ids": [2]])
        // The upsert's tenant is in its point payload, the others' beside "collection".
        try await enqueue(db, "upsert", key: "t1", ["collection": .string(field), "id": 1, "vector": [1, 0, 0, 0], "payload": ["tenant": "acme"]])
        try await enqueue(db, "upsert", key: "t2", ["collection": .string(field), "id": 2, "vector": [0, 1, 0, 0], "tenant": 42])
        try await enqueue(db, "set_payload", key: "t1", ["collection": .string(field), "ids": [1], "payload": ["seen": true], "tenant": "acme"])
        try await enqueue(db, "delete", key: "t2", ["collection": .string(field), "ids": [2], "tenant": 42])
        try await enqueue(db, "delete", key: "bad1", ["collection": .string(field), "ids": [3]])
        try await enqueue(db, "upsert", key: "bad2", ["collection": .string(field), "id": 4, "vector": [0, 0, 1, 0], "tenant": 1.5])
    }

    func drain(_ db: PostgresConnection) async throws {
        try await eventually("outbox drained", timeout: .seconds(60)) {
            try await db.query("SELECT count(*) AS n FROM outbox.events").first?.decode("n", as: Int.self) == 0
        }
    }

    func deadLetterReasons(_ db: PostgresConnection) async throws -> [String: String] {
        Dictionary(uniqueKeysWithValues: try await db.query("SELECT key, error FROM outbox.dead_letters").rows.map {
            (try $0.decode("key", as: String.self), try $0.decode("error", as: String.self))
        })
    }

    func expectDeadLetters(_ db: PostgresConnection, field: String) async throws {
        let reasons = try await deadLetterReasons(db)
        #expect(reasons == [
            "bad1": "qdrant.delete to \(field): the shard key field \"tenant\" (qdrant.collections.\(field).shard_key_field) is not in the payload",
            "bad2": "qdrant.upsert to \(field): the shard key field \"tenant\" (qdrant.collections.\(field).shard_key_field) must be a non-empty "
                + "string or an unsigned integer, got 1.5",
        ])
    }

    @Test func theRelaySendsEachCollectionsOrderingAndShardKeyOnUpsertsDeletesAndPayloadWrites() async throws {
        let standin = try await OwnStandin.start()
        defer { standin.stop() }
        let qdrant = try QdrantCalls(baseURL: standin.url)
        let fixed = TestEnvironment.uniqueName("sk_fixed"), field = TestEnvironment.uniqueName("sk_field")
        // Custom-sharded collections are the operator's to create: the relay never creates them.
        for collection in [fixed, field] {
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Cosine"]]).status == 200)
        }
        let config = try config(collections: [
            "\(fixed): {size: 4, ordering: strong, shard_key: eu}", "\(field): {size: 4, shard_key_field: tenant}",
        ])
        defer { try? FileManager.default.removeItem(atPath: config) }
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            try await enqueueWorkload(db, fixed: fixed, field: field)
            // qdrant.ordering from the environment: the field-keyed collection has no ordering of its own.
            let relay = try DaemonProcess.relay(
                databaseURL: url, environment: ["OUTBOX_QDRANT_URL": standin.url, "OUTBOX_QDRANT_ORDERING": "weak"], config: config)
            try await relay.waitUntilReady()
            try await drain(db)
            await relay.stop()
            try await expectDeadLetters(db, field: field)
        }

        // Every write to the fixed collection: wait=true, ordering=strong, shard_key "eu".
        let fixedWrites = try await standin.requests(to: fixed).filter { $0["wait"] == "true" }
        #expect(Set(fixedWrites.map { "\($0["method"]?.stringValue ?? "") \($0["path"]?.stringValue ?? "")" }) == [
            "PUT /collections/\(fixed)/points", "POST /collections/\(fixed)/points/payload", "POST /collections/\(fixed)/points/delete",
        ])
        for request in fixedWrites {
            #expect(request["ordering"] == "strong" && request["shard_key"] == "eu" && request["status"] == 200, "\(request.jsonText)")
        }
        // The field-keyed collection: qdrant.ordering (weak), each request the shard key of its events.
        let fieldWrites = try await standin.requests(to: field)
        #expect(fieldWrites.allSatisfy { $0["ordering"] == "weak" && $0["wait"] == "true" && $0["status"] == 200 }, "\(fieldWrites)")
        let sent = Set(fieldWrites.map { "\($0["method"]?.stringValue ?? "") \($0["path"]?.stringValue ?? "") \($0["shard_key"]?.jsonText ?? "none")" })
        #expect(sent == [
            "PUT /collections/\(field)/points \"acme\"", "PUT /collections/\(field)/points 42",
            "POST /collections/\(field)/points/payload \"acme\"", "POST /collections/\(field)/points/delete 42",
        ])

        // And the writes landed.
        let fixedPoints = try await qdrant.call(.POST, "/collections/\(fixed)/points", ["ids": [1, 2], "with_payload": true])
        #expect(fixedPoints.json?["result"] == [["id": 1, "payload": ["a": 1, "b": 2]]])
        let fieldPoints = try await qdrant.call(.POST, "/collections/\(field)/points", ["ids": [1, 2, 4], "with_payload": true])
        #expect(fieldPoints.json?["result"] == [["id": 1, "payload": ["tenant": "acme", "seen": true]]])
    }

    /// The same writes through the contract proxy (`OUTBOX_QDRANT_PROXY_URL`, in front of the shared
    /// stand-in): `ordering` in the query and `shard_key` in the bodies are what Qdrant's spec declares.
    @Test func orderingAndShardKeysPassTheContractProxy() async throws {
        let proxy = try TestEnvironment.variable("OUTBOX_QDRANT_PROXY_URL")
        let qdrant = try QdrantCalls(baseURL: proxy)
        let fixed = TestEnvironment.uniqueName("sk_proxy_fixed"), field = TestEnvironment.uniqueName("sk_proxy_field")
        for collection in [fixed, field] {
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Cosine"]]).status == 200)
        }
        defer {
            Task { for collection in [fixed, field] { _ = try? await qdrant.call(.DELETE, "/collections/\(collection)") } }
        }
        let config = try config(collections: [
            "\(fixed): {size: 4, ordering: medium, shard_key: 7}", "\(field): {size: 4, ordering: strong, shard_key_field: tenant}",
        ])
        defer { try? FileManager.default.removeItem(atPath: config) }
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            try await enqueueWorkload(db, fixed: fixed, field: field)
            let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_QDRANT_URL": proxy], config: config)
            try await relay.waitUntilReady()
            try await drain(db)
            await relay.stop()
            try await expectDeadLetters(db, field: field)
        }
        let report = try await qdrant.call(.GET, "/__contract/violations")
        let mine = (report.json?["violations"]?.arrayValue ?? []).filter {
            let path = $0["path"]?.stringValue ?? ""
            return path.contains(fixed) || path.contains(field)
        }
        #expect(mine.isEmpty, "contract violations: \(mine.map(\.jsonText))")
        #expect(try await qdrant.call(.POST, "/collections/\(field)/points/count", ["exact": true]).json?["result"]?["count"] == 1)
    }

    /// The reconciler's lookups in a collection with a fixed shard key stay in that key's shards; in
    /// one keyed by a field they search every shard, and each orphan's delete carries its own key.
    @Test func theReconcilerReadsWithTheFixedShardKeyAndDeletesOrphansUnderTheirOwn() async throws {
        let standin = try await OwnStandin.start()
        defer { standin.stop() }
        let qdrant = try QdrantCalls(baseURL: standin.url)
        for (prefix, collectionLine, payloadColumns) in [
            ("rk_fixed", "{size: 384, shard_key: eu}", "[source_id]"), ("rk_field", "{size: 384, shard_key_field: source_id}", "[source_id]"),
        ] {
            let collection = TestEnvironment.uniqueName(prefix)
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 384, "distance": "Cosine"]]).status == 200)
            let config = try TestEnvironment.configCopy {
                $0.replacingOccurrences(of: "    extractions: {size: 384, distance: Cosine}\n", with: "    \(collection): \(collectionLine)\n")
                    .replacingOccurrences(
                        of: "    collection: extractions\n", with: "    collection: \(collection)\n    payload_columns: \(payloadColumns)\n")
            }
            defer { try? FileManager.default.removeItem(atPath: config) }
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
                // A row whose point is missing, and two points no row references, of two tenants.
                let row = UUID().uuidString.lowercased()
                _ = try await db.query(
                    "INSERT INTO extractions (id, source_id, content, embedding_id) VALUES ($1::uuid, 's1', 'text', $1::uuid)", [.text(row)])
                let vector = JSONValue.array((0..<384).map { .number($0 == 0 ? 1 : 0) })
                let upsert = try await qdrant.call(.PUT, "/collections/\(collection)/points?wait=true", ["points": [
                    ["id": 101, "vector": vector, "payload": ["source_id": "tenant-a"]],
                    ["id": 102, "vector": vector, "payload": ["source_id": "tenant-b"]],
                ]])
                #expect(upsert.status == 200)
                _ = try await qdrant.call(.DELETE, "/__standin/requests")
                let result = try await runProcess(
                    try TestEnvironment.executable("outbox-reconciler"), ["reconcile", "--json", "--config", config],
                    environment: ["OUTBOX_POSTGRES_URL": url, "OUTBOX_QDRANT_URL": standin.url])
                #expect(result.status == 1, "\(result.stderr)")
                let reads = try await standin.requests(to: collection)
                let byPath = Dictionary(grouping: reads) { $0["path"]?.stringValue ?? "" }
                let retrieve = byPath["/collections/\(collection)/points"] ?? []
                let scroll = byPath["/collections/\(collection)/points/scroll"] ?? []
                #expect(!retrieve.isEmpty && !scroll.isEmpty, "\(reads)")
                let deletes = try await db.query(
                    "SELECT payload FROM outbox.events WHERE operation = 'delete' ORDER BY id"
                ).rows.map { try JSONValue.parse(try $0.decode("payload", as: String.self)) }
                if prefix == "rk_fixed" {
                    #expect((retrieve + scroll).allSatisfy { $0["shard_key"] == "eu" }, "\(reads)")
                    // One delete; the relay adds the fixed key when it sends it.
                    #expect(deletes.count == 1 && Set(deletes[0]["ids"]?.arrayValue ?? []) == [101, 102], "\(deletes)")
                } else {
                    #expect((retrieve + scroll).allSatisfy { $0["shard_key"] == nil }, "\(reads)")
                    // One delete per tenant, each with its shard key field beside "collection".
                    #expect(Set(deletes.map { "\($0["source_id"]?.stringValue ?? "none") \($0["ids"]?.jsonText ?? "")" })
                        == ["tenant-a [101]", "tenant-b [102]"], "\(deletes)")
                }
                // The missing point's repair: an upsert whose point payload holds the shard key field.
                let repair = try await db.query("SELECT payload FROM outbox.events WHERE operation = 'upsert'").rows.map {
                    try JSONValue.parse(try $0.decode("payload", as: String.self))
                }
                #expect(repair.count == 1 && repair.first?["payload"]?["source_id"] == "s1", "\(repair)")
            }
        }
    }
}
