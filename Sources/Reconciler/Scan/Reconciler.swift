import Foundation
import OutboxCore
import Logging

/// What drifted, per tracked table and category.
public struct ReconcileReport: Sendable {
    public enum Category: String, Sendable, CaseIterable, Comparable {
        case unembedded, stuck, dead, missingPoint = "missing_point", orphanPoint = "orphan_point"
        public static func < (a: Category, b: Category) -> Bool { allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)! }
    }

    public struct Finding: Sendable {
        public var count = 0
        /// Up to the sample limit: row ids (unembedded, missing_point), event ids (stuck, dead)
        /// or point ids (orphan_point).
        public var ids: [String] = []
        /// For stuck events: key, age, attempts and last error.
        public var details: [String] = []
        public var repaired = 0
    }

    public var findings: [String: [Category: Finding]] = [:]
    public var rowsScanned = 0
    public var pointsScanned = 0
    public var duration: Duration = .zero
    public var durationSeconds: Double { duration.seconds }

    public var isConsistent: Bool { findings.values.allSatisfy { $0.values.allSatisfy { $0.count == 0 } } }

    public var json: JSONValue {
        var tables: [String: JSONValue] = [:]
        for (table, categories) in findings {
            var entry: [String: JSONValue] = [:]
            for (category, finding) in categories {
                entry[category.rawValue] = [
                    "count": .number(Double(finding.count)), "ids": .array(finding.ids.map(JSONValue.string)),
                    "repaired": .number(Double(finding.repaired)),
                    "details": .array(finding.details.map(JSONValue.string)),
                ]
            }
            tables[table] = .object(entry)
        }
        return [
            "consistent": .bool(isConsistent), "tables": .object(tables),
            "rows_scanned": .number(Double(rowsScanned)), "points_scanned": .number(Double(pointsScanned)),
            "duration_seconds": .number((duration.seconds * 1000).rounded() / 1000),
        ]
    }
}

/// Finds and repairs drift between a tracked table, the outbox and its Qdrant collection.
public struct Reconciler: Sendable {
    public struct Options: Sendable {
        public var categories: Set<ReconcileReport.Category> = Set(ReconcileReport.Category.allCases)
        public var dryRun = false
        public var sampleLimit = 20
        public var requeueDead = false
        /// Replace dead-lettered upserts of tracked rows with fresh ones built from the rows (the
        /// same payload requeued would die again).
        public var reembedDead = false
        public init() {}
    }

    let configuration: OutboxConfiguration
    let settings: ReconcilerSettings
    let qdrant: QdrantClient
    let logger: Logger

    public init(configuration: OutboxConfiguration, settings: ReconcilerSettings, logger: Logger) {
        self.configuration = configuration
        self.settings = settings
        self.qdrant = QdrantClient(configuration: configuration.qdrant, logger: logger)
        self.logger = logger
    }

    /// One pass over every tracked table. `progress` receives (table, rows scanned so far).
    public func run(_ db: PostgresConnection, options: Options, progress: @Sendable (String, Int) -> Void = { _, _ in })
        async throws -> ReconcileReport
    {
        let started = ContinuousClock.now
        var report = ReconcileReport()
        let types = try await SourceColumnTypes.resolve(configuration.tables, on: db)
        for table in configuration.tables.values.sorted(by: { $0.name < $1.name }) {
            let scan = TableScan(
                table: table, types: types, settings: settings, options: options, qdrant: qdrant,
                writes: QdrantWriteSettings.of(table.collection, in: configuration.collections, defaultOrdering: configuration.qdrant.ordering),
                db: db, logger: logger)
            var findings: [ReconcileReport.Category: ReconcileReport.Finding] = [:]
            for category in ReconcileReport.Category.allCases where options.categories.contains(category) {
                findings[category] = ReconcileReport.Finding()
            }
            try await scan.run(into: &findings, report: &report, progress: progress)
            report.findings[table.name] = findings
        }
        report.duration = ContinuousClock.now - started
        return report
    }
}

/// The scan of one table.
struct TableScan {
    let table: TableMapping
    let types: SourceColumnTypes
    let settings: ReconcilerSettings
    let options: Reconciler.Options
    let qdrant: QdrantClient
    /// The shard key of the table's collection. A fixed one confines the reconciler's reads to that
    /// key's shards, where the relay writes (other keys' points are not this table's); with a shard
    /// key field they search every shard, and an orphan's delete carries the key found in its payload.
    /// (Its repairs are events: the relay sends them with the collection's ordering and shard key.)
    let writes: QdrantWriteSettings
    let db: PostgresConnection
    let logger: Logger

    var name: String { table.name }
    var idType: String { types.types[table]?.id ?? "text" }
    var embeddingType: String { types.types[table]?.embedding ?? "text" }

    /// JSON for the point id of a row: the row id itself when it is a valid point id (uuid or
    /// integer), else a UUID derived from table name and row id.
    var pointIDExpression: String {
        switch idType {
        case "uuid": "to_jsonb(t.\(table.idColumn.quoted)::text)"
        case "bigint", "integer", "smallint": "to_jsonb(t.\(table.idColumn.quoted))"
        default: "to_jsonb(md5($2 || ':' || t.\(table.idColumn.quoted)::text)::uuid::text)"
        }
    }

    /// JSON for a repaired point's payload: the row's `payload_columns` by name (`$4`, the names as
    /// text), `{}` without any.
    var payloadExpression: String {
        guard !table.payloadColumns.isEmpty else { return "'{}'::jsonb" }
        let values = table.payloadColumns.map { "to_jsonb(t.\($0.quoted))" }.joined(separator: ", ")
        return "(SELECT jsonb_object_agg(p.k, p.v) FROM unnest($4::text[], ARRAY[\(values)]) AS p(k, v))"
    }

    /// JSON for what a repaired point is made of: the row's `vector_column` where it has a vector,
    /// else its text (which the relay embeds).
    var contentExpression: String {
        let text = "jsonb_build_object('text', coalesce(t.\(table.textColumn.quoted)::text, ''))"
        guard let vector = table.vectorColumn?.quoted else { return text }
        return "CASE WHEN t.\(vector) IS NOT NULL THEN jsonb_build_object('vector', to_jsonb(t.\(vector)::real[])) ELSE \(text) END"
    }

    func run(
        into findings: inout [ReconcileReport.Category: ReconcileReport.Finding], report: inout ReconcileReport,
        progress: @Sendable (String, Int) -> Void
    ) async throws {
        let wants = options.categories
        if wants.contains(.stuck) { findings[.stuck] = try await stuck() }
        if wants.contains(.dead) { findings[.dead] = try await dead() }
        if wants.contains(.unembedded) {
            findings[.unembedded] = try await unembedded(report: &report, progress: progress)
        }
        if wants.contains(.missingPoint) {
            findings[.missingPoint] = try await missingPoints(report: &report, progress: progress)
        }
        if wants.contains(.orphanPoint) {
            findings[.orphanPoint] = try await orphanPoints(report: &report)
        }
    }

    func add(_ id: String, to finding: inout ReconcileReport.Finding) {
        finding.count += 1
        if finding.ids.count < options.sampleLimit { finding.ids.append(id) }
    }

    /// Live upserts for rows of this table that are old or have failed many times.
    func stuck() async throws -> ReconcileReport.Finding {
        var finding = ReconcileReport.Finding()
        let rows = try await db.query(
            """
            SELECT id, key, attempts, extract(epoch FROM now() - created_at)::float8 AS age, coalesce(last_error, '') AS error
            FROM outbox.events
            WHERE destination = 'qdrant' AND payload #>> '{source,table}' = $1
              AND (created_at < now() - make_interval(secs => $2) OR attempts >= $3)
            ORDER BY id
            """, [.text(name), .double(settings.stuckAfter.seconds), .int(Int64(settings.stuckAttempts))])
        for row in rows.rows {
            let id: Int64 = try row.decode("id")
            add(String(id), to: &finding)
            if finding.details.count < options.sampleLimit {
                finding.details.append(
                    "event \(id) key=\(try row.decode("key", as: String.self)) age=\(Int(try row.decode("age", as: Double.self)))s "
                        + "attempts=\(try row.decode("attempts", as: Int.self)) last_error=\(try row.decode("error", as: String.self))")
            }
        }
        return finding
    }

    /// Dead-lettered upserts for rows of this table; requeued with `--requeue-dead`, or replaced by
    /// upserts built from the rows with `--reembed-dead`.
    func dead() async throws -> ReconcileReport.Finding {
        var finding = ReconcileReport.Finding()
        let rows = try await db.query(
            """
            SELECT id, error, payload #>> '{source,id}' AS row_id FROM outbox.dead_letters
            WHERE destination = 'qdrant' AND payload #>> '{source,table}' = $1 ORDER BY id
            """,
            [.text(name)])
        var ids: [Int64] = []
        var rowIDs: [String] = []
        for row in rows.rows {
            let id: Int64 = try row.decode("id")
            ids.append(id)
            // A source id that is no valid row id (as dead-lettered) names no row to rebuild.
            if let rowID = try row.decode("row_id", as: String?.self), SourceColumnTypes.fits(rowID, idType) { rowIDs.append(rowID) }
            add(String(id), to: &finding)
            if finding.details.count < options.sampleLimit {
                finding.details.append("event \(id): \(try row.decode("error", as: String.self))")
            }
        }
        if options.reembedDead, !options.dryRun, !ids.isEmpty {
            // The row as it is now, not the payload that died: purge, then enqueue from the row, in
            // one transaction, so the row is never left with neither.
            finding.repaired = try await enqueueUpserts(rowIDs, clearEmbedding: false) { tx in
                _ = try await DeadLetters.purge(tx, selection: .ids(ids))
            }
        } else if options.requeueDead, !options.dryRun, !ids.isEmpty {
            finding.repaired = try await DeadLetters.requeue(db, selection: .ids(ids))
        }
        return finding
    }

    /// Rows with a NULL embedding older than the grace period and neither a live event nor a dead
    /// letter; repaired by enqueueing an upsert built from the row. Pages through the partial
    /// index on (created_at, id) WHERE embedding IS NULL.
    func unembedded(report: inout ReconcileReport, progress: @Sendable (String, Int) -> Void) async throws
        -> ReconcileReport.Finding
    {
        var finding = ReconcileReport.Finding()
        let t = table
        var after: (created: PostgresValue, id: String)?
        while true {
            var parameters: [PostgresValue] = [.double(settings.gracePeriod.seconds), .int(Int64(settings.pageSize))]
            var keyset = ""
            if let after {
                keyset = "AND (t.\(t.createdAtColumn.quoted), t.\(t.idColumn.quoted)) > ($3::timestamptz, $4::\(idType))"
                parameters += [after.created, .text(after.id)]
            }
            let page = try await db.query(
                """
                SELECT t.\(t.idColumn.quoted)::text AS id, t.\(t.createdAtColumn.quoted) AS created
                FROM \(t.table.quoted) AS t
                WHERE t.\(t.embeddingColumn.quoted) IS NULL
                  AND t.\(t.createdAtColumn.quoted) < now() - make_interval(secs => $1) \(keyset)
                ORDER BY t.\(t.createdAtColumn.quoted), t.\(t.idColumn.quoted)
                LIMIT $2
                """, parameters)
            guard let last = page.rows.last else { break }
            after = (last["created"], try last.decode("id"))
            report.rowsScanned += page.rows.count
            progress(name, report.rowsScanned)
            let ids = try page.rows.map { try $0.decode("id", as: String.self) }
            let covered = try await db.query(
                """
                SELECT payload #>> '{source,id}' AS id FROM outbox.events
                WHERE destination = 'qdrant' AND payload #>> '{source,table}' = $1 AND payload #>> '{source,id}' = ANY($2::text[])
                UNION
                SELECT payload #>> '{source,id}' FROM outbox.dead_letters
                WHERE destination = 'qdrant' AND payload #>> '{source,table}' = $1 AND payload #>> '{source,id}' = ANY($2::text[])
                """, [.text(name), .textArray(ids)])
            let skip = Set(try covered.rows.map { try $0.decode("id", as: String.self) })
            let found = ids.filter { !skip.contains($0) }
            for id in found { add(id, to: &finding) }
            if !options.dryRun, !found.isEmpty {
                finding.repaired += try await enqueueUpserts(found, clearEmbedding: false)
            }
            if page.rows.count < settings.pageSize { break }
        }
        return finding
    }

    /// Rows whose embedding column names a point Qdrant does not have; repaired by clearing the
    /// column and enqueueing an upsert. Pages by id, looks points up in batches.
    func missingPoints(report: inout ReconcileReport, progress: @Sendable (String, Int) -> Void) async throws
        -> ReconcileReport.Finding
    {
        var finding = ReconcileReport.Finding()
        let t = table
        var after: String?
        while true {
            var parameters: [PostgresValue] = [.int(Int64(settings.pageSize))]
            var keyset = ""
            if let after {
                keyset = "AND t.\(t.idColumn.quoted) > $2::\(idType)"
                parameters.append(.text(after))
            }
            let page = try await db.query(
                """
                SELECT t.\(t.idColumn.quoted)::text AS id, t.\(t.embeddingColumn.quoted)::text AS point
                FROM \(t.table.quoted) AS t
                WHERE t.\(t.embeddingColumn.quoted) IS NOT NULL \(keyset)
                ORDER BY t.\(t.idColumn.quoted)
                LIMIT $1
                """, parameters)
            guard let last = page.rows.last else { break }
            after = try last.decode("id")
            report.rowsScanned += page.rows.count
            progress(name, report.rowsScanned)
            let pairs = try page.rows.map { (row: try $0.decode("id", as: String.self), point: try $0.decode("point", as: String.self)) }
            let present = try await existingPoints(pairs.map(\.point))
            let missing = pairs.filter { !present.contains($0.point.lowercased()) }.map(\.row)
            for id in missing { add(id, to: &finding) }
            if !options.dryRun, !missing.isEmpty {
                finding.repaired += try await enqueueUpserts(missing, clearEmbedding: true)
            }
            if page.rows.count < settings.pageSize { break }
        }
        return finding
    }

    /// Points of the table's collection that no row references (by embedding column, or by id)
    /// and no live event upserts; repaired by enqueueing a `qdrant.delete`.
    func orphanPoints(report: inout ReconcileReport) async throws -> ReconcileReport.Finding {
        var finding = ReconcileReport.Finding()
        let t = table
        var offset: JSONValue = .null
        repeat {
            var body: [String: JSONValue] = ["limit": .number(Double(settings.pageSize)), "with_payload": false, "with_vector": false]
            if offset != .null { body["offset"] = offset }
            switch writes.shardKey {
            case .fixed(let key)?: body["shard_key"] = key.json
            case .field(let field)?: body["with_payload"] = [.string(field)]
            case nil: break
            }
            let reply = try await qdrant.call(.scrollPoints(collection: t.collection), body: .object(body))
            if reply.status == 404 { break }  // no collection: no points, no orphans
            guard reply.status == 200 else { throw ReconcilerError(message: "qdrant scroll answered \(reply.status): \(reply.error ?? "")") }
            let records = reply.result?["points"]?.arrayValue ?? []
            let points = records.compactMap { $0["id"] }
            offset = reply.result?["next_page_offset"] ?? .null
            report.pointsScanned += points.count
            let ids = points.map(Self.pointText)
            guard !ids.isEmpty else { continue }
            // Ids that cannot be cast to the column type cannot be referenced by a row.
            let castable = ids.filter { id in
                SourceColumnTypes.fits(id, embeddingType) && (idType != embeddingType || SourceColumnTypes.fits(id, idType))
            }
            var referenced = """
                SELECT t.\(t.embeddingColumn.quoted)::text AS id FROM \(t.table.quoted) AS t
                WHERE t.\(t.embeddingColumn.quoted) = ANY(\(castArray("$1", to: embeddingType)))
                """
            if idType == embeddingType {
                referenced += "\nUNION SELECT t.\(t.idColumn.quoted)::text FROM \(t.table.quoted) AS t WHERE t.\(t.idColumn.quoted) = ANY(\(castArray("$1", to: idType)))"
            }
            // Points a live upsert is about to reference, or a live delete is about to remove.
            referenced += "\nUNION SELECT payload ->> 'id' FROM outbox.events WHERE destination = 'qdrant' AND payload ->> 'id' = ANY($2::text[])"
            referenced += """

                UNION SELECT i FROM outbox.events, jsonb_array_elements_text(payload -> 'ids') AS i
                WHERE destination = 'qdrant' AND operation = 'delete' AND payload ->> 'collection' = $3 AND i = ANY($2::text[])
                """
            let known = Set(try await db.query(referenced, [.textArray(castable), .textArray(ids), .text(t.collection)]).rows.map {
                try $0.decode("id", as: String.self).lowercased()
            })
            let orphans = ids.filter { !known.contains($0.lowercased()) }
            for id in orphans { add(id, to: &finding) }
            if !options.dryRun, !orphans.isEmpty {
                let orphanSet = Set(orphans)
                // One delete per shard key (a field-keyed collection: the key in each point's payload).
                var deletes: [(shardKey: ShardKey?, ids: [JSONValue])] = []
                var unkeyed: [String] = []
                for record in records {
                    guard let id = record["id"], orphanSet.contains(Self.pointText(id)) else { continue }
                    var shardKey: ShardKey?
                    if case .field(let field)? = writes.shardKey {
                        guard let value = record["payload"]?[field], let key = ShardKey(json: value) else {
                            unkeyed.append(Self.pointText(id))
                            continue
                        }
                        shardKey = key
                    }
                    if let index = deletes.firstIndex(where: { $0.shardKey == shardKey }) {
                        deletes[index].ids.append(id)
                    } else {
                        deletes.append((shardKey, [id]))
                    }
                }
                if !unkeyed.isEmpty {
                    logger.warning("Orphan points without a shard key in their payload are not deleted", metadata: [
                        "table": "\(name)", "qdrant.collection": "\(t.collection)", "points": "\(unkeyed.prefix(options.sampleLimit))",
                    ])
                }
                try await db.transaction { tx in
                    for delete in deletes {
                        var payload: [String: JSONValue] = ["collection": .string(t.collection), "ids": .array(delete.ids)]
                        if case .field(let field)? = writes.shardKey, let key = delete.shardKey { payload[field] = key.json }
                        try await OutboxWriter.enqueue(
                            OutboxEvent(destination: .qdrant, operation: "delete", key: "reconciler:orphans:\(t.collection)", payload: .object(payload)),
                            on: tx)
                    }
                }
                finding.repaired += deletes.reduce(0) { $0 + $1.ids.count }
            }
        } while offset != .null
        return finding
    }

    private func castArray(_ parameter: String, to type: String) -> String {
        "\(parameter)::text[]::\(type)[]"
    }

    static func pointText(_ id: JSONValue) -> String {
        switch id {
        case .string(let s): s.lowercased()
        case .number(let n): UInt64(exactly: n).map(String.init) ?? id.jsonText
        default: id.jsonText
        }
    }

    /// The subset of `pointIDs` present in the collection (one lookup per call).
    private func existingPoints(_ pointIDs: [String]) async throws -> Set<String> {
        let ids: [JSONValue] = pointIDs.map { UInt64($0).map { .number(Double($0)) } ?? .string($0) }
        var body: [String: JSONValue] = ["ids": .array(ids), "with_payload": false, "with_vector": false]
        if case .fixed(let key)? = writes.shardKey { body["shard_key"] = key.json }
        let reply = try await qdrant.call(.retrievePoints(collection: table.collection), body: .object(body))
        if reply.status == 404 { return [] }
        guard reply.status == 200 else { throw ReconcilerError(message: "qdrant lookup answered \(reply.status): \(reply.error ?? "")") }
        return Set(reply.result?.arrayValue?.compactMap { $0["id"].map(Self.pointText) } ?? [])
    }

    /// Enqueues `qdrant.upsert` with the row's vector or text (embedded by the relay), its `payload_columns`
    /// as the point's payload, and `source`, for each row id; with `clearEmbedding` first sets the
    /// embedding column to NULL. One transaction. Column names are bound as the payload's keys;
    /// only the validated, quoted identifiers are spliced in.
    private func enqueueUpserts(
        _ rowIDs: [String], clearEmbedding: Bool, first: (PostgresConnection) async throws -> Void = { _ in }
    ) async throws -> Int {
        let t = table
        return try await db.transaction { tx in
            try await first(tx)
            if clearEmbedding {
                try await tx.query(
                    "UPDATE \(t.table.quoted) SET \(t.embeddingColumn.quoted) = NULL WHERE \(t.idColumn.quoted) = ANY(\(castArray("$1", to: idType)))",
                    [.textArray(rowIDs)])
            }
            let result = try await tx.query(
                """
                SELECT count(outbox.enqueue('qdrant', 'upsert', t.\(t.idColumn.quoted)::text, jsonb_build_object(
                    'collection', $3::text, 'id', \(pointIDExpression), 'payload', \(payloadExpression),
                    'source', jsonb_build_object('table', $2::text, 'id', t.\(t.idColumn.quoted)::text)) || \(contentExpression))) AS n
                FROM (SELECT * FROM \(t.table.quoted) WHERE \(t.idColumn.quoted) = ANY(\(castArray("$1", to: idType)))
                      ORDER BY \(t.idColumn.quoted)) AS t
                """, [.textArray(rowIDs), .text(name), .text(t.collection)] + (t.payloadColumns.isEmpty ? [] : [.textArray(t.payloadColumns.map(\.name))]))
            return try result.first!.decode("n", as: Int.self)
        }
    }
}

public struct ReconcilerError: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
