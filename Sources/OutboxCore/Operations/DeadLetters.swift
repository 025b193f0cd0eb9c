import Foundation

/// The dead-letter queue: `outbox-relay dead-letters list|requeue|purge`, and `outbox-reconciler reconcile --requeue-dead`.
public enum DeadLetters {
    /// Which dead letters a command acts on. Exactly one of ids, key, or all.
    public enum Selection: Sendable, Equatable {
        case ids([Int64])
        case key(String, destination: OutboxEvent.Destination?)
        case all(destination: OutboxEvent.Destination?)

        /// A WHERE clause over `outbox.dead_letters` and its bound parameters.
        var filter: (sql: String, parameters: [PostgresValue]) {
            switch self {
            case .ids(let ids): ("id = ANY($1::bigint[])", [.intArray(ids)])
            case .key(let key, let destination?): ("key = $1 AND destination = $2", [.text(key), .text(destination.rawValue)])
            case .key(let key, nil): ("key = $1", [.text(key)])
            case .all(let destination?): ("destination = $1", [.text(destination.rawValue)])
            case .all(nil): ("true", [])
            }
        }
    }

    public struct Entry: Sendable {
        public let id: Int64
        public let destination: String
        public let operation: String
        public let key: String
        public let attempts: Int
        public let error: String
        public let createdAt: Date
        public let deadLetteredAt: Date
        public let payload: String
    }

    public static func list(_ db: PostgresConnection, selection: Selection, limit: Int) async throws -> [Entry] {
        let filter = selection.filter
        let rows = try await db.query(
            """
            SELECT id, destination, operation, key, attempts, error, created_at, dead_lettered_at, payload::text AS payload
            FROM outbox.dead_letters WHERE \(filter.sql) ORDER BY id LIMIT \(max(1, limit))
            """, filter.parameters)
        return try rows.rows.map { row in
            Entry(
                id: try row.decode("id"), destination: try row.decode("destination"), operation: try row.decode("operation"),
                key: try row.decode("key"), attempts: try row.decode("attempts"), error: try row.decode("error"),
                createdAt: try row.decode("created_at"), deadLetteredAt: try row.decode("dead_lettered_at"),
                payload: try row.decode("payload"))
        }
    }

    /// Moves the selected dead letters back into `outbox.events` with their original ids (a stream
    /// entry still carries the id it would have had), zero attempts, available now, marked
    /// `requeued_at` (the relay deduplicates them by their own key: they come after later events of
    /// their key); wakes relays. Returns the count.
    public static func requeue(_ db: PostgresConnection, selection: Selection) async throws -> Int {
        let filter = selection.filter
        return try await db.transaction { tx in
            let moved = try await tx.query(
                """
                WITH d AS (DELETE FROM outbox.dead_letters WHERE \(filter.sql) RETURNING *)
                INSERT INTO outbox.events (id, destination, operation, key, payload, headers, created_at, available_at, attempts, last_error, requeued_at)
                OVERRIDING SYSTEM VALUE
                SELECT id, destination, operation, key, payload, headers, created_at, now(), 0, 'requeued after: ' || error, now() FROM d
                RETURNING destination
                """, filter.parameters)
            for destination in Set(try moved.rows.map { try $0.decode("destination", as: String.self) }) {
                try await tx.query("SELECT pg_notify('outbox_events', $1)", [.text(destination)])
            }
            return moved.rows.count
        }
    }

    /// Deletes the selected dead letters for good. Returns the count.
    public static func purge(_ db: PostgresConnection, selection: Selection) async throws -> Int {
        let filter = selection.filter
        return try await db.query("DELETE FROM outbox.dead_letters WHERE \(filter.sql)", filter.parameters).affectedRows
    }
}
