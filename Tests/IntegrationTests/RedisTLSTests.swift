import Foundation
import Glibc
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// Redis over TLS (`rediss://`), as managed Redis serves it: a redis-server of the suite's own with
/// only its `tls-port` open (`--port 0`) and a certificate of a CA made at start-up, reached through
/// the project's TLS layer under hiredis (Sources/CRedisTLS), which verifies the certificate's chain
/// (`redis.ca_file`) and name (the url's host, or `redis.tls_server_name`).
@Suite(.serialized, .tlsRedis) struct RedisTLSTests {
    var server: TLSRedis { get throws { try #require(TLSRedis.current, "the suite's TLS Redis did not start") } }

    /// The error of a connection attempt, as `check` and the daemons report it.
    func connectionError(_ configuration: RedisConfiguration) async throws -> RedisError {
        let error = try #require(await #expect(throws: RedisError.self) {
            await (try await RedisConnection.connect(configuration, logger: TestEnvironment.logger)).close()
        })
        #expect(error.code == .connectionFailed, "\(error)")
        return error
    }

    @Test func commandsPipelinesScriptsAndLargeValuesRunOverVerifiedTLS() async throws {
        let server = try server
        for host in ["127.0.0.1", "localhost"] {  // the certificate names both
            let redis = try await RedisConnection.connect(server.configuration(host: host), logger: TestEnvironment.logger)
            #expect(try await redis.command("PING") == .status("PONG"))
            let key = TestEnvironment.uniqueName("tls")
            let value: [UInt8] = [0, 1, 2, 0, 255, 13, 10]
            #expect(try await redis.command(RedisCommand(bytes: [Array("SET".utf8), Array(key.utf8), value])) == .status("OK"))
            #expect(try await redis.command("GET", key) == .bulk(value))
            // Larger than the pump's buffers and many TLS records, both ways.
            let large = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            #expect(try await redis.command(RedisCommand(bytes: [Array("SET".utf8), Array((key + ":large").utf8), large])) == .status("OK"))
            #expect(try await redis.command("GET", key + ":large") == .bulk(large))
            let replies = try await redis.pipeline((0..<2000).map { RedisCommand("RPUSH", key + ":list", String($0)) })
            #expect(replies.last == .integer(2000))
            #expect(try await redis.evaluate(RedisScript("return redis.call('LLEN', KEYS[1])"), keys: [key + ":list"], arguments: []) == .integer(2000))
            try await redis.command("DEL", key, key + ":large", key + ":list")
            await redis.close()
        }
    }

    @Test func aServerCertificateOfAnotherCAIsRefusedNamingTheHost() async throws {
        let server = try server
        let error = try await connectionError(server.configuration(trust: .otherCA))
        #expect(error.message.hasPrefix("127.0.0.1:\(server.port): TLS certificate verify failed: "), "\(error)")
        #expect(error.message.contains("not signed by a CA in \(server.otherCA)"), "\(error)")
        #expect(!error.description.contains(server.password))

        // Without redis.ca_file the system's trust store is used, and it does not know the test CA.
        let system = try await connectionError(server.configuration(trust: .systemStore))
        #expect(system.message.hasPrefix("127.0.0.1:\(server.port): TLS certificate verify failed: "), "\(system)")
        #expect(system.message.contains("the system's trust store"), "\(system)")
    }

    @Test func aServerNameTheCertificateDoesNotNameIsRefused() async throws {
        let server = try server
        let error = try await connectionError(server.configuration(serverName: "redis.example.internal"))
        #expect(error.description == """
            redis connection failed: 127.0.0.1:\(server.port): TLS certificate verify failed: hostname mismatch \
            (certificate is for "localhost", "127.0.0.1"; expected "redis.example.internal")
            """)
        // An IP address is checked against the certificate's IP entries.
        let address = try await connectionError(server.configuration(host: "localhost", serverName: "127.0.0.2"))
        #expect(address.message.contains(#"TLS certificate verify failed: IP address mismatch (certificate is for "localhost", "127.0.0.1"; expected "127.0.0.2")"#),
                "\(address)")
        // A name the certificate lists passes, whatever the url's host.
        let redis = try await RedisConnection.connect(server.configuration(serverName: "localhost"), logger: TestEnvironment.logger)
        #expect(try await redis.command("PING") == .status("PONG"))
        await redis.close()
    }

    /// `--tls-auth-clients yes`: the client certificate gets the relay in; without one the server
    /// refuses it, and with TLS 1.3 that refusal comes after the handshake: the connect step still
    /// reports it as such instead of a lost connection on the first command.
    @Test func aServerThatRequiresAClientCertificateAcceptsOursAndRefusesNone() async throws {
        let suite = try server
        let server = try await TLSRedis.start(directory: suite.directory, password: suite.password, authClients: "yes")
        try await server.whileRunning {
            let redis = try await RedisConnection.connect(server.configuration(clientCertificate: true), logger: TestEnvironment.logger)
            #expect(try await redis.command("PING") == .status("PONG"))
            await redis.close()

            let error = try await connectionError(server.configuration(clientCertificate: false))
            #expect(error.message.hasPrefix("127.0.0.1:\(server.port): TLS: the server requires a client certificate, and none is configured"),
                    "\(error)")
            #expect(!error.description.contains(server.password))
            // A certificate of a CA the server does not trust is refused as such.
            var foreign = server.configuration(clientCertificate: false)
            foreign.tls.clientCertificateFile = server.otherCA
            foreign.tls.clientKeyFile = server.directory + "/other-ca.key"
            let refused = try await connectionError(foreign)
            #expect(refused.message.contains("TLS: the server refused the client certificate"), "\(refused)")
        }
    }

    @Test func aWrongPasswordIsRefusedWithoutShowingIt() async throws {
        let server = try server
        var configuration = server.configuration()
        configuration.password = "not-the-tls-redis-password-\(UUID().uuidString.prefix(6))"
        let error = try await connectionError(configuration)
        #expect(error.message.contains("AUTH failed"), "\(error)")
        #expect(!error.description.contains(configuration.password!) && !error.description.contains(server.password))
        // In the url, too.
        let inURL = RedisConfiguration(url: "rediss://default:\(configuration.password!)@127.0.0.1:\(server.port)/0")
        var withCA = inURL
        withCA.tls.caFile = server.ca
        let urlError = try await connectionError(withCA)
        #expect(!urlError.description.contains(configuration.password!), "\(urlError)")
    }

    /// Cancellation shuts hiredis' end of the socket pair down, as for a plain connection: the
    /// blocked read ends at once, the pump ends with it, and the next call reconnects. A command
    /// that outlives `redis.command_timeout` fails the same way.
    @Test func cancellationAndTheCommandTimeoutEndABlockedCommandAndTheNextCallReconnects() async throws {
        let server = try server
        let redis = try await RedisConnection.connect(server.configuration(), logger: TestEnvironment.logger)
        let key = TestEnvironment.uniqueName("blpop")
        let started = ContinuousClock.now
        let blocked = Task { try await redis.command("BLPOP", key, "8") }
        try await Task.sleep(for: .milliseconds(300))
        blocked.cancel()
        await #expect(throws: CancellationError.self) { try await blocked.value }
        #expect(ContinuousClock.now - started < .seconds(2))
        #expect(try await redis.command("PING") == .status("PONG"))
        await redis.close()

        var short = server.configuration()
        short.commandTimeout = .seconds(1)
        let slow = try await RedisConnection.connect(short, logger: TestEnvironment.logger)
        let timedOut = ContinuousClock.now
        let error = try #require(await #expect(throws: RedisError.self) { try await slow.command("BLPOP", key, "6") })
        #expect(error.code == .connectionLost, "\(error)")
        #expect(ContinuousClock.now - timedOut < .seconds(3))
        #expect(try await slow.command("PING") == .status("PONG"))
        await slow.close()
    }

    @Test func aConnectionTheServerClosesIsReopened() async throws {
        let server = try server
        let redis = try await RedisConnection.connect(server.configuration(), logger: TestEnvironment.logger)
        let admin = try await RedisConnection.connect(server.configuration(), logger: TestEnvironment.logger)
        let id = try #require(try await redis.command("CLIENT", "ID").integer)
        try await admin.command("CLIENT", "KILL", "ID", String(id))
        let error = try #require(await #expect(throws: RedisError.self) { try await redis.command("PING") })
        #expect(error.code == .connectionLost, "\(error)")
        #expect(try await redis.command("PING") == .status("PONG"))
        await redis.close()
        await admin.close()
    }

    /// Every connection's pump thread, TCP socket and socket pair end with it, however it ends:
    /// closed, cancelled mid-command, timed out, or dropped by the server.
    @Test func connectionsLeaveNoThreadOrDescriptorBehind() async throws {
        let server = try server
        try await eventually("no pump running before the test", timeout: .seconds(10)) { RedisTLS.pumpCount == 0 }
        let unixBefore = ProcessSockets.unixSockets()
        let admin = try await RedisConnection.connect(server.configuration(), logger: TestEnvironment.logger)
        for round in 0..<60 {
            let redis = try await RedisConnection.connect(server.configuration(), logger: TestEnvironment.logger)
            #expect(try await redis.command("PING") == .status("PONG"))
            switch round % 3 {
            case 0:
                break
            case 1:  // cancelled while blocked: shutdown(2) on hiredis' descriptor
                let blocked = Task { try await redis.command("BLPOP", TestEnvironment.uniqueName("leak"), "5") }
                try await Task.sleep(for: .milliseconds(30))
                blocked.cancel()
                _ = try? await blocked.value
                #expect(try await redis.command("PING") == .status("PONG"))
            default:  // dropped by the server
                let id = try #require(try await redis.command("CLIENT", "ID").integer)
                try await admin.command("CLIENT", "KILL", "ID", String(id))
                _ = try? await redis.command("PING")
            }
            await redis.close()
        }
        await admin.close()
        try await eventually("every pump thread ended", timeout: .seconds(10)) { RedisTLS.pumpCount == 0 }
        #expect(ProcessSockets.tcpSockets(toPort: server.port) == 0, "TCP connections to the server left open")
        // Other suites' processes (Foundation's Process uses a socket pair each) come and go meanwhile:
        // a leak here would be one or two per connection, 60 or more.
        let unixAfter = ProcessSockets.unixSockets()
        #expect(unixAfter <= unixBefore + 10, "Unix sockets: \(unixBefore) before, \(unixAfter) after 60 connections")
    }

    /// DESIGN §6: the TLS connect (TCP, handshake) runs on the connection's own thread. Connects
    /// to a listener that never answers the handshake, more of them than the machine has cores,
    /// leave Swift's cooperative pool free, and each ends at `redis.connect_timeout` naming the host.
    @Test func aHandshakeThatNeverCompletesTimesOutWithoutBlockingThePool() async throws {
        let listener = try SilentListener()
        defer { listener.close() }
        let configuration = {
            var configuration = RedisConfiguration(url: "rediss://127.0.0.1:\(listener.port)/0")
            configuration.connectTimeout = .milliseconds(1500)
            return configuration
        }()
        let started = ContinuousClock.now
        let connects = (0..<(ProcessInfo.processInfo.activeProcessorCount + 2)).map { _ in
            Task { () -> RedisError? in
                do {
                    await (try await RedisConnection.connect(configuration, logger: TestEnvironment.logger)).close()
                    return nil
                } catch { return error as? RedisError }
            }
        }
        // The pool keeps running short tasks on time meanwhile.
        var worstLag = Duration.zero
        while ContinuousClock.now - started < .milliseconds(1200) {
            let before = ContinuousClock.now
            try await Task.sleep(for: .milliseconds(20))
            worstLag = max(worstLag, ContinuousClock.now - before - .milliseconds(20))
        }
        #expect(worstLag < .milliseconds(500), "the cooperative pool stalled for \(worstLag)")
        for connect in connects {
            let error = await connect.value
            #expect(error?.description == "redis connection failed: 127.0.0.1:\(listener.port): TLS handshake timed out after 1500 ms (is it a TLS port?)")
        }
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    /// The relay daemon on a listener that never completes a TLS handshake: `/livez` answers at once
    /// throughout, and `/readyz` says why Redis is unreachable.
    @Test func theRelaysHealthEndpointAnswersWhileATLSConnectHangs() async throws {
        let server = try server
        let listener = try SilentListener()
        defer { listener.close() }
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            let relay = try DaemonProcess.relay(databaseURL: url, environment: [
                "OUTBOX_REDIS_URL": "rediss://127.0.0.1:\(listener.port)/0", "OUTBOX_REDIS_CA_FILE": server.ca,
                "OUTBOX_REDIS_PASSWORD": server.password, "OUTBOX_REDIS_CONNECT_TIMEOUT": "3s",
            ])
            try await eventually("livez answers", timeout: .seconds(20)) { await relay.get("/livez")?.status == 200 }
            let watched = ContinuousClock.now
            var slowest = Duration.zero
            while ContinuousClock.now - watched < .seconds(7) {  // two connect attempts and more
                let before = ContinuousClock.now
                #expect(await relay.get("/livez")?.status == 200)
                slowest = max(slowest, ContinuousClock.now - before)
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(slowest < .seconds(1), "/livez took \(slowest) while the TLS connect hung")
            try await eventually("readyz naming the TLS timeout", timeout: .seconds(15)) {
                guard let ready = await relay.get("/readyz"), ready.status == 503 else { return false }
                return ready.body.contains("redis unreachable") && ready.body.contains("127.0.0.1:\(listener.port): TLS handshake timed out after 3000 ms")
            }
            await relay.stop()
            #expect(!relay.log.contains(server.password))
        }
    }

    /// `check` of both binaries reaches Redis over TLS through the shared configuration, and
    /// reports a certificate it cannot verify naming the host, without the password.
    @Test func checkReportsRedisOverTLS() async throws {
        let server = try server
        let environment = [
            "OUTBOX_REDIS_URL": server.url(), "OUTBOX_REDIS_PASSWORD": server.password, "OUTBOX_REDIS_CA_FILE": server.ca,
        ]
        let relay = try TestEnvironment.executable("outbox-relay")
        let check = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: environment)
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
        #expect(check.stdout.contains("ok   redis     \(server.url())  server 7."), "\(check.stdout)")

        let reconciler = try await runProcess(
            try TestEnvironment.executable("outbox-reconciler"), ["check", "--config", "config/outbox.yaml"],
            environment: environment.merging(["OUTBOX_RECONCILER_ALERT_REDIS_CHANNEL": "outbox:alerts"]) { $1 })
        #expect(reconciler.status == 0, "\(reconciler.stdout) \(reconciler.stderr)")
        #expect(reconciler.stdout.contains("ok   redis     \(server.url())"), "\(reconciler.stdout)")

        var wrongCA = environment
        wrongCA["OUTBOX_REDIS_CA_FILE"] = server.otherCA
        let refused = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: wrongCA)
        #expect(refused.status == 2)
        #expect(refused.stdout.contains("FAIL redis     \(server.url())  redis.url: "), "\(refused.stdout)")
        #expect(refused.stdout.contains("127.0.0.1:\(server.port): TLS certificate verify failed"), "\(refused.stdout)")

        // The TLS keys with a redis:// url are a contradiction, refused at load naming the variable.
        var plain = environment
        plain["OUTBOX_REDIS_URL"] = "redis://127.0.0.1:\(server.port)/0"
        let contradiction = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: plain)
        #expect(contradiction.status == 2)
        #expect(contradiction.stderr.contains("config: OUTBOX_REDIS_CA_FILE (redis.ca_file): applies only to a rediss:// redis.url"),
                "\(contradiction.stderr)")
        for output in [check, reconciler, refused, contradiction].flatMap({ [$0.stdout, $0.stderr] }) {
            #expect(!output.contains(server.password), "the password was shown: \(output)")
        }
    }

    /// The relay daemon delivering to Redis over TLS (the server has no plain port), through a
    /// connection the server drops mid-way.
    @Test func theRelayDeliversOverTLSAndReconnectsAfterTheServerDropsIt() async throws {
        let server = try server
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let redis = try await RedisConnection.connect(server.configuration(), logger: TestEnvironment.logger)
            let stream = "stream:" + TestEnvironment.uniqueName("tls")
            func enqueue(_ range: ClosedRange<Int>) async throws {
                try await db.query("""
                    SELECT outbox.enqueue('redis', 'xadd', 'k' || (n % 7), jsonb_build_object('stream', $1::text, 'fields',
                        jsonb_build_object('k', 'k' || (n % 7), 'n', n::text))) FROM generate_series(\(range.lowerBound), \(range.upperBound)) n
                    """, [.text(stream)])
            }
            func delivered() async throws -> [(key: String, n: Int)] {
                (try await redis.command("XRANGE", stream, "-", "+").array ?? []).compactMap { entry in
                    guard let fields = entry.array?.last?.array?.compactMap(\.string) else { return nil }
                    let map = Dictionary(stride(from: 0, to: fields.count - 1, by: 2).map { (fields[$0], fields[$0 + 1]) }) { a, _ in a }
                    guard let key = map["k"], let n = map["n"].flatMap(Int.init) else { return nil }
                    return (key, n)
                }
            }
            try await enqueue(1...300)
            let relay = try DaemonProcess.relay(databaseURL: url, environment: [
                "OUTBOX_REDIS_URL": server.url(), "OUTBOX_REDIS_PASSWORD": server.password, "OUTBOX_REDIS_CA_FILE": server.ca,
            ])
            try await relay.waitUntilReady()
            try await eventually("300 events delivered over TLS", timeout: .seconds(30)) { try await delivered().count == 300 }

            // The server drops every other client: the relay's connection ends under it, and it reconnects.
            try await redis.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            try await enqueue(301...600)
            try await eventually("600 events delivered after the drop", timeout: .seconds(30)) { try await delivered().count == 600 }
            let entries = try await delivered()
            #expect(Set(entries.map(\.n)).count == 600, "each event once")
            for key in Set(entries.map(\.key)) {
                let order = entries.filter { $0.key == key }.map(\.n)
                #expect(order == order.sorted(), "key \(key) out of order")
            }
            #expect(try await db.count("outbox.events") == 0)
            #expect(try await db.count("outbox.dead_letters") == 0)
            await relay.stop()
            #expect(!relay.log.contains(server.password))
            try await redis.command("DEL", stream)
            await redis.close()
        }
    }

    /// Issue 22: a Redis Cluster over TLS (clients and cluster bus), three masters of the suite's
    /// own (``TLSRedisCluster``). Discovery through the one node the `rediss://` url names finds the
    /// other two at the TLS ports `CLUSTER SLOTS` announces, each verified with the same CA and
    /// name rule; the relay delivers across all three masters, each event once and each key's in
    /// order; a CA that did not sign the nodes' certificates is refused naming the host.
    @Test func aClusterOverTLSIsDiscoveredDeliveredToAndVerified() async throws {
        let suite = try server
        let cluster = try await TLSRedisCluster.start(directory: suite.directory, password: suite.password)
        try await cluster.whileRunning {
            // (1) The slot map, read over TLS from the seed: three masters, every slot served,
            // at the nodes' TLS ports (they have no other).
            let map = try await RedisCluster.connect(cluster.configuration(), logger: TestEnvironment.logger)
            #expect(await map.knownMasters == cluster.addresses.sorted { $0.port < $1.port })
            #expect(await map.unservedSlots == 0)
            for address in await map.knownMasters {
                #expect(try await map.connection(to: address).command("PING") == .status("PONG"), "\(address)")
            }
            // redis.tls_server_name applies to every node, discovered ones included.
            var named = cluster.configuration()
            named.tls.serverName = "localhost"
            let byName = try await RedisCluster.connect(named, logger: TestEnvironment.logger)
            for address in await byName.knownMasters {
                #expect(try await byName.connection(to: address).command("PING") == .status("PONG"), "\(address)")
            }
            await byName.close()

            // (2) The relay: 6 streams, 2 in each master's slots, 12 keys, 360 events.
            let masters = await map.knownMasters
            let prefix = TestEnvironment.uniqueName("tlscluster")
            var streams: [String] = []
            var owners: [RedisNodeAddress?] = []
            for slot in 0..<RedisSlot.count { owners.append(await map.master(of: slot)) }
            for master in masters {
                let slots = owners.indices.filter { owners[$0] == master }
                for slot in [slots[10], slots[slots.count - 10]] { streams.append("\(prefix):{\(RedisSlot.tag(for: slot))}") }
            }
            #expect(Set(streams.map { owners[RedisSlot.of($0)] }).count == 3, "streams on every master")
            func delivered() async throws -> [(key: String, n: Int)] {
                var entries: [(key: String, n: Int)] = []
                for stream in streams {
                    let master = try #require(await map.master(of: RedisSlot.of(stream)))
                    let reply = try await map.connection(to: master).command("XRANGE", stream, "-", "+")
                    for entry in reply.array ?? [] {
                        guard let fields = entry.array?.last?.array?.compactMap(\.string) else { continue }
                        let values = Dictionary(stride(from: 0, to: fields.count - 1, by: 2).map { (fields[$0], fields[$0 + 1]) }) { a, _ in a }
                        if let key = values["k"], let n = values["n"].flatMap(Int.init) { entries.append((key, n)) }
                    }
                }
                return entries
            }
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
                try await db.query("""
                    SELECT outbox.enqueue('redis', 'xadd', 'k' || (n % 12), jsonb_build_object('stream', ($1::text[])[1 + n % 6],
                        'fields', jsonb_build_object('k', 'k' || (n % 12), 'n', n::text))) FROM generate_series(1, 360) n
                    """, [.textArray(streams)])
                let relay = try DaemonProcess.relay(databaseURL: url, environment: [
                    "OUTBOX_REDIS_URL": cluster.url, "OUTBOX_REDIS_PASSWORD": cluster.password, "OUTBOX_REDIS_CLUSTER": "true",
                    "OUTBOX_REDIS_CA_FILE": suite.ca,
                ])
                try await relay.waitUntilReady()
                try await eventually("360 events delivered to the TLS cluster", timeout: .seconds(60)) { try await delivered().count >= 360 }
                try await eventually("the outbox drained", timeout: .seconds(10)) { try await db.count("outbox.events") == 0 }
                let entries = try await delivered()
                #expect(entries.count == 360 && Set(entries.map(\.n)) == Set(1...360), "each event once: \(entries.count) entries")
                for key in Set(entries.map(\.key)) {
                    let order = entries.filter { $0.key == key }.map(\.n)
                    #expect(order == order.sorted(), "key \(key) out of order")
                }
                #expect(try await db.count("outbox.dead_letters") == 0)
                await relay.stop()
                #expect(relay.log.contains("Redis Cluster slot map read"), "\(relay.log.suffix(2000))")
                #expect(!relay.log.contains(cluster.password))
            }
            await map.close()

            // (3) `check`: the cluster over TLS, and a CA that did not sign it refused naming the host.
            let environment = [
                "OUTBOX_REDIS_URL": cluster.url, "OUTBOX_REDIS_PASSWORD": cluster.password, "OUTBOX_REDIS_CLUSTER": "true",
                "OUTBOX_REDIS_CA_FILE": suite.ca,
            ]
            let binary = try TestEnvironment.executable("outbox-relay")
            let check = try await runProcess(binary, ["check", "--config", "config/outbox.yaml"], environment: environment)
            #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
            #expect(check.stdout.contains("Redis Cluster of 3 masters, all 16384 slots served"), "\(check.stdout)")
            var wrongCA = environment
            wrongCA["OUTBOX_REDIS_CA_FILE"] = suite.otherCA
            let refused = try await runProcess(binary, ["check", "--config", "config/outbox.yaml"], environment: wrongCA)
            #expect(refused.status == 2)
            #expect(refused.stdout.contains("127.0.0.1:\(cluster.nodes[0].port): TLS certificate verify failed"), "\(refused.stdout)")
            #expect(refused.stdout.contains("not signed by a CA in \(suite.otherCA)"), "\(refused.stdout)")
            let error = try #require(await #expect(throws: RedisError.self) {
                await (try await RedisCluster.connect(cluster.configuration(trust: .otherCA), logger: TestEnvironment.logger)).close()
            })
            #expect(error.message.hasPrefix("127.0.0.1:\(cluster.nodes[0].port): TLS certificate verify failed: "), "\(error)")
            for output in [check, refused].flatMap({ [$0.stdout, $0.stderr] }) {
                #expect(!output.contains(cluster.password), "the password was shown: \(output)")
            }
        }
    }
}

// MARK: - The suite's Redis

extension Trait where Self == TLSRedis.Scope {
    /// Makes a CA and certificates, starts a TLS-only redis-server for the suite, and kills it and
    /// removes its directory after the last test.
    static var tlsRedis: Self { Self() }
}

/// A throwaway redis-server serving TLS only (`--port 0 --tls-port N`), on a free loopback port,
/// with a certificate for localhost / 127.0.0.1 of a CA made at start-up
/// (``QdrantTLSTests/makeCertificates(in:)``), a password, and no persistence.
struct TLSRedis: Sendable {
    @TaskLocal static var current: TLSRedis?

    static let binary = "/usr/bin/redis-server"
    static let prefix = "outbox-redistls-"

    let directory: String
    let password: String
    let port: Int
    let process: Child

    var ca: String { directory + "/ca.crt" }
    /// A CA that did not sign the server's certificate.
    var otherCA: String { directory + "/other-ca.crt" }
    var log: String { (try? String(contentsOfFile: directory + "/redis-\(port).log", encoding: .utf8)) ?? "" }

    func url(host: String = "127.0.0.1") -> String { "rediss://\(host):\(port)/0" }

    /// Which CA a client trusts: the suite's, another one, or the system's trust store (no `redis.ca_file`).
    enum Trust { case testCA, otherCA, systemStore }

    func configuration(host: String = "127.0.0.1", trust: Trust = .testCA, serverName: String? = nil, clientCertificate: Bool = false)
        -> RedisConfiguration
    {
        var configuration = RedisConfiguration(url: url(host: host), password: password)
        configuration.connectTimeout = .seconds(5)
        configuration.tls = RedisTLSOptions(
            caFile: [.testCA: ca, .otherCA: otherCA][trust], serverName: serverName, clientCertificateFile: clientCertificate ? directory + "/client.crt" : nil,
            clientKeyFile: clientCertificate ? directory + "/client.key" : nil)
        return configuration
    }

    /// The redis-server process, a child of the test process.
    ///
    /// The use of `@unchecked Sendable` is safe for this type because: the process is started,
    /// killed and awaited by the suite's scope (or the one test that starts its own) alone.
    final class Child: @unchecked Sendable {
        let process = Process()
    }

    struct Scope: SuiteTrait, TestScoping {
        func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
            let directory = try await TLSRedis.makeDirectory()
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let server = try await TLSRedis.start(directory: directory, password: "tls-\(UUID().uuidString.prefix(13).lowercased())")
            try await server.whileRunning { try await TLSRedis.$current.withValue(server) { try await function() } }
        }
    }

    /// A temporary directory with the certificates: the CA, the server's and a client's
    /// (``QdrantTLSTests/makeCertificates(in:)``), and another CA.
    static func makeDirectory() async throws -> String {
        removeLeftovers()
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw HarnessError("\(binary) not found: RedisTLSTests need Debian's redis-server (apt-get install redis-server; `make test` does)")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(prefix + UUID().uuidString).path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "\(getpid())\n".write(toFile: directory + "/owner.pid", atomically: true, encoding: .utf8)
        try await QdrantTLSTests.makeCertificates(in: directory)
        let openssl = try await runProcess(URL(fileURLWithPath: "/usr/bin/openssl"), [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=another test CA",
            "-keyout", directory + "/other-ca.key", "-out", directory + "/other-ca.crt",
        ])
        guard openssl.status == 0 else { throw HarnessError("openssl (another CA): \(openssl.stderr)") }
        return directory
    }

    /// Starts redis-server on a free port with `--tls-auth-clients authClients`; waits until it
    /// answers over TLS. `cluster`: as a Redis Cluster node whose bus is TLS too (`--tls-cluster
    /// yes`, on a free `--cluster-port`), not yet part of a cluster (``TLSRedisCluster``).
    static func start(directory: String, password: String, authClients: String = "no", cluster: Bool = false) async throws -> TLSRedis {
        // freePort() only finds a port free: another process may bind it first, and then Redis exits.
        for attempt in 1... {
            let port = try freePort()
            let clusterArguments = cluster ? [
                "--cluster-enabled", "yes", "--cluster-port", String(try freePort()), "--cluster-config-file", directory + "/nodes-\(port).conf",
                "--cluster-node-timeout", "2000", "--tls-cluster", "yes", "--tls-replication", "yes", "--masterauth", password,
            ] : []
            let child = Child()
            child.process.executableURL = URL(fileURLWithPath: binary)
            child.process.arguments = [
                "--port", "0", "--tls-port", String(port), "--bind", "127.0.0.1", "--tls-cert-file", directory + "/server.crt",
                "--tls-key-file", directory + "/server.key", "--tls-ca-cert-file", directory + "/ca.crt", "--tls-auth-clients", authClients,
                "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", directory, "--daemonize", "no",
                "--logfile", directory + "/redis-\(port).log",
            ] + clusterArguments
            child.process.currentDirectoryURL = URL(fileURLWithPath: directory)
            child.process.standardOutput = FileHandle.nullDevice
            child.process.standardError = FileHandle.nullDevice
            try child.process.run()
            try "\(child.process.processIdentifier)\n".write(toFile: directory + "/redis-\(port).pid", atomically: true, encoding: .utf8)
            let server = TLSRedis(directory: directory, password: password, port: port, process: child)
            if try await server.waitUntilAnswering(authClients: authClients) { return server }
            await server.stop()
            guard attempt < 3, server.log.contains("Address already in use") else {
                throw HarnessError("redis-server exited during start-up; its log:\n\(server.log.suffix(2000))")
            }
        }
        preconditionFailure("unreachable")
    }

    /// True once the server answers PING over TLS; false if it exited first.
    private func waitUntilAnswering(authClients: String) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(20)
        while process.process.isRunning {
            if let redis = try? await RedisConnection.connect(configuration(clientCertificate: authClients != "no"), logger: TestEnvironment.logger) {
                let pong = try? await redis.command("PING")
                await redis.close()
                if pong == .status("PONG") { return true }
            }
            guard ContinuousClock.now < deadline else {
                throw HarnessError("redis-server did not answer over TLS within 20 s; its log:\n\(log.suffix(2000))")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Runs `body`, then kills the server (also when `body` throws).
    func whileRunning(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            await stop()
            throw error
        }
        await stop()
    }

    /// SIGKILL: nothing of it is kept. (The exit is polled: waitUntilExit would park a pool thread.)
    func stop() async {
        let process = process.process
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        while process.isRunning { try? await Task.sleep(for: .milliseconds(10)) }
    }

    /// Servers of earlier runs whose test process died before it could kill them.
    static func removeLeftovers() {
        let temporary = FileManager.default.temporaryDirectory.path
        for name in (try? FileManager.default.contentsOfDirectory(atPath: temporary)) ?? [] where name.hasPrefix(prefix) {
            let directory = temporary + "/" + name
            guard let owner = firstNumber(directory + "/owner.pid"), kill(owner, 0) != 0, errno == ESRCH else { continue }
            for file in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where file.hasSuffix(".pid") && file != "owner.pid" {
                if let pid = firstNumber(directory + "/" + file),
                    let command = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
                    String(decoding: command, as: UTF8.self).contains("redis-server")
                {
                    kill(pid, SIGKILL)
                }
            }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    private static func firstNumber(_ path: String) -> Int32? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.split(separator: "\n").first.flatMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
    }
}

/// A throwaway Redis Cluster over TLS: three ``TLSRedis`` nodes in the suite's directory (its CA
/// and certificates, its password), clients and cluster bus both TLS-only, joined by `redis-cli
/// --tls --cluster create` as three masters without replicas. Killed with SIGKILL by
/// ``whileRunning(_:)``.
struct TLSRedisCluster {
    let nodes: [TLSRedis]
    var password: String { nodes[0].password }
    var addresses: [RedisNodeAddress] { nodes.map { RedisNodeAddress(host: "127.0.0.1", port: $0.port) } }
    /// `rediss://` naming the first node only: the others are discovered.
    var url: String { nodes[0].url() }

    /// The seed node's configuration with `redis.cluster` set.
    func configuration(trust: TLSRedis.Trust = .testCA) -> RedisConfiguration {
        var configuration = nodes[0].configuration(trust: trust)
        configuration.cluster = true
        return configuration
    }

    /// Starts the nodes, creates the cluster and waits until every node reports `cluster_state:ok`
    /// with all slots served and the three nodes known. Kills the nodes started when any step fails.
    static func start(directory: String, password: String) async throws -> TLSRedisCluster {
        var nodes: [TLSRedis] = []
        do {
            for _ in 0..<3 { nodes.append(try await TLSRedis.start(directory: directory, password: password, cluster: true)) }
            let cluster = TLSRedisCluster(nodes: nodes)
            let create = try await runProcess(
                URL(fileURLWithPath: "/usr/bin/redis-cli"),
                ["--tls", "--cacert", directory + "/ca.crt", "--cluster", "create"] + cluster.addresses.map(\.description)
                    + ["--cluster-replicas", "0", "--cluster-yes"],
                environment: ["REDISCLI_AUTH": password])
            guard create.status == 0 else {
                throw HarnessError("redis-cli --cluster create failed (\(create.status)): \(create.stdout.suffix(2000)) \(create.stderr.suffix(1000))")
            }
            try await eventually("every TLS cluster node reports cluster_state:ok", timeout: .seconds(30)) {
                for node in nodes {
                    let redis = try await RedisConnection.connect(node.configuration(), logger: TestEnvironment.logger)
                    let info = try await redis.command("CLUSTER", "INFO").string ?? ""
                    await redis.close()
                    guard info.contains("cluster_state:ok"), info.contains("cluster_slots_ok:16384"), info.contains("cluster_known_nodes:3")
                    else { return false }
                }
                return true
            }
            return cluster
        } catch {
            for node in nodes { await node.stop() }
            throw error
        }
    }

    /// Runs `body`, then kills every node (also when `body` throws).
    func whileRunning(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            for node in nodes { await node.stop() }
            throw error
        }
        for node in nodes { await node.stop() }
    }
}

/// This process' sockets, from /proc (Linux).
enum ProcessSockets {
    /// The socket inodes among this process' descriptors.
    static func inodes() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { fd in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + fd),
                target.hasPrefix("socket:[")
            else { return nil }
            return String(target.dropFirst("socket:[".count).dropLast())
        }
    }

    /// This process' TCP sockets whose remote port is `port`.
    static func tcpSockets(toPort port: Int) -> Int {
        var remote: Set<String> = []
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let lines = ((try? String(contentsOfFile: table, encoding: .utf8)) ?? "").split(separator: "\n").dropFirst()
            for line in lines {
                let fields = line.split(separator: " ")
                guard fields.count > 9, let colon = fields[2].lastIndex(of: ":"),
                    Int(fields[2][fields[2].index(after: colon)...], radix: 16) == port
                else { continue }
                remote.insert(String(fields[9]))
            }
        }
        return inodes().filter(remote.contains).count
    }

    /// This process' Unix-domain sockets.
    static func unixSockets() -> Int {
        let lines = ((try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8)) ?? "").split(separator: "\n").dropFirst()
        let unix = Set(lines.compactMap { line -> String? in
            let fields = line.split(separator: " ")
            return fields.count > 6 ? String(fields[6]) : nil
        })
        return inodes().filter(unix.contains).count
    }
}
