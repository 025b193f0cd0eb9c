import ArgumentParser
import Foundation
import Logging
import OutboxCLI
import OutboxCore

/// The demo writer of `make demo`: commits extraction rows and their outbox events together,
/// through the Swift writer API, the way an extraction pipeline would.
@main
struct OutboxDemo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-demo",
        abstract: "Demo writer: commits extractions and their outbox events in one transaction each.",
        discussion: """
            Each row gets two events in the same transaction: a qdrant.upsert of its text (embedded by the \
            relay, with source tracking so the relay sets embedding_id) and a redis.xadd to the stream \
            extractions:events carrying a per-document sequence number.
            """,
        version: BuildInfo.versionLine)

    @Option(name: .long, help: ArgumentHelp("Configuration file.", valueName: "path"))
    var config: String?

    @Option(name: .long, help: "How many extraction rows to write.")
    var rows: Int = 5

    @Option(name: .long, help: "Qdrant collection the upserts target.")
    var collection: String = "extractions"

    func validate() throws {
        guard rows >= 1 else { throw ValidationError("--rows must be at least 1") }
    }

    func run() async throws {
        let logger = CommandSupport.bootstrapLogging(label: "outbox-demo")
        let config = await CommandSupport.loadConfiguration(path: config)
        var postgres = config.postgres
        postgres.applicationName = "outbox-demo"
        let db = try await PostgresConnection.connect(postgres, logger: logger)
        let sentences = [
            "Invoice 4411 from Acme Corp totals 1,250.00 EUR, due on 2026-12-01.",
            "The contract renews automatically unless cancelled 30 days before term.",
            "Patient reports mild headache; prescribed ibuprofen 200 mg twice daily.",
            "Shipment 88-A left Rotterdam on 2026-11-20 with 14 pallets of bearings.",
            "The quarterly revenue grew 12 % driven by subscriptions in the EU region.",
            "Meeting notes: migrate the search index to the new embedding model in Q1.",
        ]
        let document = "doc-\(UUID().uuidString.prefix(8).lowercased())"
        for n in 1...rows {
            let id = UUID()
            let content = sentences[(n - 1) % sentences.count]
            let eventIDs = try await db.transaction { tx in
                try await tx.query(
                    "INSERT INTO extractions (id, source_id, content) VALUES ($1, $2, $3)",
                    [.uuid(id), .text(document), .text(content)])
                return try await OutboxWriter.enqueue([
                    .qdrantUpsert(
                        collection: collection, id: .uuid(id), text: content,
                        payload: ["source_id": .string(document)], source: ("extractions", id.uuidString.lowercased())),
                    .redisXAdd(
                        stream: "extractions:events", fields: ["extraction_id": id.uuidString.lowercased(), "seq": String(n)],
                        key: document),
                ], on: tx)
            }
            print("committed extraction \(id.uuidString.lowercased()) with events \(eventIDs.map(String.init).joined(separator: ", "))")
        }
        let pending = try await db.query(
            "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age FROM outbox.events"
        ).first!
        print("outbox.events now holds \(try pending.decode("n", as: Int.self)) pending event(s), oldest \(String(format: "%.1f", try pending.decode("age", as: Double.self))) s")
    }
}
