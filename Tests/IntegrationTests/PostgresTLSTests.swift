import Foundation
import Logging
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// Postgres over TLS, as a managed Postgres serves it: a server of the suite's own (the shared local
/// one serves plain TCP, see docs/CONFIGURATION.md) with a certificate of a CA made at start-up,
/// `hostssl` lines only, and the relay verifying it with libpq's `sslmode=verify-full` and
/// `sslrootcert` in `postgres.url`.
@Suite(.serialized, .tlsPostgres) struct PostgresTLSTests {
    var server: TLSPostgres { get throws { try #require(TLSPostgres.current, "the suite's TLS Postgres did not start") } }

    /// The error of a connection attempt, as `check`, `migrate` and the daemons report it.
    func connectionError(_ url: String) async throws -> PostgresError {
        let error = try #require(await #expect(throws: PostgresError.self) {
            try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger).close()
        })
        #expect(error.code == .connectionFailed, "\(error)")
        return error
    }

    @Test func migrateAndCheckConnectWithVerifiedTLSAndAConnectionWithoutTLSIsRefused() async throws {
        let server = try server
        let relay = try TestEnvironment.executable("outbox-relay")
        let config = try server.configFile()
        defer { try? FileManager.default.removeItem(atPath: config) }
        let environment = ["OUTBOX_POSTGRES_URL": server.url()]

        let migrate = try await runProcess(relay, ["migrate", "--config", config], environment: environment)
        #expect(migrate.status == 0, "\(migrate.stdout) \(migrate.stderr)")
        let check = try await runProcess(relay, ["check", "--config", config], environment: environment)
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
        #expect(check.stdout.contains("ok   postgres  \(SecretAddress.redacted(server.url()))  server 15."), "\(check.stdout)")
        #expect(!check.stdout.contains(server.password) && !migrate.stdout.contains(server.password))

        let db = try await PostgresConnection.connect(PostgresConfiguration(url: server.url()), logger: TestEnvironment.logger)
        let session = try #require(try await db.query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").first)
        #expect(try session.decode("ssl", as: Bool.self))
        #expect(try session.decode("version", as: String.self).hasPrefix("TLSv1."))
        #expect(try await db.count("outbox.schema_migrations") > 0, "migrate applied the schema")
        await db.close()

        // The server has `hostssl` lines only: without TLS there is no entry to let the session in.
        let plain = try await connectionError(server.url(sslmode: "disable"))
        #expect(plain.message.contains(#"no pg_hba.conf entry for host "127.0.0.1", user "\#(server.user)", database "\#(server.database)", no encryption"#),
                "\(plain)")
    }

    @Test func aServerCertificateOfAnotherCAIsRefusedNamingTheHost() async throws {
        let server = try server
        let wrongCA = server.url(sslrootcert: server.otherCA)
        let error = try await connectionError(wrongCA)
        #expect(error.message.contains(#"connection to server at "127.0.0.1", port \#(server.port) failed: SSL error: certificate verify failed"#),
                "\(error)")
        #expect(!error.description.contains(server.password))

        let relay = try TestEnvironment.executable("outbox-relay")
        let config = try server.configFile()
        defer { try? FileManager.default.removeItem(atPath: config) }
        let check = try await runProcess(relay, ["check", "--config", config], environment: ["OUTBOX_POSTGRES_URL": wrongCA])
        #expect(check.status == 2)
        #expect(check.stdout.contains("FAIL postgres  \(SecretAddress.redacted(wrongCA))  postgres.url: "), "\(check.stdout)")
        #expect(check.stdout.contains("certificate verify failed"), "\(check.stdout)")
        let migrate = try await runProcess(relay, ["migrate", "--config", config], environment: ["OUTBOX_POSTGRES_URL": wrongCA])
        #expect(migrate.status == 2)
        #expect(migrate.stderr.hasPrefix("postgres.url: cannot reach Postgres at \(SecretAddress.redacted(wrongCA)): "), "\(migrate.stderr)")
        #expect(migrate.stderr.contains(#"server at "127.0.0.1", port \#(server.port) failed: SSL error: certificate verify failed"#), "\(migrate.stderr)")

        // verify-full without sslrootcert: libpq looks for ~/.postgresql/root.crt and says so.
        let noCA = server.url().replacingOccurrences(of: "&sslrootcert=\(server.ca)", with: "")
        let missing = try await runProcess(relay, ["check", "--config", config], environment: ["OUTBOX_POSTGRES_URL": noCA, "HOME": server.directory])
        #expect(missing.status == 2)
        #expect(missing.stdout.contains(#"root certificate file "\#(server.directory)/.postgresql/root.crt" does not exist"#), "\(missing.stdout)")
        for output in [check.stdout, check.stderr, migrate.stdout, migrate.stderr, missing.stdout, missing.stderr] {
            #expect(!output.contains(server.password), "the password was shown: \(output)")
        }
    }

    @Test func aHostNameTheCertificateDoesNotNameIsRefusedNamingTheMismatch() async throws {
        let server = try server
        // `hostaddr` reaches the server while libpq verifies the certificate against `host`, as when
        // a DNS name that the certificate does not list points at the server.
        let error = try await connectionError(server.url(host: "db.example.internal", extra: "&hostaddr=127.0.0.1"))
        #expect(error.message.contains(#"server certificate for "localhost" (and 1 other name) does not match host name "db.example.internal""#),
                "\(error)")
        #expect(!error.description.contains(server.password))

        // The names it does list (DNS:localhost, IP:127.0.0.1) pass verify-full.
        for host in ["localhost", "127.0.0.1"] {
            let db = try await PostgresConnection.connect(PostgresConfiguration(url: server.url(host: host)), logger: TestEnvironment.logger)
            #expect(try await db.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").first?.decode("ssl", as: Bool.self) == true)
            await db.close()
        }
    }

    /// `sslcert` / `sslkey` in conninfo form: a client certificate authenticates its role (`cert`),
    /// and without it the server refuses that role.
    @Test func aClientCertificateAuthenticatesWithoutAPassword() async throws {
        let server = try server
        let conninfo = "host=127.0.0.1 port=\(server.port) dbname=\(server.database) user=outbox-relay sslmode=verify-full sslrootcert=\(server.ca)"
        let db = try await PostgresConnection.connect(
            PostgresConfiguration(url: conninfo + " sslcert=\(server.directory)/client.crt sslkey=\(server.directory)/client.key"),
            logger: TestEnvironment.logger)
        let row = try #require(try await db.query(
            "SELECT current_user AS role, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()").first)
        #expect(try row.decode("role", as: String.self) == "outbox-relay")
        #expect(try row.decode("ssl", as: Bool.self))
        #expect(try row.decode("client_dn", as: String.self) == "/CN=outbox-relay")
        await db.close()

        let error = try await connectionError(conninfo)
        #expect(error.message.contains("connection requires a valid client certificate"), "\(error)")
    }

    /// The relay daemon with `postgres.url` on the TLS server: workers, settlement and the LISTEN
    /// session all run over TLS, and an event is delivered to Redis on its NOTIFY alone.
    @Test func theRelayDeliversOverTLSWokenByItsListener() async throws {
        let server = try server
        let url = server.url()
        let db = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)
        defer { Task { await db.close() } }
        try await Migrator(directory: TestEnvironment.schemaDirectory, logger: TestEnvironment.logger).migrate(db)
        let config = try server.configFile()
        defer { try? FileManager.default.removeItem(atPath: config) }
        let redis = try await TestEnvironment.redis()
        let stream = "stream:" + TestEnvironment.uniqueName("pgtls")
        defer { Task { _ = try? await redis.command("DEL", stream) } }
        func enqueue(_ n: Int) async throws {
            try await db.query("SELECT outbox.enqueue('redis', 'xadd', 'tls', $1::jsonb)",
                               [.text(#"{"stream": "\#(stream)", "fields": {"n": "\#(n)"}}"#)])
        }
        func delivered() async throws -> Int { try await redis.command("XRANGE", stream, "-", "+").array?.count ?? 0 }

        // A poll interval far beyond the test's waits: only a notification can wake the relay.
        let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_RELAY_POLL_INTERVAL": "10m"], config: config)
        try await relay.waitUntilReady()
        try await enqueue(1)
        try await eventually("the first event delivered", timeout: .seconds(15)) { try await delivered() == 1 }
        try await eventually("the relay's listener LISTENing", timeout: .seconds(15)) {
            try await db.count("pg_stat_activity WHERE application_name = 'outbox-relay-listener' AND query LIKE 'LISTEN%'") == 1
        }
        try await enqueue(2)
        try await eventually("the second event delivered on its NOTIFY", timeout: .seconds(10)) { try await delivered() == 2 }
        #expect(try await db.count("outbox.events") == 0)
        #expect(try await db.count("outbox.dead_letters") == 0)

        let sessions = try #require(try await db.query("""
            SELECT count(*) FILTER (WHERE s.ssl) AS tls, count(*) FILTER (WHERE NOT s.ssl) AS plain
            FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'outbox-relay%'
            """).first)
        #expect(try sessions.decode("plain", as: Int.self) == 0)
        #expect(try sessions.decode("tls", as: Int.self) >= 2, "the listener and at least one worker")
        await relay.stop()
        #expect(!relay.log.contains(server.password))
    }
}

// MARK: - The suite's Postgres

extension Trait where Self == TLSPostgres.Scope {
    /// Starts a throwaway TLS Postgres for the suite, and stops and removes it after its last test.
    static var tlsPostgres: Self { Self() }
}

/// A throwaway Postgres 15 cluster serving TLS only, in a temporary directory: a CA and a server
/// certificate for localhost / 127.0.0.1 made at start-up (``QdrantTLSTests/makeCertificates(in:)``),
/// `hostssl` lines only (password auth for ``user``, certificate auth for `outbox-relay`).
struct TLSPostgres: Sendable {
    @TaskLocal static var current: TLSPostgres?

    static let binaries = "/usr/lib/postgresql/15/bin"
    static let prefix = "outbox-pgtls-"

    let directory: String
    let password: String
    let user = "relay_tls"
    let database = "outbox"
    private(set) var port = 0
    /// The OS user that runs Postgres when the tests run as root (Postgres refuses root).
    private(set) var osUser: String?
    private var postmaster: Postmaster?

    var ca: String { directory + "/ca.crt" }
    /// A CA that did not sign the server's certificate.
    var otherCA: String { directory + "/other-ca.crt" }
    var log: String { (try? String(contentsOfFile: directory + "/postgres.log", encoding: .utf8)) ?? "" }

    /// `postgres.url` for this server, the password in the URL, `sslrootcert` the test CA unless given.
    func url(host: String = "127.0.0.1", sslmode: String = "verify-full", sslrootcert: String? = nil, extra: String = "") -> String {
        "postgresql://\(user):\(password)@\(host):\(port)/\(database)?sslmode=\(sslmode)&sslrootcert=\(sslrootcert ?? ca)\(extra)"
    }

    /// The shipped configuration without `postgres.password_file` (it would replace the URL's
    /// password); the caller removes it.
    func configFile() throws -> String {
        let path = try TestEnvironment.configCopy {
            $0.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.contains("secrets/postgres-password") }
                .joined(separator: "\n")
        }
        let text = try String(contentsOfFile: path, encoding: .utf8)
        guard !text.contains("postgres-password") else { throw HarnessError("config/outbox.yaml: could not remove postgres.password_file") }
        return path
    }

    struct Scope: SuiteTrait, TestScoping {
        func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
            let server = try await TLSPostgres.start()
            do {
                try await TLSPostgres.$current.withValue(server) { try await function() }
            } catch {
                await server.stop()
                throw error
            }
            await server.stop()
        }
    }

    /// The postmaster, a child of the test process. (Not started by `pg_ctl start`: the daemon it
    /// leaves behind inherits the descriptor through which Foundation learns that its child exited,
    /// so `pg_ctl` would never be seen to finish.)
    ///
    /// The use of `@unchecked Sendable` is safe for this type because: the process is started,
    /// signalled and awaited by the suite's scope alone, one step after another.
    final class Postmaster: @unchecked Sendable {
        let process = Process()
    }

    private init(directory: String, password: String) {
        (self.directory, self.password) = (directory, password)
    }

    /// Makes the certificates, initdb, starts the server and creates the database and role; on any
    /// failure stops what started and removes the directory.
    static func start() async throws -> TLSPostgres {
        await removeLeftovers()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(prefix + UUID().uuidString).path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "\(getpid())\n".write(toFile: directory + "/owner.pid", atomically: true, encoding: .utf8)
        var server = TLSPostgres(directory: directory, password: "tls-\(UUID().uuidString.prefix(13).lowercased())")
        do {
            server.osUser = try osUserForPostgres()
            try await server.initialize()
            // freePort() only finds a port free: another process may bind it first, and then Postgres exits.
            for attempt in 1... {
                try server.launch(port: try freePort())
                if try await server.waitUntilAccepting() { break }
                guard attempt < 3, server.log.contains("could not bind") || server.log.contains("could not create any TCP/IP sockets") else {
                    throw HarnessError("postgres exited during start-up; its log:\n\(server.log.suffix(2000))")
                }
            }
            let admin = try await PostgresConnection.connect(server.adminConfiguration, logger: TestEnvironment.logger)
            try await admin.query("CREATE DATABASE \(server.database)")
            try await admin.query(#"CREATE ROLE "outbox-relay" LOGIN"#)
            await admin.close()
            return server
        } catch {
            await server.stop()
            throw error
        }
    }

    /// The superuser, over TLS, to the `postgres` database.
    private var adminConfiguration: PostgresConfiguration {
        PostgresConfiguration(url: url().replacingOccurrences(of: "/\(database)?", with: "/postgres?"))
    }

    /// Certificates, the superuser's password, initdb, TLS settings and `pg_hba.conf`.
    private func initialize() async throws {
        try await QdrantTLSTests.makeCertificates(in: directory)
        let openssl = try await runProcess(URL(fileURLWithPath: "/usr/bin/openssl"), [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=another test CA",
            "-keyout", directory + "/other-ca.key", "-out", otherCA,
        ])
        guard openssl.status == 0 else { throw HarnessError("openssl (another CA): \(openssl.stderr)") }
        for key in ["ca.key", "server.key", "client.key", "other-ca.key"] {
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: directory + "/" + key)
        }
        try "\(password)\n".write(toFile: directory + "/password", atomically: true, encoding: .utf8)
        if let osUser {
            let chown = try await runProcess(URL(fileURLWithPath: "/bin/chown"), ["-R", osUser + ":", directory])
            guard chown.status == 0 else { throw HarnessError("chown \(osUser) \(directory): \(chown.stderr)") }
        }
        let initdb = try await runProcess(URL(fileURLWithPath: "/usr/bin/env"), ["-C", directory] + (osUser.map { ["runuser", "-u", $0, "--"] } ?? []) + [
            Self.binaries + "/initdb", "-D", directory + "/data", "-U", user, "--pwfile=\(directory)/password", "-A", "scram-sha-256",
            "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C",
        ])
        guard initdb.status == 0 else { throw HarnessError("initdb failed: \(initdb.stdout) \(initdb.stderr)") }
        // No `host` line: a session without TLS finds no entry and is refused.
        try """
            hostssl all outbox-relay 127.0.0.1/32 cert
            hostssl all all          127.0.0.1/32 scram-sha-256

            """.write(toFile: directory + "/data/pg_hba.conf", atomically: false, encoding: .utf8)
        let settings = """

            # PostgresTLSTests
            listen_addresses = '127.0.0.1'
            unix_socket_directories = ''
            ssl = on
            ssl_cert_file = '\(directory)/server.crt'
            ssl_key_file = '\(directory)/server.key'
            ssl_ca_file = '\(directory)/ca.crt'
            fsync = off
            synchronous_commit = off
            full_page_writes = off
            shared_buffers = 16MB
            max_connections = 40

            """
        let conf = try FileHandle(forWritingTo: URL(fileURLWithPath: directory + "/data/postgresql.conf"))
        try conf.seekToEnd()
        try conf.write(contentsOf: Data(settings.utf8))
        try conf.close()
    }

    /// Starts the postmaster on `port` (as ``osUser`` when we are root), its output in postgres.log.
    private mutating func launch(port: Int) throws {
        self.port = port
        let postmaster = Postmaster()
        let command = [Self.binaries + "/postgres", "-D", directory + "/data", "-p", String(port)]
        if let osUser {
            guard let account = getpwnam(osUser) else { throw HarnessError("no user \(osUser)") }
            postmaster.process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            postmaster.process.arguments = ["--reuid=\(account.pointee.pw_uid)", "--regid=\(account.pointee.pw_gid)", "--init-groups", "--"] + command
        } else {
            postmaster.process.executableURL = URL(fileURLWithPath: command[0])
            postmaster.process.arguments = Array(command.dropFirst())
        }
        postmaster.process.currentDirectoryURL = URL(fileURLWithPath: directory)
        _ = FileManager.default.createFile(atPath: directory + "/postgres.log", contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: directory + "/postgres.log"))
        postmaster.process.standardOutput = log
        postmaster.process.standardError = log
        try postmaster.process.run()
        self.postmaster = postmaster
    }

    /// True once the server accepts a TLS session; false if the postmaster exited first.
    private func waitUntilAccepting() async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(30)
        while postmaster?.process.isRunning == true {
            if let admin = try? await PostgresConnection.connect(adminConfiguration, logger: TestEnvironment.logger) {
                await admin.close()
                return true
            }
            guard ContinuousClock.now < deadline else {
                throw HarnessError("postgres did not accept connections within 30 s; its log:\n\(log.suffix(2000))")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    /// Stops the server (immediate shutdown: the data is thrown away) and removes the directory.
    func stop() async {
        if let process = postmaster?.process, process.isRunning {
            kill(process.processIdentifier, SIGQUIT)
            let deadline = ContinuousClock.now + .seconds(10)
            while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Postgres refuses to run as root: as root, run it as the user scripts/services uses
    /// (`OUTBOX_PG_USER`, else `postgres`, else `outbox-services`).
    static func osUserForPostgres() throws -> String? {
        guard geteuid() == 0 else { return nil }
        let candidates = [ProcessInfo.processInfo.environment["OUTBOX_PG_USER"], "postgres", "outbox-services"]
        guard let user = candidates.compactMap({ $0 }).first(where: { !$0.isEmpty && $0 != "root" && getpwnam($0) != nil }) else {
            throw HarnessError("running as root, and none of OUTBOX_PG_USER, postgres, outbox-services is a user to run Postgres as (`scripts/services up` makes one)")
        }
        return user
    }

    /// Servers of earlier runs whose test process died (a crash) before it could stop them: their
    /// postmaster (by its postmaster.pid, if its command line names the directory) and directory.
    static func removeLeftovers() async {
        let temporary = FileManager.default.temporaryDirectory.path
        for name in (try? FileManager.default.contentsOfDirectory(atPath: temporary)) ?? [] where name.hasPrefix(prefix) {
            let directory = temporary + "/" + name
            guard let owner = firstNumber(directory + "/owner.pid"), kill(owner, 0) != 0, errno == ESRCH else { continue }
            if let pid = firstNumber(directory + "/data/postmaster.pid"),
                let command = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), String(decoding: command, as: UTF8.self).contains(directory)
            {
                kill(pid, SIGQUIT)
                for _ in 0..<250 where kill(pid, 0) == 0 { try? await Task.sleep(for: .milliseconds(20)) }
            }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    private static func firstNumber(_ path: String) -> Int32? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.split(separator: "\n").first.flatMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
    }
}
