import OutboxCore

/// The relay's side of the wake-up handshake with `outbox.enqueue` (schema/012): a writer notifies
/// only when it cannot take the destination's wake lock shared, that is when a relay holds it
/// (or waits for it). A relay *arms* (takes it exclusively, at session level) before it sleeps and
/// claims once more after arming: a writer that did not notify held the lock shared until its
/// commit, so that claim sees its event. Once the relay finds work it *disarms*, and writers
/// commit without a notification, which Postgres serialises (docs/DESIGN.md, "Wake-up").
enum WakeLock {
    /// Advisory lock (namespace, object) of each destination; the numbers are schema/012's.
    static let namespace: Int64 = 1_869_575_286
    static func object(_ destination: OutboxEvent.Destination) -> Int64 { destination == .qdrant ? 1 : 2 }

    enum Arming: String {
        /// This session holds the lock: writers notify from now on.
        case armed
        /// Another relay holds it: writers notify it, and the notification reaches this relay's
        /// listener too, so sleeping is safe.
        case armedElsewhere
        /// A writer holds it shared: its transaction commits without a notification. Claim again shortly.
        case writerCommitting
    }

    static func arm(_ db: PostgresConnection, _ destination: OutboxEvent.Destination) async throws -> Arming {
        let row = try await db.query(
            """
            SELECT CASE
                WHEN pg_try_advisory_lock($1::int, $2::int) THEN 'armed'
                WHEN EXISTS (SELECT FROM pg_locks
                             WHERE locktype = 'advisory' AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2
                               AND mode = 'ExclusiveLock' AND granted AND pid <> pg_backend_pid()
                               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
                    THEN 'armedElsewhere'
                ELSE 'writerCommitting' END AS arming
            """, [.int(namespace), .int(object(destination))])
        return Arming(rawValue: try row.first?.decode("arming", as: String.self) ?? "") ?? .writerCommitting
    }

    static func disarm(_ db: PostgresConnection, _ destination: OutboxEvent.Destination) async throws {
        _ = try await db.query("SELECT pg_advisory_unlock($1::int, $2::int)", [.int(namespace), .int(object(destination))])
    }
}
