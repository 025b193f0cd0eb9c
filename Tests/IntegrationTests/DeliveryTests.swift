import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport
@testable import OutboxRelay

/// Starts one of the Python helpers in Support/ and waits for its "ready" line.
func startHelper(_ script: String, _ arguments: [String]) async throws -> Process {
    let python = URL(fileURLWithPath: try TestEnvironment.variable("OUTBOX_VENV")).appendingPathComponent("bin/python")
    return try await startProcess(
        python, [TestEnvironment.repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Support/\(script)").path] + arguments)
}

/// The deliverers against the real Redis and a fake embeddings API, event by event.
@Suite struct DeliveryTests {
    func event(_ id: Int64, _ operation: String, key: String = "k", _ payload: JSONValue) -> ClaimedEvent {
        ClaimedEvent(id: id, destination: .redis, operation: operation, key: key, payload: payload, createdAt: Date(), attempts: 0)
    }

    func redisDeliverer() async throws -> RedisDeliverer {
        RedisDeliverer(
            redis: try await TestEnvironment.redis(), dedupeNamespace: "outbox:dedupe:" + TestEnvironment.uniqueName("test"),
            dedupeTTL: .seconds(60), logger: TestEnvironment.logger)
    }

    @Test func redeliveredXAddAndPublishTakeEffectOnce() async throws {
        let deliverer = try await redisDeliverer()
        let stream = "stream:" + TestEnvironment.uniqueName("dedupe")
        let channel = TestEnvironment.uniqueName("channel")
        let subscriber = try await TestEnvironment.redis()
        _ = try await subscriber.pipeline([RedisCommand("SUBSCRIBE", channel)])
        let batch = [
            event(1, "xadd", ["stream": .string(stream), "fields": ["seq": "1"]]),
            event(2, "publish", ["channel": .string(channel), "message": "hello"]),
        ]
        for _ in 0..<3 {  // as after crashes between the effect and the acknowledgement
            let outcomes = await deliverer.deliver(batch)
            #expect(outcomes[1] == .delivered(source: nil))
            #expect(outcomes[2] == .delivered(source: nil))
        }
        let redis = try await TestEnvironment.redis()
        let entries = try await redis.command("XRANGE", stream, "-", "+").array ?? []
        #expect(entries.count == 1)
        #expect(entries.first?.array?[1].array?.compactMap(\.string) == ["seq", "1", "outbox_id", "1"])
        // Exactly one message reached the subscriber. In subscribe mode replies queue up in order:
        // the first read returns the message, the second the PING reply (a second message would come first).
        let first = try await subscriber.pipeline([RedisCommand("PING")])[0].array?.compactMap(\.string)
        #expect(first == ["message", channel, "hello"])
        let second = try await subscriber.pipeline([RedisCommand("PING")])[0].array?.compactMap(\.string)
        #expect(second == ["pong", ""])
        try await redis.command("DEL", stream)
    }

    @Test func delAndSetWithTTLApply() async throws {
        let deliverer = try await redisDeliverer()
        let key = TestEnvironment.uniqueName("cache")
        let redis = try await TestEnvironment.redis()
        try await redis.command("SET", key + ":old", "x")
        let outcomes = await deliverer.deliver([
            event(1, "set", key: key, ["key": .string(key), "value": "v1", "ttl_seconds": 120]),
            event(2, "del", key: key, ["keys": [.string(key + ":old")]]),
        ])
        #expect(outcomes.values.allSatisfy { $0 == .delivered(source: nil) })
        #expect(try await redis.command("GET", key) == .bulk(Array("v1".utf8)))
        let ttl = try await redis.command("TTL", key).integer ?? 0
        #expect(ttl > 100 && ttl <= 120)
        #expect(try await redis.command("EXISTS", key + ":old") == .integer(0))
        try await redis.command("DEL", key)
    }

    @Test func wrongTypeIsPermanentAndDoesNotBlockOtherKeys() async throws {
        let deliverer = try await redisDeliverer()
        let key = TestEnvironment.uniqueName("str")
        let redis = try await TestEnvironment.redis()
        try await redis.command("SET", key, "a string, not a stream")
        let other = "stream:" + TestEnvironment.uniqueName("ok")
        let outcomes = await deliverer.deliver([
            event(1, "xadd", key: "a", ["stream": .string(key), "fields": ["f": "v"]]),
            event(2, "xadd", key: "b", ["stream": .string(other), "fields": ["f": "v"]]),
        ])
        guard case .dead(let reason)? = outcomes[1] else {
            Issue.record("expected a dead letter, got \(String(describing: outcomes[1]))")
            return
        }
        #expect(reason.contains("WRONGTYPE"))
        #expect(outcomes[2] == .delivered(source: nil))
        // The failed XADD left no dedupe key: after the operator fixes the key, a requeue delivers it.
        try await redis.command("DEL", key)
        #expect(await deliverer.deliver([event(1, "xadd", key: "a", ["stream": .string(key), "fields": ["f": "v"]])])[1]
            == .delivered(source: nil))
        try await redis.command("DEL", key, other)
    }

    @Test func aRequeuedDeadLetterLandsOnceAfterLaterEventsOfItsKey() async throws {
        // Event 1 fails (WRONGTYPE) and is dead-lettered; event 2 of its key lands and raises the
        // key's mark past 1. The operator fixes the key and requeues 1: it must land once, though
        // its id is below the mark.
        let deliverer = try await redisDeliverer()
        let blocked = "stream:" + TestEnvironment.uniqueName("fixed-later")
        let later = "stream:" + TestEnvironment.uniqueName("later")
        let redis = try await TestEnvironment.redis()
        try await redis.command("SET", blocked, "a string, not a stream")
        var first = event(1, "xadd", ["stream": .string(blocked), "fields": ["seq": "1"]])
        guard case .dead? = await deliverer.deliver([first])[1] else {
            Issue.record("expected a dead letter")
            return
        }
        #expect(await deliverer.deliver([event(2, "xadd", ["stream": .string(later), "fields": ["seq": "2"]])])[2] == .delivered(source: nil))
        try await redis.command("DEL", blocked)
        // Not marked as requeued, event 1 would be taken for a redelivery of an applied event.
        #expect(await deliverer.deliver([first])[1] == .delivered(source: nil))
        #expect(try await redis.command("XLEN", blocked) == .integer(0))
        first.requeued = true
        for _ in 0..<3 {  // delivered, then redelivered as after crashes before the acknowledgement
            #expect(await deliverer.deliver([first])[1] == .delivered(source: nil))
        }
        let entries = try await redis.command("XRANGE", blocked, "-", "+").array ?? []
        #expect(entries.map { $0.array?[1].array?.compactMap(\.string) } == [["seq", "1", "outbox_id", "1"]])
        try await redis.command("DEL", blocked, later)
    }

    @Test func anEventAnEarlierRelayAppliedIsRecognisedByItsOwnDedupeKey() async throws {
        // Relays before the key marks wrote a dedupe key per event. Until its key has a mark, an
        // event with such a key (applied, not yet acknowledged when the relay was upgraded) is a
        // redelivery.
        let namespace = "outbox:dedupe:" + TestEnvironment.uniqueName("test")
        let deliverer = RedisDeliverer(
            redis: try await TestEnvironment.redis(), dedupeNamespace: namespace, dedupeTTL: .seconds(60), logger: TestEnvironment.logger)
        let stream = "stream:" + TestEnvironment.uniqueName("upgraded")
        let redis = try await TestEnvironment.redis()
        try await redis.command("SET", "\(namespace):7", "1", "EX", "60")
        let outcomes = await deliverer.deliver([
            event(7, "xadd", ["stream": .string(stream), "fields": ["seq": "7"]]),
            event(8, "xadd", ["stream": .string(stream), "fields": ["seq": "8"]]),
        ])
        #expect(outcomes[7] == .delivered(source: nil) && outcomes[8] == .delivered(source: nil))
        let entries = try await redis.command("XRANGE", stream, "-", "+").array ?? []
        #expect(entries.map { $0.array?[1].array?.compactMap(\.string) } == [["seq", "8", "outbox_id", "8"]])
        #expect(try await redis.command("GET", "\(namespace):key:k") == .bulk(Array("8".utf8)))
        // A mark that is not a number (or not a string) counts as none, and is replaced: event 9
        // lands each time, as nothing remembers it once its key's mark is overwritten.
        for garbage in [RedisCommand("SET", "\(namespace):key:k", "eight"), RedisCommand("SADD", "\(namespace):key:k", "8")] {
            try await redis.command("DEL", "\(namespace):key:k")
            try await redis.command(garbage)
            #expect(await deliverer.deliver([event(9, "xadd", ["stream": .string(stream), "fields": ["seq": "9"]])])[9] == .delivered(source: nil))
            #expect(try await redis.command("GET", "\(namespace):key:k") == .bulk(Array("9".utf8)))
        }
        #expect(try await redis.command("XLEN", stream) == .integer(3))
        try await redis.command("DEL", stream, "\(namespace):7", "\(namespace):key:k")
    }

    @Test func aFailedXAddHoldsBackTheLaterOnesOfItsKeyInTheBatch() async throws {
        // Redis runs every command it is sent whatever fails before it: unless the script held
        // them back, event 2 would land while event 1 is retried, and the stream would hold them
        // in the wrong order.
        let deliverer = try await redisDeliverer()
        let blocked = TestEnvironment.uniqueName("str")
        let stream = "stream:" + TestEnvironment.uniqueName("guarded")
        let other = "stream:" + TestEnvironment.uniqueName("free")
        let redis = try await TestEnvironment.redis()
        try await redis.command("SET", blocked, "a string, not a stream")
        let outcomes = await deliverer.deliver([
            event(1, "xadd", key: "a", ["stream": .string(blocked), "fields": ["seq": "1"]]),
            event(2, "xadd", key: "a", ["stream": .string(stream), "fields": ["seq": "2"]]),
            event(3, "publish", key: "a", ["channel": .string(stream), "message": "3"]),
            event(4, "xadd", key: "b", ["stream": .string(other), "fields": ["seq": "1"]]),
        ])
        guard case .dead? = outcomes[1], case .retry? = outcomes[2], case .retry? = outcomes[3] else {
            Issue.record("expected dead, retry, retry; got \(outcomes)")
            return
        }
        #expect(outcomes[4] == .delivered(source: nil))
        #expect(try await redis.command("XLEN", stream) == .integer(0))
        #expect(try await redis.command("XLEN", other) == .integer(1))
        // Once event 1 is dead-lettered, the retry delivers the rest in order.
        let retried = await deliverer.deliver([
            event(2, "xadd", key: "a", ["stream": .string(stream), "fields": ["seq": "2"]]),
            event(3, "publish", key: "a", ["channel": .string(stream), "message": "3"]),
        ])
        #expect(retried[2] == .delivered(source: nil) && retried[3] == .delivered(source: nil))
        #expect(try await redis.command("XLEN", stream) == .integer(1))
        try await redis.command("DEL", blocked, stream, other)
    }

    @Test func openAICompatibleEmbedderBatchesAndClassifiesFailures() async throws {
        let port = try freePort()
        let server = try await startHelper("fake_embeddings.py", [String(port), "test-key-123"])
        defer { kill(server.processIdentifier, SIGKILL) }
        var settings = EmbeddingSettings()
        settings.provider = .openai
        settings.baseURL = "http://127.0.0.1:\(port)"
        settings.apiKey = "test-key-123"
        settings.dimensions = 8
        settings.batchSize = 2
        let embedder = OpenAIEmbedder(settings: settings, logger: TestEnvironment.logger)
        let vectors = try await embedder.embed(["a", "b", "c", "a"])
        #expect(vectors.count == 4)
        #expect(vectors.allSatisfy { $0.count == 8 })
        #expect(vectors[0] == vectors[3])
        #expect(vectors[0] != vectors[1])

        let throttled = try await #require(throws: EmbeddingError.self) { try await embedder.embed(["please-429"]) }
        #expect(throttled.isTransient)
        #expect(throttled.retryAfter == .seconds(2))
        let rejected = try await #require(throws: EmbeddingError.self) { try await embedder.embed(["please-400"]) }
        #expect(!rejected.isTransient)
        let broken = try await #require(throws: EmbeddingError.self) { try await embedder.embed(["please-500"]) }
        #expect(broken.isTransient)

        settings.apiKey = "wrong-key-456"
        let unauthorised = try await #require(throws: EmbeddingError.self) {
            try await OpenAIEmbedder(settings: settings, logger: TestEnvironment.logger).embed(["x"])
        }
        #expect(!unauthorised.isTransient)
        #expect(unauthorised.failure == .destination, "a refused key is the endpoint's fault, not the event's")
        #expect(!unauthorised.description.contains("wrong-key-456"))

        settings.apiKey = "test-key-123"
        let wrongDimensions = try await #require(throws: EmbeddingError.self) { try await embedder.embed(["please-wrong-dims"]) }
        #expect(!wrongDimensions.isTransient)
        #expect(wrongDimensions.description.contains("config says embedding.dimensions = 8"))
    }
}
