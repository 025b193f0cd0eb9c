import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

extension HostileInput {
    /// The health server under hostile HTTP clients, spoken to over raw sockets (`RawHTTPClient.swift`):
    /// unknown paths and methods, HEAD, oversized headers and garbage get the right status; slowloris
    /// and hundreds of idle connections neither slow /livez nor delivery, and are closed by the
    /// server's idle timeout.
    ///
    /// Part of ``HostileInput``, which runs its suites' tests one at a time.
    @Suite struct HostileHTTPClientTests {
        @Test func healthServerAnswersUnknownPathsMethodsAndOversizedHeadersCorrectly() async throws {
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
                let relay = try DaemonProcess.relay(databaseURL: url)
                try await relay.waitUntilReady()
                let port = relay.port
                for path in ["/", "/nope", "/livez/extra", "/LIVEZ", "/%00", "/status/../../etc/passwd", "/" + String(repeating: "a", count: 4000)] {
                    let r = try await RawHTTP.exchange(port: port, "GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n")
                    #expect(r.status == 404, "GET \(path.prefix(60)): \(r.head)")
                }
                for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
                    for path in HealthServer.paths {
                        let r = try await RawHTTP.exchange(port: port, "\(method) \(path) HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                        #expect(r.status == 405, "\(method) \(path): \(r.head)")
                        #expect(r.header("allow") == "GET, HEAD", "\(method) \(path): \(r.head)")
                    }
                }
                let head = try await RawHTTP.exchange(port: port, "HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n", expectBody: false)
                #expect(head.status == 200)
                #expect(head.header("content-length") == "3")
                #expect(head.body.isEmpty, "HEAD answered with a body")
                // A method the parser does not know: refused, the connection closed.
                let brew = try await RawHTTP.exchange(port: port, "BREW /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(brew.status == 400 || brew.status == 405, "\(brew.head)")
                // Headers beyond 16 KiB (one huge one, or many): refused before they cost memory.
                for request in [
                    "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "b", count: 64 * 1024))\r\n\r\n",
                    "GET /livez HTTP/1.1\r\nHost: x\r\n" + (0..<2000).map { "X-H\($0): v\r\n" }.joined() + "\r\n",
                ] {
                    let r = try await RawHTTP.exchange(port: port, request)
                    #expect(r.status == 400 || r.status == 431, "\(r.head)")
                    #expect(r.closed, "the server kept a connection that sent oversized headers")
                }
                // Garbage instead of HTTP.
                let garbage = try await RawHTTP.exchange(port: port, "\u{16}\u{3}\u{1}\u{0}\u{a5}\u{1}\u{0}\u{0}\r\n\r\n")
                #expect(garbage.status == 400 && garbage.closed, "\(garbage.head)")
                // After all that, the server still answers normally.
                #expect(await relay.get("/livez")?.status == 200)
                #expect(await relay.get("/readyz")?.status == 200)
            }
        }

        /// Slowloris (headers a byte at a time) and hundreds of idle connections: /livez keeps
        /// answering fast from another connection, the relay keeps delivering, and the server closes
        /// the abusers after its idle timeout instead of holding them (and their descriptors) forever.
        @Test func slowAndIdleClientsLeaveTheDaemonUnaffected() async throws {
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
                let relay = try DaemonProcess.relay(databaseURL: url)
                try await relay.waitUntilReady()
                let started = ContinuousClock.now
                var idle: [RawSocket] = []
                for _ in 0..<300 { idle.append(try await RawSocket(port: relay.port)) }
                let slow = try await withThrowingTaskGroup(of: RawSocket.self) { group in
                    for _ in 0..<20 { group.addTask { try await RawSocket(port: relay.port) } }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                let trickle = Task {
                    // One byte every 200 ms of a request that never ends.
                    let bytes = Array("GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ".utf8) + Array(repeating: UInt8(ascii: "z"), count: 200)
                    var closedAfter: [Duration?] = Array(repeating: nil, count: slow.count)
                    for byte in bytes {
                        for (i, socket) in slow.enumerated() where closedAfter[i] == nil {
                            if !socket.sendNow([byte]) || socket.isClosedByPeer() { closedAfter[i] = ContinuousClock.now - started }
                        }
                        if closedAfter.allSatisfy({ $0 != nil }) { break }
                        try await Task.sleep(for: .milliseconds(200))
                    }
                    return closedAfter
                }

                // Meanwhile: /livez stays fast and events keep flowing.
                let stream = "stream:" + TestEnvironment.uniqueName("abuse")
                try await db.transaction { tx in
                    for n in 0..<200 { try await OutboxWriter.enqueue(.redisXAdd(stream: stream, fields: ["n": String(n)], key: "k\(n % 10)"), on: tx) }
                }
                var slowest: Duration = .zero
                for _ in 0..<30 {
                    let t = ContinuousClock.now
                    #expect(await relay.get("/livez")?.status == 200)
                    slowest = max(slowest, ContinuousClock.now - t)
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(slowest < .milliseconds(500), "/livez took \(slowest) while abusers were connected")
                try await eventually("delivery during the abuse", timeout: .seconds(20)) {
                    try await db.count("outbox.events") == 0
                }
                let redis = try await TestEnvironment.redis()
                #expect(try await redis.command("XLEN", stream) == .integer(200))

                // The abusers are cut off by the idle timeout (10 s), not kept for ever.
                let closedAfter = try await trickle.value
                #expect(closedAfter.allSatisfy { $0 != nil && $0! < .seconds(20) }, "slow clients still connected: \(closedAfter)")
                try await eventually("idle connections closed by the server", timeout: .seconds(20)) {
                    idle.allSatisfy { $0.isClosedByPeer() }
                }
                #expect(await relay.get("/livez")?.status == 200)
                #expect(relay.process.isRunning)
                try await redis.command("DEL", stream)
            }
        }
    }
}
