import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

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

    /// schema/013 changes what relays rely on (writers no longer wait for each other): it refuses to
    /// run while a relay session — necessarily from before it — is connected, naming it.
    @Test func migration013RefusesToRunBesideAnOlderRelay() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: false) { url, db in
            let before = FileManager.default.temporaryDirectory.appendingPathComponent(TestEnvironment.uniqueName("schema"))
            try FileManager.default.createDirectory(at: before, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: before) }
            for file in try FileManager.default.contentsOfDirectory(atPath: TestEnvironment.schemaDirectory) where file < "013" {
                try FileManager.default.copyItem(atPath: TestEnvironment.schemaDirectory + "/" + file, toPath: before.appendingPathComponent(file).path)
            }
            _ = try await Migrator(directory: before.path, logger: TestEnvironment.logger).migrate(db)
            var relayConfiguration = PostgresConfiguration(url: url)
            relayConfiguration.applicationName = "outbox-relay"
            let olderRelay = try await PostgresConnection.connect(relayConfiguration, logger: TestEnvironment.logger)
            let migrator = try Migrator(directory: TestEnvironment.schemaDirectory, logger: TestEnvironment.logger)
            let error = try await #require(throws: Migrator.MigrationError.self) { try await migrator.migrate(db) }
            #expect(error.message.contains("stop every outbox-relay on this database first (connected: "), "\(error.message)")
            await olderRelay.close()
            let report = try await migrator.migrate(db)
            #expect(report.applied.first?.hasPrefix("013_") == true, "\(report.applied)")
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
        #expect(negative.stderr == "config: OUTBOX_POSTGRES_CONNECT_TIMEOUT (postgres.connect_timeout): must be positive, got \"-1s\"\n")
    }

    @Test func checkReportsEveryStoreWithoutShowingSecrets() async throws {
        _ = try await TestEnvironment.migratedConnection()  // check fails on a database not (yet) migrated
        for binary in ["outbox-relay", "outbox-reconciler"] {
            let result = try await runProcess(try TestEnvironment.executable(binary), ["check", "--config", "config/outbox.yaml"])
            #expect(result.status == 0, "\(binary): \(result.stdout) \(result.stderr)")
            let lines = result.stdout.split(separator: "\n")
            #expect(lines.count == (binary == "outbox-relay" ? 3 : 2), "\(binary): \(result.stdout)")  // the reconciler: no Redis without an alert channel
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

    /// `check` runs what `serve` needs of Postgres: on a database never migrated, one migrated by a
    /// newer binary, or with a mapped table missing, it fails (exit 2) naming what to change. (Before,
    /// it said ok and exited 0 on the first and the last, where `serve` could not run.) `status` on a
    /// database never migrated says to migrate; requeueing an id that is no dead letter exits 1.
    @Test func checkFailsWhereServeCannotRunAndAnOlderBinaryRefusesANewerSchema() async throws {
        let relay = try TestEnvironment.executable("outbox-relay")
        try await TestEnvironment.withFreshDatabase(migrated: false) { url, db in
            let env = ["OUTBOX_POSTGRES_URL": url]
            let unmigrated = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: env)
            #expect(unmigrated.status == 2, "\(unmigrated.stdout)")
            #expect(unmigrated.stdout.contains("FAIL postgres"), "\(unmigrated.stdout)")
            #expect(unmigrated.stdout.contains("postgres.url: outbox schema missing: run `outbox-relay migrate`"), "\(unmigrated.stdout)")
            let status = try await runProcess(relay, ["status", "--config", "config/outbox.yaml"], environment: env)
            #expect(status.status == 2)
            #expect(status.stderr.contains("the outbox schema is missing in postgresql://"), "\(status.stderr)")
            #expect(status.stderr.contains("run `outbox-relay migrate` first"), "\(status.stderr)")

            #expect(try await runProcess(relay, ["migrate", "--config", "config/outbox.yaml"], environment: env).status == 0)
            let healthy = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: env)
            #expect(healthy.status == 0, "\(healthy.stdout)")
            #expect(healthy.stdout.contains("outbox schema up to date, 1 mapped table(s) found"), "\(healthy.stdout)")
            let unknown = try await runProcess(relay, ["dead-letters", "requeue", "--id", "424242", "--config", "config/outbox.yaml"], environment: env)
            #expect(unknown.status == 1)
            #expect(unknown.stderr == "no dead letter with id 424242 (see `outbox-relay dead-letters list`)\n", "\(unknown.stderr)")

            // A table mapped in config that the database does not have.
            let config = try TestEnvironment.configCopy {
                $0.replacingOccurrences(of: "    collection: extractions\n", with: """
                        collection: extractions
                      documents:
                        table: public.no_such_documents
                        collection: extractions

                    """)
            }
            defer { try? FileManager.default.removeItem(atPath: config) }
            let unmapped = try await runProcess(relay, ["check", "--config", config], environment: env)
            #expect(unmapped.status == 2, "\(unmapped.stdout) \(unmapped.stderr)")
            #expect(unmapped.stdout.contains("tables.documents: public.no_such_documents has no column"), "\(unmapped.stdout) \(unmapped.stderr)")

            // A configured collection whose vectors in Qdrant have another size: check and serve refuse it.
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let sized = TestEnvironment.uniqueName("sized")
            #expect(try await qdrant.call(.PUT, "/collections/\(sized)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
            let mismatched = try TestEnvironment.configCopy {
                $0.replacingOccurrences(of: "    extractions: {size: 384, distance: Cosine}\n", with: "    extractions: {size: 384, distance: Cosine}\n    \(sized): {size: 8}\n")
            }
            defer { try? FileManager.default.removeItem(atPath: mismatched) }
            let sizes = try await runProcess(relay, ["check", "--config", mismatched], environment: env)
            #expect(sizes.status == 2)
            #expect(sizes.stdout.contains("qdrant.collections.\(sized).size: is 8, but Qdrant's collection \(sized) holds vectors of size 4"), "\(sizes.stdout)")
            let refused = try DaemonProcess.relay(databaseURL: url, config: mismatched)
            #expect(await refused.waitForExit(timeout: .seconds(20)) == 2, "\(refused.log.suffix(1000))")
            #expect(refused.log.contains("qdrant.collections.\(sized).size: is 8"), "\(refused.log.suffix(1000))")
            _ = try await qdrant.call(.DELETE, "/collections/\(sized)")

            // A newer release applied migration 999: this binary's migrate, check and serve refuse it.
            try await db.query("INSERT INTO outbox.schema_migrations (version, name, checksum) VALUES (999, '999_future.sql', 'x')")
            let migrate = try await runProcess(relay, ["migrate", "--config", "config/outbox.yaml"], environment: env)
            #expect(migrate.status != 0)
            #expect(migrate.stderr.contains("version 999 (999_future.sql), newer than this binary's"), "\(migrate.stderr)")
            let newer = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: env)
            #expect(newer.status == 2)
            #expect(newer.stdout.contains("schema.directory: the database's outbox schema is at version 999"), "\(newer.stdout)")
            let serve = try DaemonProcess.relay(databaseURL: url)
            let exit = await serve.waitForExit(timeout: .seconds(20))
            #expect(exit == 2, "serve on a newer schema: \(serve.log.suffix(1000))")
            #expect(serve.log.contains("schema.directory: the database's outbox schema is at version 999"), "\(serve.log.suffix(1000))")
        }
    }

    /// Mistakes in the environment are named by the variable that made them.
    @Test func environmentMistakesNameTheirVariable() async throws {
        let relay = try TestEnvironment.executable("outbox-relay")
        let level = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: ["OUTBOX_LOG_LEVEL": "verbose"])
        #expect(level.status == 2)
        #expect(level.stderr.hasPrefix("config: OUTBOX_LOG_LEVEL: unknown level \"verbose\"; one of trace, debug"), "\(level.stderr)")
        let upper = try await runProcess(relay, ["--help"], environment: ["OUTBOX_LOG_LEVEL": "DEBUG"])
        #expect(upper.status == 0, "a level in capitals is the same level")
        let batch = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: ["OUTBOX_RELAY_BATCH_SIZE": "lots"])
        #expect(batch.status == 2)
        #expect(batch.stderr == "config: OUTBOX_RELAY_BATCH_SIZE (relay.batch_size): expected an integer, got \"lots\"\n", "\(batch.stderr)")
    }

    /// A port already taken exits 2 naming the key, before any worker starts.
    @Test func aHealthPortInUseIsNamedAndNothingStarts() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            let first = try DaemonProcess.relay(databaseURL: url)
            try await first.waitUntilReady()
            let second = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_RELAY_HTTP_PORT": String(first.port)])
            #expect(await second.waitForExit(timeout: .seconds(10)) == 2)
            #expect(second.log.contains("config: relay.http.port: 127.0.0.1:\(first.port) is already in use"), "\(second.log)")
            #expect(!second.log.contains("Worker started"), "\(second.log)")
            let reconciler = try DaemonProcess.reconciler(databaseURL: url, environment: ["OUTBOX_RECONCILER_HTTP_PORT": String(first.port)])
            #expect(await reconciler.waitForExit(timeout: .seconds(10)) == 2)
            #expect(reconciler.log.contains("config: reconciler.http.port: 127.0.0.1:\(first.port) is already in use"), "\(reconciler.log)")
        }
    }

    @Test func everyBinaryTellsItsVersionAndTheCommitItWasBuiltFrom() async throws {
        let head = try await runProcess(URL(fileURLWithPath: "/usr/bin/git"), ["-C", TestEnvironment.repositoryRoot.path, "rev-parse", "--short=12", "HEAD"])
        #expect(head.status == 0, "git rev-parse: \(head.stderr)")
        let revision = head.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(BuildInfo.revision == revision)
        for binary in ["outbox-relay", "outbox-reconciler", "outbox-demo"] {
            let result = try await runProcess(try TestEnvironment.executable(binary), ["--version"])
            #expect(result.status == 0, "\(binary)")
            #expect(result.stdout == "\(BuildInfo.version) (revision \(revision))\n", "\(binary): \(result.stdout)")
        }
    }

    /// Help renders as prose: no stray line-continuation backslash. The reconciler's `check` checks
    /// what the reconciler uses: Redis only when alerts go there.
    @Test func helpRendersCleanlyAndEachCheckChecksWhatItsDaemonUses() async throws {
        for (binary, commands) in [
            ("outbox-relay", [[], ["serve"], ["migrate"], ["status"], ["check"], ["dead-letters", "requeue"]]),
            ("outbox-reconciler", [[], ["serve"], ["reconcile"], ["check"]]), ("outbox-demo", [[]]),
        ] {
            for command in commands {
                let help = try await runProcess(try TestEnvironment.executable(binary), command + ["--help"])
                #expect(help.status == 0)
                #expect(!help.stdout.contains("\\\n") && !help.stdout.contains("\\ "), "\(binary) \(command): \(help.stdout)")
            }
        }
        _ = try await TestEnvironment.migratedConnection()  // check fails on a database not (yet) migrated
        let reconciler = try await runProcess(try TestEnvironment.executable("outbox-reconciler"), ["check", "--config", "config/outbox.yaml"])
        #expect(reconciler.status == 0, "\(reconciler.stdout)")
        #expect(reconciler.stdout.contains("ok   postgres") && reconciler.stdout.contains("ok   qdrant"), "\(reconciler.stdout)")
        #expect(!reconciler.stdout.contains("redis"), "\(reconciler.stdout)")
        // A command line that does not parse: 64 (EX_USAGE) and the usage, as the README says.
        for (binary, arguments) in [("outbox-relay", ["--bogus"]), ("outbox-reconciler", ["reconcile", "--limit", "x"]),
                                    ("outbox-relay", ["dead-letters", "requeue"])] {
            let usage = try await runProcess(try TestEnvironment.executable(binary), arguments)
            #expect(usage.status == 64, "\(binary) \(arguments)")
            #expect(usage.stderr.contains("Usage: \(binary)"), "\(usage.stderr)")
        }
        let withChannel = try await runProcess(
            try TestEnvironment.executable("outbox-reconciler"), ["check", "--config", "config/outbox.yaml"],
            environment: ["OUTBOX_RECONCILER_ALERT_REDIS_CHANNEL": "alerts"])
        #expect(withChannel.stdout.contains("ok   redis"), "\(withChannel.stdout)")
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
