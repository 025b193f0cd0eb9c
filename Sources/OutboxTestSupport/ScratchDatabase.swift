import Foundation
import Logging
import OutboxCore

/// A throwaway database on the server of a Postgres URL, dropped after use. Advisory locks and
/// statistics are per database, so work in one (a 100,000-key backfill, a benchmark's backlog,
/// migrations from scratch) cannot contend with other tests or scenarios.
public enum ScratchDatabase {
    /// Creates a database named `prefix_<random>` next to `server`'s, applies `schema/` from
    /// `schemaDirectory` when given, runs `body` with its URL and a connection to it, and drops it
    /// whether `body` returns or throws. `password` overrides the URL's (`postgres.password_file`).
    public static func with<T>(
        server: PostgresConfiguration, prefix: String, schemaDirectory: String?, logger: Logger,
        _ body: (_ url: String, _ connection: PostgresConnection) async throws -> T
    ) async throws -> T {
        guard var parts = URLParts(server.url) else {
            throw HarnessError("a scratch database needs postgres.url in URL form (postgresql://user@host:port/db)")
        }
        let admin = try await PostgresConnection.connect(server, logger: logger)
        defer { Task { await admin.close() } }
        let name = "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
        try await admin.query("CREATE DATABASE \(name)")
        parts.path = "/" + name
        let password = server.password ?? parts.password ?? ""
        let url = "postgresql://\(parts.user ?? ""):\(password)@\(parts.host):\(parts.port ?? 5432)/\(name)"
        let result: Result<T, any Error>
        do {
            let connection = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: logger)
            if let schemaDirectory { try await Migrator(directory: schemaDirectory, logger: logger).migrate(connection) }
            do { result = .success(try await body(url, connection)) } catch { result = .failure(error) }
            await connection.close()
        } catch {
            result = .failure(error)
        }
        do {
            try await drop(name, admin: admin)
        } catch {
            // The figures or the test's verdict matter more than a leftover database.
            FileHandle.standardError.write(Data("warning: could not drop database \(name): \(error)\n".utf8))
        }
        return try result.get()
    }

    /// `DROP DATABASE … WITH (FORCE)`, waiting out an autovacuum worker in it (after a bulk load):
    /// a role that is not a superuser may not terminate one (42501), and Postgres ends it within a
    /// few seconds; and a replication reader that is still ending (55006, its slot still active).
    static func drop(_ name: String, admin: PostgresConnection) async throws {
        // A database with a replication slot cannot be dropped: end its readers, drop its slots.
        try await admin.query("""
            SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL
            """, [.text(name)])
        for attempt in 1... {
            do {
                try await admin.query("""
                    SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active
                    """, [.text(name)])
                try await admin.query("DROP DATABASE \(name) WITH (FORCE)")
                return
            } catch let error as PostgresError where ["42501", "55006"].contains(error.sqlState) && attempt < 30 {
                try await Task.sleep(for: .milliseconds(500))
            }
        }
    }
}
