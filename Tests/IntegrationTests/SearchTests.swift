import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// Searching what the relay delivered: rows written with their `qdrant.upsert` events, drained by
/// `outbox-relay serve`, then queried as `outbox-demo --query` queries them — the sentence embedded
/// by the relay's own embedder (`embedding:` of the shipped configuration), `POST /points/query`
/// through `QdrantClient.nearest`.
@Suite struct SearchTests {
    static let sentences = [
        "Invoice 4411 from Acme Corp totals 1,250.00 EUR, due on 2026-12-01.",
        "The contract renews automatically unless cancelled 30 days before term.",
        "Patient reports mild headache; prescribed ibuprofen 200 mg twice daily.",
        "Shipment 88-A left Rotterdam on 2026-11-20 with 14 pallets of bearings.",
        "The quarterly revenue grew 12 % driven by subscriptions in the EU region.",
        "Meeting notes: migrate the search index to the new embedding model in Q1.",
    ]

    @Test func theRowWhoseTextIsSearchedComesFirst() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let configPath = try TestEnvironment.configCopy { $0 }
            defer { try? FileManager.default.removeItem(atPath: configPath) }
            let config = try await OutboxConfiguration.load(path: configPath)
            let qdrant = QdrantClient(configuration: config.qdrant, logger: TestEnvironment.logger)
            let collection = TestEnvironment.uniqueName("search")
            let created = try await qdrant.ensureCollection(
                CollectionSpec(name: collection, size: config.embedding.dimensions, distance: "Cosine"))
            #expect(created.status == 200, "\(created.error ?? "")")

            var rowID: [String: String] = [:]  // text -> the id of its row (and point)
            for text in Self.sentences {
                let id = UUID()
                _ = try await db.transaction { tx in
                    try await OutboxWriter.write(
                        ("INSERT INTO extractions (id, source_id, content) VALUES ($1, $2, $3)",
                         [.uuid(id), .text("doc-search"), .text(text)]),
                        enqueue: [
                            .qdrantUpsert(
                                collection: collection, id: .uuid(id), text: text, payload: ["source_id": "doc-search"],
                                source: ("extractions", id.uuidString.lowercased()))
                        ],
                        on: tx)
                }
                rowID[text] = id.uuidString.lowercased()
            }
            let relay = try DaemonProcess.relay(databaseURL: url)
            try await eventually("the relay to deliver the upserts", timeout: .seconds(60)) { try await db.count("outbox.events") == 0 }
            await relay.stop()
            #expect(try await db.count("outbox.dead_letters") == 0)

            // Each row's own text finds that row first (score 1: the same vector), best first.
            let embedder = config.embedding.makeEmbedder(logger: TestEnvironment.logger)
            for text in Self.sentences {
                let hits = try await qdrant.nearest(to: try await embedder.embed([text])[0], in: collection, limit: 3)
                #expect(hits.count == 3)
                #expect(hits.first?.id == rowID[text], "\(text): \(hits)")
                #expect(abs((hits.first?.score ?? 0) - 1) < 1e-5, "\(text): \(hits)")
                #expect(hits.map(\.score) == hits.map(\.score).sorted(by: >), "\(text): \(hits)")
                #expect(hits.first?.payload?["source_id"] == "doc-search", "the payload comes with each hit")
            }
            // A sentence that shares words with one row (but is not its text) finds that row first.
            let shipment = Self.sentences[3]
            let near = try await qdrant.nearest(
                to: try await embedder.embed(["pallets of bearings shipped from Rotterdam"])[0], in: collection, limit: 2)
            #expect(near.first?.id == rowID[shipment], "\(near)")

            // outbox-demo --query prints the same first hit, with its row's text from Postgres.
            let demo = try await runProcess(
                try TestEnvironment.executable("outbox-demo"), ["--query", shipment, "--collection", collection, "--limit", "2"],
                environment: ["OUTBOX_POSTGRES_URL": url])
            #expect(demo.status == 0, "\(demo.stderr)")
            let lines = demo.stdout.split(separator: "\n").map(String.init)
            #expect(lines.count == 2 && lines.first == "1. score 1.0000  \(rowID[shipment] ?? "?")  \(shipment)", "\(demo.stdout)")

            // Refusals name the collection and carry Qdrant's status and text.
            let missing = try await #require(throws: QdrantClient.QueryError.self) {
                try await qdrant.nearest(to: [1, 0, 0], in: collection + "_missing", limit: 1)
            }
            #expect(missing.status == 404 && missing.description.contains("\(collection)_missing"), "\(missing)")
            let wrongSize = try await #require(throws: QdrantClient.QueryError.self) {
                try await qdrant.nearest(to: [1, 0, 0], in: collection, limit: 1)
            }
            let expected = "expected dim: \(config.embedding.dimensions), got 3"
            #expect(wrongSize.status == 400 && wrongSize.message.contains(expected), "\(wrongSize)")

            _ = try await qdrant.call(.deleteCollection(collection))
        }
    }
}
