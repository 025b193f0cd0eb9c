import Foundation
import Logging

/// Applies `schema/NNN_name.sql` files in order, each in its own transaction, recording
/// versions in `outbox.schema_migrations`.
///
/// A session-level advisory lock serialises concurrent runs: the second waits, then finds nothing
/// to do. An already-applied file whose text changed is an error (edit by adding a new file).
public struct Migrator: Sendable {
    public struct Migration: Sendable, Equatable {
        public let version: Int
        public let name: String
        public let sql: String
    }

    public struct Report: Sendable {
        public var applied: [String] = []
        public var alreadyApplied = 0
    }

    public struct MigrationError: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Advisory lock key (namespace, id); distinct from `outbox.enqueue`'s per-key slots.
    static let lockNamespace: Int64 = 1_869_575_286

    public let migrations: [Migration]
    let logger: Logger

    /// Loads the migrations in `directory`. File names must look like `001_outbox.sql`.
    public init(directory: String, logger: Logger) throws {
        let files: [String]
        do {
            files = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw MigrationError(message: "cannot read schema directory \(directory): \(error.localizedDescription)")
        }
        var migrations: [Migration] = []
        for file in files where file.hasSuffix(".sql") {
            guard let underscore = file.firstIndex(of: "_"), let version = Int(file[..<underscore]) else {
                throw MigrationError(message: "\(directory)/\(file): migration names must look like 001_name.sql")
            }
            guard let data = FileManager.default.contents(atPath: directory + "/" + file) else {
                throw MigrationError(message: "cannot read \(directory)/\(file)")
            }
            if let clash = migrations.first(where: { $0.version == version }) {
                throw MigrationError(message: "\(file) and \(clash.name) both claim version \(version)")
            }
            migrations.append(Migration(version: version, name: file, sql: String(decoding: data, as: UTF8.self)))
        }
        guard !migrations.isEmpty else { throw MigrationError(message: "no migrations (*.sql) in \(directory)") }
        self.migrations = migrations.sorted { $0.version < $1.version }
        self.logger = logger
    }

    /// Where a database's outbox schema stands against these migrations.
    public struct Standing: Sendable {
        /// `outbox.schema_migrations` exists (`outbox-relay migrate` ran at least once).
        public var migrated = false
        /// Migrations of this binary not applied yet.
        public var pending: [String] = []
        /// Versions applied by a newer binary, oldest first: this one does not know them.
        public var newer: [(version: Int, name: String)] = []

        /// Why a daemon of this binary cannot work on the database, or nil: a database migrated by a
        /// newer binary may hold what this one would misread.
        public var newerProblem: ConfigurationError? {
            guard let newest = newer.last else { return nil }
            return ConfigurationError(
                key: "schema.directory",
                problem: "the database's outbox schema is at version \(newest.version) (\(newest.name)), newer than this binary knows; "
                    + "run the release that applied it (or point schema.directory at its schema/)")
        }

        /// What `check` reports, naming the key to change, or nil when the schema is exactly this binary's.
        public var problem: ConfigurationError? {
            if !migrated { return ConfigurationError(key: "postgres.url", problem: "outbox schema missing: run `outbox-relay migrate`") }
            if let newerProblem { return newerProblem }
            guard pending.isEmpty else {
                return ConfigurationError(
                    key: "postgres.url",
                    problem: "\(pending.count) migration(s) not applied (\(pending.joined(separator: ", "))): run `outbox-relay migrate`")
            }
            return nil
        }
    }

    /// Reads the versions applied to the database behind `connection`.
    public func standing(of connection: PostgresConnection) async throws -> Standing {
        var standing = Standing()
        let exists = try await connection.query("SELECT to_regclass('outbox.schema_migrations') IS NOT NULL AS present")
        standing.migrated = try exists.first?.decode("present", as: Bool.self) ?? false
        guard standing.migrated else {
            standing.pending = migrations.map(\.name)
            return standing
        }
        var applied: [Int: String] = [:]
        for row in try await connection.query("SELECT version, name FROM outbox.schema_migrations").rows {
            applied[try row.decode("version")] = try row.decode("name")
        }
        let newest = migrations.last?.version ?? 0
        standing.pending = migrations.filter { applied[$0.version] == nil }.map(\.name)
        standing.newer = applied.filter { $0.key > newest }.map { (version: $0.key, name: $0.value) }.sorted { $0.version < $1.version }
        return standing
    }

    /// Applies what is pending. Safe to run concurrently from several processes.
    @discardableResult
    public func migrate(_ connection: PostgresConnection) async throws -> Report {
        try await connection.query("SELECT pg_advisory_lock($1::int, 0)", [.int(Self.lockNamespace)])
        do {
            let report = try await applyPending(connection)
            try await connection.query("SELECT pg_advisory_unlock($1::int, 0)", [.int(Self.lockNamespace)])
            return report
        } catch {
            // The lock is session-scoped; closing ends the session and releases it.
            await connection.close()
            throw error
        }
    }

    private func applyPending(_ connection: PostgresConnection) async throws -> Report {
        try await connection.simpleQuery("""
            CREATE SCHEMA IF NOT EXISTS outbox;
            CREATE TABLE IF NOT EXISTS outbox.schema_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """)
        let rows = try await connection.query("SELECT version, name, checksum FROM outbox.schema_migrations")
        var applied: [Int: (name: String, checksum: String)] = [:]
        for row in rows.rows {
            applied[try row.decode("version")] = (try row.decode("name"), try row.decode("checksum"))
        }
        let newest = migrations.last?.version ?? 0
        if let newer = applied.filter({ $0.key > newest }).max(by: { $0.key < $1.key }) {
            // An older binary must not report "up to date" on a schema it does not know.
            throw MigrationError(message: """
                the database's outbox schema is at version \(newer.key) (\(newer.value.name)), newer than this binary's \
                \(newest) (\(migrations.last?.name ?? "")): run the release that applied it
                """)
        }
        var report = Report()
        for migration in migrations {
            if let done = applied[migration.version] {
                let checksum = try await connection.query("SELECT md5($1) AS sum", [.text(migration.sql)])
                    .first!.decode("sum", as: String.self)
                guard checksum == done.checksum else {
                    throw MigrationError(message: """
                        \(migration.name) was changed after it was applied (as \(done.name)); \
                        add a new migration instead of editing an applied one
                        """)
                }
                report.alreadyApplied += 1
                continue
            }
            logger.info("Applying migration", metadata: ["migration.name": "\(migration.name)"])
            do {
                try await connection.transaction { tx in
                    try await tx.simpleQuery(migration.sql)
                    try await tx.query(
                        "INSERT INTO outbox.schema_migrations (version, name, checksum) VALUES ($1, $2, md5($3))",
                        [.int(Int64(migration.version)), .text(migration.name), .text(migration.sql)])
                }
            } catch let error as PostgresError {
                throw MigrationError(message: "\(migration.name) failed: \(error)")
            }
            report.applied.append(migration.name)
        }
        return report
    }
}
