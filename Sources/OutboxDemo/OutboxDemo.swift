import ArgumentParser
import Foundation
import Logging
import OutboxCLI
import OutboxCore

/// The demo writer of `make demo`: commits extraction rows and their outbox events together,
/// through the Swift writer API, the way an extraction pipeline would. With `--query` it reads
/// instead: the extractions nearest to a sentence, embedded as the relay embeds their texts.
@main
struct OutboxDemo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-demo",
        abstract: "Demo writer: commits extractions and their outbox events in one transaction each.",
        discussion: """
            Each row gets two events in the same transaction: a qdrant.upsert of its text (embedded by the \
            relay, with source tracking so the relay sets embedding_id) and a redis.xadd to the stream \
            extractions:events carrying a per-document sequence number.

            --query "a sentence" writes nothing: it embeds the sentence with the relay's embedder \
            (embedding: in the configuration), asks Qdrant for the nearest points of the collection \
            (POST /points/query) and prints them best first with their score and their row's text, \
            read from the table the demo writes (tables.extractions in the configuration).
            """,
        version: BuildInfo.versionLine)

    @Option(name: .long, help: ArgumentHelp("Configuration file.", valueName: "path"))
    var config: String?

    @Option(name: .long, help: "How many extraction rows to write (default 5).")
    var rows: Int?

    @Option(name: .long, help: "Qdrant collection the upserts target, or --query searches.")
    var collection: String = "extractions"

    @Option(name: .long, help: ArgumentHelp("Write nothing; print the extractions nearest to this sentence.", valueName: "sentence"))
    var query: String?

    @Option(name: .long, help: "With --query: how many extractions to print.")
    var limit: Int = 3

    func validate() throws {
        if let rows, rows < 1 { throw ValidationError("--rows must be at least 1, got \(rows)") }
        guard limit >= 1 else { throw ValidationError("--limit must be at least 1, got \(limit)") }
        if query != nil, rows != nil { throw ValidationError("--rows writes and --query reads: give one of them") }
        if let query, query.allSatisfy(\.isWhitespace) { throw ValidationError("--query needs a sentence, got an empty one") }
    }

    func run() async throws {
        let logger = CommandSupport.bootstrapLogging(label: "outbox-demo")
        let config = await CommandSupport.loadConfiguration(path: config)
        if let query {
            return try await search(query, config: config, logger: logger)
        }
        let rows = rows ?? 5
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
                        payload: ["source_id": .string(document)], source: (Self.table, id.uuidString.lowercased())),
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

    /// Prints the `limit` extractions nearest to `sentence`: embedded like the relay embeds rows
    /// (the same embedder and settings), so a sentence equal to a row's text finds that row first.
    func search(_ sentence: String, config: OutboxConfiguration, logger: Logger) async throws {
        let vector = try await config.embedding.makeEmbedder(logger: logger).embed([sentence])[0]
        let qdrant = QdrantClient(configuration: config.qdrant, logger: logger)
        let hits = try await qdrant.nearest(to: vector, in: collection, limit: limit)
        guard !hits.isEmpty else {
            print("Qdrant collection \(collection) holds no points yet: write some with --rows, let the relay deliver them")
            return
        }
        let texts = try await rowTexts(hits.map(\.id), config: config, logger: logger)
        for (rank, hit) in hits.enumerated() {
            let text = texts[hit.id] ?? "(no row with this id in tables.\(Self.table))"
            print("\(rank + 1). score \(String(format: "%.4f", hit.score))  \(hit.id)  \(text)")
        }
    }

    /// The name in `tables:` of the table the demo writes, which its upserts name as their source.
    static let table = "extractions"

    /// The text of each row among `ids`, from the table the demo writes (empty when the
    /// configuration has no `tables.extractions`).
    func rowTexts(_ ids: [String], config: OutboxConfiguration, logger: Logger) async throws -> [String: String] {
        guard let table = config.tables[Self.table] else { return [:] }
        var postgres = config.postgres
        postgres.applicationName = "outbox-demo"
        let db = try await PostgresConnection.connect(postgres, logger: logger)
        let rows = try await db.query(
            """
            SELECT t.\(table.idColumn.quoted)::text AS id, t.\(table.textColumn.quoted) AS text
            FROM \(table.table.quoted) AS t WHERE t.\(table.idColumn.quoted)::text = ANY($1)
            """, [.textArray(ids)])
        var texts: [String: String] = [:]
        for row in rows.rows { texts[try row.decode("id", as: String.self)] = try row.decode("text", as: String?.self) ?? "" }
        return texts
    }
}
