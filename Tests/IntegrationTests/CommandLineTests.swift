import Foundation
import Testing

@testable import OutboxCore

/// The binaries as an operator runs them.
@Suite struct CommandLineTests {
    @Test func migrateTwiceIsANoOpAndTwoConcurrentRunsBothSucceed() async throws {
        let relay = try TestEnvironment.executable("outbox-relay")
        let migrations = try Migrator(directory: TestEnvironment.schemaDirectory, logger: TestEnvironment.logger).migrations
        try await TestEnvironment.withFreshDatabase(migrated: false) { url, db in
            let env = ["OUTBOX_POSTGRES_URL": url]
            async let first = runProcess(relay, ["migrate", "--config", "config/outbox.yaml"], environment: env)
            async let second = runProcess(relay, ["migrate", "--config", "config/outbox.yaml"], environment: env)
            let both = try await [first, second]
            #expect(both.map(\.status) == [0, 0], "stderr: \(both.map(\.stderr))")
            #expect(both.filter { $0.stdout.hasPrefix("Applied \(migrations.count) migration(s)") }.count == 1, "\(both.map(\.stdout))")
            #expect(both.filter { $0.stdout.hasPrefix("Database is up to date") }.count == 1, "\(both.map(\.stdout))")

            let again = try await runProcess(relay, ["migrate", "--config", "config/outbox.yaml"], environment: env)
            #expect(again.status == 0)
            #expect(again.stdout == "Database is up to date (\(migrations.count) migrations already applied).\n")
            let versions = try await db.query("SELECT version FROM outbox.schema_migrations ORDER BY version")
            #expect(try versions.rows.map { try $0.decode("version", as: Int.self) } == migrations.map(\.version))
        }
    }

    @Test func migrateRefusesAnEditedAppliedMigration() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { _, db in
            try await db.query("UPDATE outbox.schema_migrations SET checksum = 'edited' WHERE version = 1")
            let error = try await #require(throws: Migrator.MigrationError.self) {
                try await Migrator(directory: TestEnvironment.schemaDirectory, logger: TestEnvironment.logger).migrate(db)
            }
            #expect(error.message.contains("001_outbox.sql was changed after it was applied"))
        }
    }

    @Test func badConfigurationExits2WithOneLineNamingTheKey() async throws {
        let relay = try TestEnvironment.executable("outbox-relay")
        let missing = try await runProcess(relay, ["migrate", "--config", "/nonexistent/outbox.yaml"])
        #expect(missing.status == 2)
        #expect(missing.stderr == "config: config file /nonexistent/outbox.yaml not found (pass --config PATH)\n")

        let negative = try await runProcess(
            relay, ["check", "--config", "config/outbox.yaml"], environment: ["OUTBOX_POSTGRES_CONNECT_TIMEOUT": "-1s"])
        #expect(negative.status == 2)
        #expect(negative.stderr == "config: postgres.connect_timeout: must be positive, got \"-1s\"\n")
    }

    @Test func checkReportsEveryStoreWithoutShowingSecrets() async throws {
        for binary in ["outbox-relay", "outbox-reconciler"] {
            let result = try await runProcess(try TestEnvironment.executable(binary), ["check", "--config", "config/outbox.yaml"])
            #expect(result.status == 0, "\(binary): \(result.stdout) \(result.stderr)")
            let lines = result.stdout.split(separator: "\n")
            #expect(lines.count == 3)
            #expect(lines.allSatisfy { $0.hasPrefix("ok ") })
            for secret in try secrets() {
                #expect(!result.stdout.contains(secret) && !result.stderr.contains(secret), "\(binary) printed a secret")
            }
        }
    }

    @Test func unreachableStoreMakesCheckFailWithoutSecrets() async throws {
        let result = try await runProcess(
            try TestEnvironment.executable("outbox-relay"), ["check", "--config", "config/outbox.yaml"],
            environment: ["OUTBOX_REDIS_URL": "redis://:topsecret@127.0.0.1:1/0"])
        #expect(result.status == 2)
        #expect(result.stdout.contains("FAIL redis"))
        #expect(!result.stdout.contains("topsecret"))
    }

    @Test func helpExplainsEveryCommand() async throws {
        let relay = try await runProcess(try TestEnvironment.executable("outbox-relay"), ["--help"])
        #expect(relay.status == 0)
        #expect(relay.stdout.contains("migrate"))
        #expect(relay.stdout.contains("check"))
        let migrate = try await runProcess(try TestEnvironment.executable("outbox-relay"), ["migrate", "--help"])
        #expect(migrate.stdout.contains("--config"))
        let reconciler = try await runProcess(try TestEnvironment.executable("outbox-reconciler"), ["--help"])
        #expect(reconciler.status == 0)
        #expect(reconciler.stdout.contains("check"))
    }

    func secrets() throws -> [String] {
        [
            URLParts(try TestEnvironment.variable("OUTBOX_POSTGRES_URL"))?.password,
            URLParts(try TestEnvironment.variable("OUTBOX_REDIS_URL"))?.password,
            try TestEnvironment.qdrantAPIKey(),
        ].compactMap { $0 }
    }
}
