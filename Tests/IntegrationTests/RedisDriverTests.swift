import Foundation
import Testing

@testable import OutboxCore

@Suite struct RedisDriverTests {
    @Test func typedRepliesAndBinarySafeArguments() async throws {
        let redis = try await TestEnvironment.redis()
        let key = TestEnvironment.uniqueName("bin")
        let value: [UInt8] = [0, 1, 2, 0, 255, 13, 10]
        #expect(try await redis.command(RedisCommand(bytes: [Array("SET".utf8), Array(key.utf8), value])) == .status("OK"))
        #expect(try await redis.command("GET", key) == .bulk(value))
        #expect(try await redis.command("GET", key + ":missing") == .null)
        #expect(try await redis.command("INCRBY", key + ":n", "5") == .integer(5))
        #expect(try await redis.command("RPUSH", key + ":l", "a", "b") == .integer(2))
        #expect(try await redis.command("LRANGE", key + ":l", "0", "-1") == .array([.bulk(Array("a".utf8)), .bulk(Array("b".utf8))]))
        let error = try await #require(throws: RedisError.self) { try await redis.command("LPUSH", key, "x") }
        #expect(error.code == .server)
        #expect(error.message.hasPrefix("WRONGTYPE"))
        try await redis.command("DEL", key, key + ":n", key + ":l")
    }

    @Test func pipelineOf1000CommandsKeepsOrderAndIsolatesErrors() async throws {
        let redis = try await TestEnvironment.redis()
        let key = TestEnvironment.uniqueName("pipe")
        var commands = (0..<1000).map { RedisCommand("RPUSH", key, String($0)) }
        commands.insert(RedisCommand("HSET", key, "f", "v"), at: 500)  // WRONGTYPE, alone
        let replies = try await redis.pipeline(commands)
        #expect(replies.count == 1001)
        #expect(replies[0] == .integer(1))
        #expect(replies[999] == .integer(999))
        #expect(replies[1000] == .integer(1000))
        guard case .error(let message) = replies[500] else {
            Issue.record("expected an error reply, got \(replies[500])")
            return
        }
        #expect(message.hasPrefix("WRONGTYPE"))
        let stored = try await redis.command("LRANGE", key, "0", "-1").array?.compactMap(\.string)
        #expect(stored == (0..<1000).map(String.init))
        try await redis.command("DEL", key)
    }

    @Test func scriptsLoadOnFirstUseAndAfterTheCacheIsFlushed() async throws {
        let redis = try await TestEnvironment.redis()
        let key = TestEnvironment.uniqueName("lua")
        let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        #expect(try await redis.evaluate(script, keys: [key], arguments: ["2"]) == .integer(2))
        #expect(try await redis.evaluate(script, keys: [key], arguments: ["3"]) == .integer(5))
        try await redis.command("SCRIPT", "FLUSH")  // as after a server restart: NOSCRIPT next time
        #expect(try await redis.evaluate(script, keys: [key], arguments: ["1"]) == .integer(6))
        try await redis.command("DEL", key)
    }

    @Test func authenticatesAndSelectsTheDatabase() async throws {
        var config = try TestEnvironment.redisConfiguration()
        let url = try #require(URLParts(config.url))
        config.url = "redis://:\(url.password ?? "")@\(url.host):\(url.port ?? 6379)/3"
        let redis = try await RedisConnection.connect(config, logger: TestEnvironment.logger)
        let key = TestEnvironment.uniqueName("db3")
        try await redis.command("SET", key, "x")
        let clients = try await redis.command("CLIENT", "INFO").string ?? ""
        #expect(clients.contains("db=3"))
        try await redis.command("DEL", key)
    }

    @Test func wrongPasswordFailsWithoutLeakingIt() async throws {
        var config = try TestEnvironment.redisConfiguration()
        config.password = "not-the-redis-password-123"
        let error = try await #require(throws: RedisError.self) {
            try await RedisConnection.connect(config, logger: TestEnvironment.logger)
        }
        #expect(error.code == .connectionFailed)
        #expect(error.message.contains("AUTH failed"))
        #expect(!"\(error)".contains("not-the-redis-password-123"))
    }

    @Test func cancellationEndsABlockedCommandAndTheNextCallReconnects() async throws {
        let redis = try await TestEnvironment.redis()
        let key = TestEnvironment.uniqueName("blpop")
        let started = ContinuousClock.now
        let blocked = Task { try await redis.command("BLPOP", key, "8") }
        try await Task.sleep(for: .milliseconds(200))
        blocked.cancel()
        await #expect(throws: CancellationError.self) { try await blocked.value }
        // Well before BLPOP's own 8 s (2.35 s seen with the whole suite on two cores).
        #expect(ContinuousClock.now - started < .seconds(4))
        #expect(try await redis.command("PING") == .status("PONG"))
    }

    @Test func reconnectsAfterTheServerClosesTheConnection() async throws {
        let redis = try await TestEnvironment.redis()
        let admin = try await TestEnvironment.redis()
        let name = TestEnvironment.uniqueName("victim")
        try await redis.command("CLIENT", "SETNAME", name)
        try await admin.command("CLIENT", "KILL", "SKIPME", "yes", "ID",
                                String(try await redis.command("CLIENT", "ID").integer ?? 0))
        let error = try await #require(throws: RedisError.self) { try await redis.command("PING") }
        #expect(error.code == .connectionLost)
        #expect(try await redis.command("PING") == .status("PONG"))
    }
}
