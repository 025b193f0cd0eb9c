import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

extension HostileInput {
    /// Secrets: the database password, the Qdrant api-key and the Redis password, scanned for in every
    /// log line (at debug level), /status, /readyz and /metrics body, stored error, one-shot error and
    /// --help output of the daemons and commands, while healthy, failing, and unable to connect.
    ///
    /// Part of ``HostileInput``, which runs its suites' tests one at a time.
    @Suite struct HostileSecretLeakTests {
        /// The database password, the Qdrant api-key and the Redis password appear in no log line of
        /// the daemons at debug level (while delivering, failing, and failing to connect), no /status,
        /// /readyz or /metrics body, no stored error, no one-shot error and no --help output.
        @Test func secretsAppearInNoLogLineErrorStatusBodyOrHelp() async throws {
            let secrets = try Self.secrets()
            #expect(secrets.count == 3, "the test services must have all three secrets set")
            var outputs: [(String, String)] = []
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
                let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
                let collection = TestEnvironment.uniqueName("secrets")
                #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
                let redis = try await TestEnvironment.redis()
                let wrongType = TestEnvironment.uniqueName("secrets")
                try await redis.command("SET", wrongType, "not a stream")
                try await db.transaction { tx in
                    try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection, id: .uuid(UUID()), vector: [1, 0, 0, 0]), on: tx)
                    try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection, id: .uuid(UUID()), vector: [1, 0]), on: tx)  // 400
                    try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection + "-missing", id: .uuid(UUID()), vector: [1]), on: tx)  // 404
                    try await OutboxWriter.enqueue(.redisXAdd(stream: wrongType, fields: ["a": "b"], key: "w"), on: tx)  // WRONGTYPE
                    try await OutboxWriter.enqueue(.redisSet(key: wrongType + ":ok", value: "v", key: "s"), on: tx)
                }
                let debug = ["OUTBOX_LOG_LEVEL": "debug"]
                // Healthy relay (secrets from the URLs and the *_file keys of the shipped config).
                let healthy = try DaemonProcess.relay(databaseURL: url, environment: debug)
                try await eventually("drain", timeout: .seconds(60)) {
                    try await db.count("outbox.events") == 0
                }
                // Relays that cannot connect: wrong Qdrant key, Redis and Postgres unreachable, the
                // secrets passed through OUTBOX_*_PASSWORD / OUTBOX_QDRANT_API_KEY this time.
                var bare = try #require(URLParts(url))
                bare.password = nil
                let failing = try DaemonProcess.relay(databaseURL: "postgresql://\(bare.user ?? "")@\(bare.host):\(bare.port ?? 5432)\(bare.path)", environment: debug.merging([
                    "OUTBOX_POSTGRES_PASSWORD": secrets[0], "OUTBOX_REDIS_URL": "redis://127.0.0.1:1/0", "OUTBOX_REDIS_PASSWORD": secrets[1],
                    "OUTBOX_QDRANT_API_KEY": secrets[2] + "-wrong",
                ]) { $1 })
                try await db.query("SELECT outbox.enqueue('qdrant', 'upsert', 'x', $1::jsonb)", [
                    .jsonb(#"{"collection": "\#(collection)", "id": 1, "vector": [1, 0, 0, 0]}"#)])
                let unreachable = try DaemonProcess.relay(
                    databaseURL: "postgresql://outbox:\(secrets[0])@127.0.0.1:1/outbox", environment: debug.merging(["OUTBOX_RELAY_POLL_INTERVAL": "1s"]) { $1 })
                try await eventually("the failing relays report their failures", timeout: .seconds(30)) {
                    let a = await failing.get("/readyz")?.body ?? "", b = await unreachable.get("/readyz")?.body ?? ""
                    return a.contains("redis unreachable") && b.contains("postgres unreachable")
                }
                try await eventually("the wrong api key is refused", timeout: .seconds(30)) {
                    if failing.log.contains("401") { return true }
                    return (await failing.get("/status")?.body ?? "").contains("401")
                }
                let reconciler = try DaemonProcess.reconciler(databaseURL: url, environment: debug)
                try await Task.sleep(for: .seconds(3))
                for (name, process) in [("healthy", healthy), ("failing", failing), ("unreachable", unreachable)] {
                    for path in ["/status", "/readyz", "/metrics", "/livez"] {
                        outputs.append(("\(name) relay \(path)", await process.get(path)?.body ?? ""))
                    }
                }
                for path in ["/status", "/readyz", "/metrics"] {
                    outputs.append(("reconciler \(path)", await reconciler.get(path)?.body ?? ""))
                }
                reconciler.signal(SIGKILL)
                for (name, process) in [("healthy", healthy), ("failing", failing), ("unreachable", unreachable)] {
                    process.signal(SIGKILL)
                    _ = await process.waitForExit(timeout: .seconds(5))
                    outputs.append(("\(name) relay log", process.log))
                    #expect(process.log.contains("debug"), "\(name) relay did not log at debug level")
                }
                outputs.append(("reconciler log", reconciler.log))
                let stored = try await db.query(
                    "SELECT coalesce(string_agg(error, E'\\n'), '') AS e FROM outbox.dead_letters").first!.decode("e", as: String.self)
                let lastErrors = try await db.query(
                    "SELECT coalesce(string_agg(last_error, E'\\n'), '') AS e FROM outbox.events").first!.decode("e", as: String.self)
                #expect(stored.contains("WRONGTYPE"), "the run produced no dead letters to look at: \(stored)")
                outputs.append(("dead letter errors", stored))
                outputs.append(("pending last_error", lastErrors))
                try await redis.command("DEL", wrongType, wrongType + ":ok")
                _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
            }
            // One-shot commands failing to connect with the secrets in play.
            for (binary, arguments, env) in [
                ("outbox-relay", ["status"], ["OUTBOX_POSTGRES_URL": "postgresql://outbox:\(secrets[0])@127.0.0.1:1/outbox"]),
                ("outbox-relay", ["migrate"], ["OUTBOX_POSTGRES_PASSWORD": secrets[0] + "x"]),
                ("outbox-relay", ["check"], ["OUTBOX_REDIS_URL": "redis://:\(secrets[1])@127.0.0.1:1/0", "OUTBOX_QDRANT_URL": "http://127.0.0.1:1"]),
                ("outbox-reconciler", ["reconcile", "--dry-run"], ["OUTBOX_QDRANT_URL": "http://127.0.0.1:1"]),
                ("outbox-reconciler", ["check"], ["OUTBOX_QDRANT_API_KEY": secrets[2] + "-wrong"]),
            ] {
                let r = try await runProcess(try TestEnvironment.executable(binary), arguments + ["--config", "config/outbox.yaml"], environment: env)
                outputs.append(("\(binary) \(arguments.joined(separator: " "))", r.stdout + r.stderr))
            }
            // --help of every command.
            for (binary, commands) in [
                ("outbox-relay", [[], ["serve"], ["migrate"], ["status"], ["check"], ["dead-letters"], ["dead-letters", "list"],
                                  ["dead-letters", "requeue"], ["dead-letters", "purge"]]),
                ("outbox-reconciler", [[], ["serve"], ["reconcile"], ["check"]]),
                ("outbox-demo", [[]]),
            ] {
                for command in commands {
                    let r = try await runProcess(try TestEnvironment.executable(binary), command + ["--help"])
                    #expect(r.status == 0, "\(binary) \(command) --help")
                    #expect(r.stdout.contains("--config") || command == ["dead-letters"] || binary == "outbox-demo" || command.isEmpty, "\(binary) \(command)")
                    outputs.append(("\(binary) \(command.joined(separator: " ")) --help", r.stdout + r.stderr))
                }
            }
            #expect(outputs.count >= 40)
            for (name, text) in outputs {
                #expect(!text.isEmpty || name.contains("last_error"), "\(name) produced no output to check")
                for (index, secret) in secrets.enumerated() {
                    #expect(!text.contains(secret), "\(name) shows secret #\(index): \(Self.context(of: secret, in: text))")
                }
            }
        }

        /// The database password in every form `postgres.url` accepts (a URL's `?password=`, libpq
        /// conninfo bare and quoted; the userinfo form is the test above's), right and wrong, and a
        /// Qdrant URL carrying userinfo and `?api-key=`: absent from `serve`'s log at debug level and
        /// its `/status`, and from `check`'s and `reconcile`'s output. (Before, only the userinfo
        /// form of a Postgres or Redis URL was masked.)
        @Test func secretsInEveryAddressFormAppearNowhere() async throws {
            let qdrantSecrets = ["qd-userinfo-\(UUID().uuidString.prefix(8))", "qd-apikey-\(UUID().uuidString.prefix(8))"]
            let badQdrant = "http://admin:\(qdrantSecrets[0])@127.0.0.1:1/?api-key=\(qdrantSecrets[1])"
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
                let parts = try #require(URLParts(url))
                let password = try #require(parts.password)
                let (user, host, port, database) = (parts.user ?? "", parts.host, parts.port ?? 5432, String(parts.path.dropFirst()))
                var outputs: [(String, String)] = []
                for pw in [password, password + "-wrong"] {
                    let encoded = pw.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? pw
                    let forms = [
                        "postgresql://\(user)@\(host):\(port)/\(database)?sslmode=disable&password=\(encoded)",
                        "host=\(host) port=\(port) user=\(user) password=\(pw) dbname=\(database)",
                        "host=\(host) port=\(port) user=\(user) password='\(pw)' dbname=\(database) connect_timeout=5",
                    ]
                    for form in forms {
                        let env = ["OUTBOX_POSTGRES_URL": form, "OUTBOX_QDRANT_URL": badQdrant, "OUTBOX_LOG_LEVEL": "debug"]
                        for (binary, arguments) in [("outbox-relay", ["check"]), ("outbox-relay", ["status"]), ("outbox-reconciler", ["reconcile", "--dry-run"])] {
                            let r = try await runProcess(try TestEnvironment.executable(binary), arguments + ["--config", "config/outbox.yaml"], environment: env)
                            outputs.append(("\(binary) \(arguments.joined(separator: " ")) with \(SecretAddress.redacted(form))", r.stdout + r.stderr))
                        }
                        guard pw == password else { continue }
                        let relay = try DaemonProcess.relay(databaseURL: form, environment: env)
                        try await eventually("relay on \(SecretAddress.redacted(form)) reports its state", timeout: .seconds(20)) {
                            (await relay.get("/status"))?.status == 200 && relay.log.contains("debug")
                        }
                        outputs.append(("serve /status with \(SecretAddress.redacted(form))", await relay.get("/status")?.body ?? ""))
                        outputs.append(("serve /readyz with \(SecretAddress.redacted(form))", await relay.get("/readyz")?.body ?? ""))
                        await relay.stop()
                        outputs.append(("serve log with \(SecretAddress.redacted(form))", relay.log))
                    }
                }
                #expect(outputs.count == 27)  // 2 passwords × 3 forms × 3 commands, and 3 outputs of serve per form
                for (name, text) in outputs {
                    #expect(!text.isEmpty, "\(name) produced no output to check")
                    for secret in [password, password + "-wrong"] + qdrantSecrets {
                        #expect(!text.contains(secret), "\(name) shows a secret: \(Self.context(of: secret, in: text))")
                    }
                }
            }
        }

        static func secrets() throws -> [String] {
            [
                URLParts(try TestEnvironment.variable("OUTBOX_POSTGRES_URL"))?.password,
                URLParts(try TestEnvironment.variable("OUTBOX_REDIS_URL"))?.password,
                try TestEnvironment.qdrantAPIKey(),
            ].compactMap { $0 }
        }

        /// The line around a leaked secret, with the secret masked (the failure message must not leak it).
        static func context(of secret: String, in text: String) -> String {
            guard let range = text.range(of: secret) else { return "" }
            let line = text[..<range.lowerBound].split(separator: "\n", omittingEmptySubsequences: false).last ?? ""
            return String(line.suffix(200)) + "<secret>"
        }
    }
}
