import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

extension HostileInput {
    /// Hostile configuration and command-line input: a config file with one mistake, environment
    /// overrides out of range, unreachable and unresolvable hosts. Every command exits 2 with one
    /// stderr line naming the key (never the password); `serve` keeps waiting for what is down.
    ///
    /// Part of ``HostileInput``, which runs its suites' tests one at a time.
    @Suite struct HostileConfigurationTests {
        /// A config file with one mistake, run through every command: exit 2, and stderr is exactly one
        /// line naming the key.
        @Test func badConfigFilesExit2WithOneLineNamingTheKeyFromEveryCommand() async throws {
            let base = try String(contentsOf: TestEnvironment.repositoryRoot.appendingPathComponent("config/outbox.yaml"), encoding: .utf8)
            let cases: [(String, String)] = [
                (base.replacingOccurrences(of: "  batch_size: 500", with: "  batch_sise: 500"),
                 "config: relay.batch_sise: unknown key; did you mean relay.batch_size?"),
                (base + "\nkafka:\n  brokers: localhost:9092\n",
                 "config: kafka: unknown key (known here: embedding, postgres, qdrant, reconciler, redis, relay, schema, tables, tracing)"),
                (base.replacingOccurrences(of: "    text_column: content", with: "    text_colum: content"),
                 "config: tables.extractions.text_colum: unknown key; did you mean tables.extractions.text_column?"),
                (base.replacingOccurrences(of: "{size: 384, distance: Cosine}", with: "{size: 384, distance: Cosine, on_disk: true}"),
                 "config: qdrant.collections.extractions.on_disk: unknown key (known here: distance, ordering, shard_key, shard_key_field, size)"),
                (base.replacingOccurrences(of: "  max_attempts: 25", with: "  max_attempts: [25]"),
                 "config: relay.max_attempts: expected a single value, got a list"),
                (base.replacingOccurrences(of: "  max_attempts: 25", with: "  max_attempts: plenty"),
                 #"config: relay.max_attempts: expected an integer, got "plenty""#),
                (base.replacingOccurrences(of: "  poll_interval: 5s", with: "  poll_interval: -5s"),
                 #"config: relay.poll_interval: must be positive, got "-5s""#),
                (base.replacingOccurrences(of: "  connect_timeout: 5s\n\nredis", with: "  connect_timeout: 1e300s\n\nredis"),
                 #"config: postgres.connect_timeout: must be at most 36500d, got "1e300s""#),
            ]
            let relay = try TestEnvironment.executable("outbox-relay")
            let reconciler = try TestEnvironment.executable("outbox-reconciler")
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-config-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: dir) }
            for (i, (yaml, line)) in cases.enumerated() {
                #expect(yaml != base, "case \(i) changed nothing in the shipped config")
                let path = dir.appendingPathComponent("case\(i).yaml").path
                // Relative paths (secrets, schema) resolve against the config's folder: keep them working.
                try yaml.replacingOccurrences(of: "../", with: TestEnvironment.repositoryRoot.path + "/").write(toFile: path, atomically: true, encoding: .utf8)
                for (binary, arguments) in [
                    (relay, ["check"]), (relay, ["migrate"]), (relay, ["status"]), (relay, ["serve"]), (relay, ["dead-letters", "list"]),
                    (reconciler, ["reconcile", "--dry-run"]), (reconciler, ["serve"]),
                ] {
                    let result = try await runProcess(binary, arguments + ["--config", path])
                    #expect(result.status == 2, "\(binary.lastPathComponent) \(arguments): \(result.stderr)")
                    #expect(result.stderr == line + "\n", "\(binary.lastPathComponent) \(arguments)")
                }
            }
            // Environment overrides go through the same checks, and are named by their variable.
            let fromEnvironment = try await runProcess(
                relay, ["serve", "--config", "config/outbox.yaml"], environment: ["OUTBOX_RELAY_SHUTDOWN_GRACE": "-1s"])
            #expect(fromEnvironment.status == 2)
            #expect(fromEnvironment.stderr == "config: OUTBOX_RELAY_SHUTDOWN_GRACE (relay.shutdown_grace): must be positive, got \"-1s\"\n")
        }

        /// Unreachable and unresolvable hosts: one-shot commands exit 2 with one line naming the key,
        /// without the password; `serve` keeps running, /livez 200, /readyz 503 naming the store.
        @Test func unreachableHostsExit2NamingTheKeyOrKeepServeWaiting() async throws {
            let relay = try TestEnvironment.executable("outbox-relay")
            let reconciler = try TestEnvironment.executable("outbox-reconciler")
            let password = "pw-\(UUID().uuidString.prefix(12))"
            let hosts = [
                ("unresolvable", "postgresql://outbox:\(password)@no-such-host.invalid:5432/outbox", "could not translate host name"),
                ("refused", "postgresql://outbox:\(password)@127.0.0.1:1/outbox", "Connection refused"),
            ]
            for (what, url, reason) in hosts {
                for (binary, arguments) in [(relay, ["migrate"]), (relay, ["status"]), (relay, ["dead-letters", "list"]), (reconciler, ["reconcile"])] {
                    let result = try await runProcess(binary, arguments + ["--config", "config/outbox.yaml"], environment: ["OUTBOX_POSTGRES_URL": url])
                    let name = "\(binary.lastPathComponent) \(arguments.joined(separator: " ")) (\(what))"
                    #expect(result.status == 2, "\(name): \(result.stderr)")
                    #expect(result.stderr.hasPrefix("postgres.url: cannot reach Postgres at postgresql://outbox:***@"), "\(name): \(result.stderr)")
                    #expect(result.stderr.contains(reason), "\(name): \(result.stderr)")
                    #expect(result.stderr.filter { $0 == "\n" }.count == 1, "\(name): not one line: \(result.stderr)")
                    #expect(!result.stderr.contains(password) && !result.stdout.contains(password), "\(name) printed the password")
                }
                let check = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: ["OUTBOX_POSTGRES_URL": url])
                #expect(check.status == 2)
                let failing = check.stdout.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
                #expect(failing.count == 1 && failing[0].contains("postgres.url: ") && failing[0].contains(reason), "\(check.stdout)")
                #expect(!check.stdout.contains(password))
            }
            let qdrantDown = try await runProcess(
                reconciler, ["reconcile", "--dry-run", "--config", "config/outbox.yaml"],
                environment: ["OUTBOX_QDRANT_URL": "http://no-such-host.invalid:6333"])
            #expect(qdrantDown.status == 2)
            #expect(qdrantDown.stderr.hasPrefix("qdrant.url: cannot reach Qdrant at http://no-such-host.invalid:6333: "), "\(qdrantDown.stderr)")
            #expect(qdrantDown.stderr.filter { $0 == "\n" }.count == 1)
            let redisDown = try await runProcess(
                relay, ["check", "--config", "config/outbox.yaml"], environment: ["OUTBOX_REDIS_URL": "redis://:\(password)@no-such-host.invalid:6379/0"])
            #expect(redisDown.status == 2)
            #expect(redisDown.stdout.contains("FAIL redis") && redisDown.stdout.contains("redis.url: "), "\(redisDown.stdout)")
            #expect(!redisDown.stdout.contains(password))

            // serve: a server that is down (or a name that does not resolve yet) is waited for.
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
                let noPostgres = try DaemonProcess.relay(databaseURL: hosts[0].1)
                let noRedis = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_REDIS_URL": "redis://:\(password)@127.0.0.1:1/0"])
                for (process, reason) in [(noPostgres, "postgres unreachable: "), (noRedis, "redis unreachable: ")] {
                    var body = ""
                    try await eventually("/readyz 503 with \(reason) (last: \(body))", timeout: .seconds(20)) {
                        guard let r = await process.get("/readyz") else { return false }
                        body = r.body
                        return r.status == 503 && r.body.contains(reason)
                    }
                    #expect(!body.contains(password))
                    #expect(await process.get("/livez")?.status == 200)
                }
                try await Task.sleep(for: .seconds(3))
                #expect(noPostgres.process.isRunning && noRedis.process.isRunning, "serve exited instead of waiting")
                #expect(!noPostgres.log.contains(password) && !noRedis.log.contains(password), "serve logged the password")
            }
        }
    }
}
