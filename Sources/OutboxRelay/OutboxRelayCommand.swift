import ArgumentParser
import Foundation
import Logging
import OutboxCLI
import OutboxCore
import ServiceLifecycle

@main
struct OutboxRelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-relay",
        abstract: "Transactional outbox relay: delivers events from Postgres to Qdrant and Redis.",
        discussion: """
            Writers enqueue events with outbox.enqueue(...) inside their own transactions; the relay delivers them. \
            Configuration: config/outbox.yaml (see docs/CONFIGURATION.md), with OUTBOX_* environment overrides \
            such as OUTBOX_POSTGRES_URL.

            Exit status: 0 success, 1 failure, 2 bad configuration or unreachable service.
            """,
        version: BuildInfo.versionLine,
        subcommands: [Serve.self, Migrate.self, Status.self, DeadLettersCommand.self, CheckCommand.self],
        defaultSubcommand: Serve.self
    )

    static func main() async {
        MallocTuning.apply()  // peak RSS while draining: see MallocTuning
        await main(nil)
    }
}

extension OutboxRelayCommand {
    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Apply pending schema migrations (schema/*.sql) under an advisory lock.",
            discussion: """
                Idempotent: a second run applies nothing. Concurrent runs are safe: one applies, the others wait \
                for it and then find nothing to do. The migrations folder is schema.directory in the config \
                (default: ../schema, relative to the config file).
                """)

        @OptionGroup var options: GlobalOptions

        func run() async throws {
            let logger = CommandSupport.bootstrapLogging(label: "outbox-relay.migrate")
            let config = await CommandSupport.loadConfiguration(path: options.config)
            let migrator: Migrator
            do {
                migrator = try Migrator(directory: config.schemaDirectory, logger: logger)
            } catch {
                CommandSupport.fail("migrate: \(error)", exitCode: 2)
            }
            do {
                var postgres = config.postgres
                postgres.applicationName = "outbox-relay-migrate"
                let connection = try await PostgresConnection.connect(postgres, logger: logger)
                let report = try await migrator.migrate(connection)
                if report.applied.isEmpty {
                    print("Database is up to date (\(report.alreadyApplied) migrations already applied).")
                } else {
                    print("Applied \(report.applied.count) migration(s): \(report.applied.joined(separator: ", ")).")
                }
            } catch let error as PostgresError where error.code == .connectionFailed {
                CommandSupport.exitIfUnreachable(error, config)
                CommandSupport.fail("migrate: \(error)", exitCode: 2)
            } catch {
                CommandSupport.fail("migrate: \(error)", exitCode: 1)
            }
        }
    }

}
