import Foundation

/// Column types of mapped tables, read from the catalog once, so source updates can cast text
/// parameters to the right type (uuid, bigint, text, …) and check values before delivery.
package struct SourceColumnTypes: Sendable {
    package struct Types: Sendable, Hashable {
        package let id: String
        package let embedding: String
    }

    package private(set) var types: [TableMapping: Types] = [:]

    package struct Problem: Error, CustomStringConvertible {
        package let key: String
        package let message: String
        package var description: String { "config: \(key): \(message)" }
    }

    package static func resolve(_ tables: [String: TableMapping], on db: PostgresConnection) async throws -> SourceColumnTypes {
        var resolved = SourceColumnTypes()
        for mapping in tables.values {
            func type(_ column: SQLIdentifier) async throws -> String {
                let rows = try await db.query(
                    """
                    SELECT format_type(a.atttypid, a.atttypmod) AS type
                    FROM pg_attribute a
                    WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped
                    """, [.text(mapping.table.quoted), .text(column.name)])
                guard let type = try rows.first?.decode("type", as: String.self) else {
                    throw Problem(key: "tables.\(mapping.name)", message: "\(mapping.table) has no column \(column) (or the table does not exist)")
                }
                return type
            }
            resolved.types[mapping] = Types(id: try await type(mapping.idColumn), embedding: try await type(mapping.embeddingColumn))
            if let column = mapping.vectorColumn {
                let found = try await type(column)
                guard ["real[]", "double precision[]"].contains(found) || found.hasPrefix("vector") else {
                    throw Problem(key: "tables.\(mapping.name).vector_column",
                                  message: "\(mapping.table).\(column) is \(found); expected real[], double precision[] or vector (pgvector)")
                }
            }
        }
        return resolved
    }

    /// `UPDATE table SET embedding = point WHERE id = row` for arrays of (row id, point id) text.
    /// Identifiers are validated and quoted; types come from the catalog; values are parameters.
    package func updateSQL(_ table: TableMapping) -> String {
        let t = types[table] ?? Types(id: "text", embedding: "text")
        return """
            UPDATE \(table.table.quoted) AS t SET \(table.embeddingColumn.quoted) = u.point_id::\(t.embedding)
            FROM unnest($1::text[], $2::text[]) AS u(row_id, point_id)
            WHERE t.\(table.idColumn.quoted) = u.row_id::\(t.id)
            """
    }

    /// Whether `value` parses as a value of the SQL `type` (for the types point ids and row ids
    /// commonly have; other types are assumed to accept any text).
    package static func fits(_ value: String, _ type: String) -> Bool {
        switch type {
        case "uuid": UUID(uuidString: value) != nil
        case "bigint", "integer", "smallint": Int64(value) != nil
        default: true
        }
    }
}
