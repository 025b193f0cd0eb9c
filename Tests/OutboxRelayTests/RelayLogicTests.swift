import Foundation
import Logging
import Testing

@testable import OutboxCore
@testable import OutboxRelay

@Suite struct RelayLogicTests {
    @Test func backoffGrowsExponentiallyWithJitterAndIsCapped() {
        let backoff = Backoff(initial: .milliseconds(500), maximum: .seconds(10))
        #expect(backoff.delay(afterAttempt: 1, random: 1) == .milliseconds(500))
        #expect(backoff.delay(afterAttempt: 1, random: 0) == .milliseconds(250))
        #expect(backoff.delay(afterAttempt: 3, random: 1) == .seconds(2))
        #expect(backoff.delay(afterAttempt: 30, random: 1) == .seconds(10))
        #expect(backoff.delay(afterAttempt: 30, random: 0) == .seconds(5))
    }

    /// `ClaimHorizon`: ids are settled for a slot once every writer that held it when they had been
    /// handed out has ended; for a slot no one holds, at once.
    @Test func theClaimHorizonSettlesASlotOnlyWhenItsWritersOfThatMomentHaveEnded() {
        var horizon = ClaimHorizon()
        horizon.observe(lastID: 10, holders: [])
        #expect(horizon.limits == .init(through: 10, busy: [:]))
        // T1 (slot 5) and T2 (slot 7) running; ids up to 20 handed out.
        horizon.observe(lastID: 20, holders: [(5, "3/100"), (7, "4/200")])
        #expect(horizon.limits == .init(through: 20, busy: [5: 10, 7: 10]))
        // T1 ended, T3 now holds slot 5 too: what T1 could still have committed up to 20 is settled
        // for slot 5, not what T3 may hold up to 30. T2 runs on.
        horizon.observe(lastID: 30, holders: [(5, "5/300"), (7, "4/200")])
        #expect(horizon.limits == .init(through: 30, busy: [5: 20, 7: 10]))
        // Everyone ended: every slot is free up to 40.
        horizon.observe(lastID: 40, holders: [])
        #expect(horizon.limits == .init(through: 40, busy: [:]))
        // A slot busy at its first observation waits for its writers from what was settled before.
        horizon.observe(lastID: 50, holders: [(9, "6/1")])
        #expect(horizon.limits.busy == [9: 40])
        // A writer that never ends (a long transaction) keeps its slot's limit, and at most
        // `maxPendingPerSlot` observations of it; when it ends, the latest of them settles.
        for n in 1...100 { horizon.observe(lastID: 50 + Int64(n), holders: [(9, "6/1"), (9, "7/\(n)")]) }
        #expect(horizon.limits.busy == [9: 40])
        horizon.observe(lastID: 200, holders: [(9, "8/1")])
        #expect(horizon.limits.busy == [9: 150])
    }

    @Test func httpStatusesAreClassifiedAsTheContractSays() {
        for status in [408, 429, 500, 502, 503, 504] {
            #expect(FailureClass.http(status: status, retryAfterHeader: nil) == .transient(retryAfter: nil))
        }
        for status in [400, 404, 409, 422] {
            #expect(FailureClass.http(status: status, retryAfterHeader: nil) == .permanent)
        }
        // The destination refuses the relay's credentials: its fault, not the event's (issue 18).
        for status in [401, 403] {
            #expect(FailureClass.http(status: status, retryAfterHeader: nil) == .destination)
        }
        #expect(FailureClass.http(status: 429, retryAfterHeader: "7") == .transient(retryAfter: .seconds(7)))
        #expect(FailureClass.parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT") == nil)
    }

    @Test func redisErrorRepliesAreClassified() {
        #expect(FailureClass.redis(errorReply: "WRONGTYPE Operation against a key") == .permanent)
        #expect(FailureClass.redis(errorReply: "ERR unknown command") == .permanent)
        #expect(FailureClass.redis(errorReply: "LOADING Redis is loading the dataset") == .transient(retryAfter: nil))
        #expect(FailureClass.redis(errorReply: "OOM command not allowed") == .transient(retryAfter: nil))
        for refusal in ["NOAUTH Authentication required.", "WRONGPASS invalid username-password pair", "NOPERM this user has no permissions"] {
            #expect(FailureClass.redis(errorReply: refusal) == .destination, "\(refusal)")
        }
    }

    @Test func hashingEmbedderIsDeterministicNormalisedAndLexical() async throws {
        let embedder = HashingEmbedder(dimensions: 64)
        let vectors = try await embedder.embed(["invoice from acme corp", "invoice from acme corp", "weather in oslo", ""])
        #expect(vectors[0] == vectors[1])
        #expect(vectors.allSatisfy { $0.count == 64 })
        let norm = vectors[0].reduce(0) { $0 + $1 * $1 }
        #expect(abs(norm - 1) < 1e-5)
        func cosine(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
        let near = try await embedder.embed(["acme corp invoice total"])[0]
        #expect(cosine(vectors[0], near) > cosine(vectors[0], vectors[2]))
        #expect(vectors[3].reduce(0) { $0 + $1 * $1 } > 0, "an empty text still gets a valid vector")
    }

    @Test func arrayParametersQuoteTheirElements() {
        #expect(PostgresText.arrayLiteral(["a", "b"].map(PostgresText.quoteArrayElement)) == #"{"a","b"}"#)
        #expect(PostgresText.quoteArrayElement(#"say "hi" \ bye"#) == #""say \"hi\" \\ bye""#)
        #expect(PostgresText.quoteArrayElement("NULL") == #""NULL""#)
    }

    @Test func keyBlockerBlocksOnlyTheFailedKey() {
        func event(_ id: Int64, _ key: String) -> ClaimedEvent {
            ClaimedEvent(id: id, destination: .redis, operation: "set", key: key, payload: [:], createdAt: Date(), attempts: 0)
        }
        var blocker = KeyBlocker()
        blocker.record(.retry(reason: "down", retryAfter: nil), for: event(1, "a"))
        blocker.record(.dead(reason: "poison"), for: event(2, "b"))
        #expect(blocker.isBlocked(event(3, "a")))
        #expect(!blocker.isBlocked(event(4, "b")), "a dead-lettered event does not block its key")
        #expect(!blocker.isBlocked(event(5, "c")))
    }
}

@Suite struct DelivererParsingTests {
    func event(_ operation: String, _ payload: JSONValue, destination: OutboxEvent.Destination = .qdrant) -> ClaimedEvent {
        ClaimedEvent(id: 1, destination: destination, operation: operation, key: "k", payload: payload, createdAt: Date(), attempts: 0)
    }

    var qdrant: QdrantDeliverer {
        QdrantDeliverer(
            client: QdrantClient(configuration: QdrantConfiguration(url: "http://127.0.0.1:1"), logger: Logger(label: "t")),
            embedder: HashingEmbedder(dimensions: 4), tables: ["extractions": .extractions], sourceTypes: SourceColumnTypes(),
            collections: [:], maxBatchBytes: 1 << 20, logger: Logger(label: "t"))
    }

    @Test func upsertWithSourceBecomesAPointAndASourceUpdate() throws {
        let op = try qdrant.parse(event("upsert", [
            "collection": "c", "id": "6F1C1D3E-5B1A-4C36-9A8F-2F0D3B7C9E11", "vector": [1, 2],
            "source": ["table": "extractions", "id": "row-1"],
        ])).get()
        guard case .upsert(let collection, let point, let text, let source) = op else {
            Issue.record("not an upsert: \(op)")
            return
        }
        #expect(collection == "c")
        #expect(point["vector"] == [1, 2])
        #expect(point["payload"] == .object([:]))
        #expect(text == nil)
        #expect(source?.rowID == "row-1")
        #expect(source?.pointID == "6f1c1d3e-5b1a-4c36-9a8f-2f0d3b7c9e11")
    }

    @Test(arguments: [
        (JSONValue.object(["id": 1, "vector": [1]]), #""collection" must be a non-empty string"#),
        (JSONValue.object(["collection": "c", "id": -1, "vector": [1]]), #""id" must be an unsigned integer or a UUID"#),
        (JSONValue.object(["collection": "c", "id": 1]), #"needs "vector" or "text""#),
        (JSONValue.object(["collection": "c", "id": 1, "vector": ["x"]]), #""vector" must be a non-empty list of numbers"#),
        (JSONValue.object(["collection": "c", "id": 1, "text": "t", "source": ["table": "orders", "id": "1"]]), #"source.table "orders" is not a table mapped"#),
    ])
    func malformedUpsertsAreNamed(payload: JSONValue, message: String) {
        guard case .failure(let problem) = qdrant.parse(event("upsert", payload)) else {
            Issue.record("accepted \(payload)")
            return
        }
        #expect(problem.message.contains(message), "\(problem.message)")
    }

    @Test func onlyIdenticalSetPayloadsShareARequest() {
        let a = QdrantDeliverer.Operation.setPayload(collection: "c", ids: [1], payload: ["x": 1])
        let b = QdrantDeliverer.Operation.setPayload(collection: "c", ids: [2], payload: ["x": 1])
        let c = QdrantDeliverer.Operation.setPayload(collection: "c", ids: [3], payload: ["x": 2])
        #expect(QdrantDeliverer.sameRequest(a, b))
        #expect(!QdrantDeliverer.sameRequest(a, c))
        #expect(!QdrantDeliverer.sameRequest(.delete(collection: "c", ids: [1]), .delete(collection: "d", ids: [1])))
    }

    @Test func aPassMovesOnAfterFullClaimsAndWindowsAndStartsOverAtTheEnd() {
        typealias Scan = ClaimPlanning.Scan
        func next(from: Int64 = 100, heads: [Int64], windowEnd: Int64? = nil, fullKeysLast: [Int64] = []) -> Scan {
            ClaimPlanning.nextScan(from: from, heads: heads, batchSize: 3, windowEnd: windowEnd, fullKeysLast: fullKeysLast)
        }
        // A full claim: on after its last head (not after the window: heads may lie between).
        #expect(next(heads: [101, 150, 120], windowEnd: 900) == Scan(cursor: 150, more: true))
        // A short claim that stopped at its window: on after the window, at once.
        #expect(next(heads: [101], windowEnd: 900) == Scan(cursor: 900, more: true))
        #expect(next(heads: [], windowEnd: 900) == Scan(cursor: 900, more: true))
        // The end of the events: from the front, at once if there was work or rows were skipped.
        #expect(next(heads: [101]) == Scan(cursor: 0, more: true))
        #expect(next(heads: []) == Scan(cursor: 0, more: true))
        #expect(next(from: 0, heads: []) == Scan(cursor: 0, more: false))
        // Keys that took their whole share go on just after their last event.
        #expect(next(heads: [101, 102, 103], fullKeysLast: [140, 130]) == Scan(cursor: 103, more: true))
        #expect(next(heads: [101], windowEnd: 900, fullKeysLast: [140, 130]) == Scan(cursor: 130, more: true))
        #expect(next(from: 0, heads: [1], fullKeysLast: [40]) == Scan(cursor: 40, more: true))
    }

    @Test func aLaneThatFindsNoHeadsGoesWhereItsKeysGoOn() {
        func next(windowEnd: Int64, resume: Int64? = nil) -> Int64 {
            var course = ClaimPlanning.Course(resume: resume)
            return ClaimPlanning.afterEmptyWindow(&course, windowEnd: windowEnd)
        }
        // Where the lane's own keys go on, if ahead, rather than one window at a time through the
        // followers before it.
        #expect(next(windowEnd: 3_000, resume: 18_736) == 18_736)
        #expect(next(windowEnd: 21_246, resume: 39_755) == 39_755)
        // A resume point the empty window already covered (another claimer took those keys) is no
        // guide, nor is none: on after the window.
        #expect(next(windowEnd: 3_000, resume: 2_500) == 3_000)
        #expect(next(windowEnd: 2_000) == 2_000)
    }

    @Test func aLaneTakesFewerHeadsWhileEveryKeyFillsItsShareAndMoreWhenKeysRunOut() {
        var settings = RelaySettings()
        (settings.batchSize, settings.batchEvents, settings.maxPerKey) = (500, 5000, 100)
        func next(_ limit: Int, heads: Int, saturated: Bool) -> Int {
            ClaimPlanning.nextHeadsLimit(limit, heads: heads, saturated: saturated, settings: settings)
        }
        // Deep keys: halving down to the heads that fill batch_events at max_per_key each (50).
        #expect(next(500, heads: 500, saturated: true) == 250)
        #expect(next(250, heads: 250, saturated: true) == 125)
        #expect(next(125, heads: 125, saturated: true) == 62)
        #expect(next(62, heads: 62, saturated: true) == 50)
        #expect(next(50, heads: 50, saturated: true) == 50)
        // Keys that ran out: doubling back up to batch_size; nothing claimed: unchanged.
        #expect(next(50, heads: 50, saturated: false) == 100)
        #expect(next(400, heads: 12, saturated: false) == 500)
        #expect(next(50, heads: 0, saturated: false) == 50)
        // max_per_key above batch_events: down to one head; batch_size below the floor: batch_size.
        settings.maxPerKey = 10_000
        #expect(next(2, heads: 2, saturated: true) == 1)
        (settings.batchSize, settings.maxPerKey) = (20, 100)
        #expect(next(20, heads: 20, saturated: true) == 20)
    }

    @Test func aPassThatFoundNoHeadsEndsInAWaitAndOneThatFoundSomeStartsAnother() {
        typealias Scan = ClaimPlanning.Scan
        var found = false
        func again(_ next: Scan, heads: Int) -> Bool { ClaimPlanning.claimAgainAtOnce(after: next, heads: heads, passFoundHeads: &found) }
        // Mid-pass: as the claim says.
        #expect(again(Scan(cursor: 2_000, more: true), heads: 0))
        #expect(!found)
        // The end of a pass that found nothing: wait, though the claim itself says go on.
        #expect(!again(Scan(cursor: 0, more: true), heads: 0))
        // A pass with heads in any of its claims starts the next at once, and that one starts afresh.
        #expect(again(Scan(cursor: 900, more: true), heads: 4))
        #expect(again(Scan(cursor: 1_900, more: true), heads: 0))
        #expect(again(Scan(cursor: 0, more: true), heads: 0))
        #expect(!found)
        #expect(!again(Scan(cursor: 0, more: true), heads: 0))
    }

    @Test func aLaneThatKeepsFindingNoHeadsLooksAtTheFrontThenWalksOnTwiceAsFar() {
        var course = ClaimPlanning.Course()
        func next(windowEnd: Int64) -> Int64 { ClaimPlanning.afterEmptyWindow(&course, windowEnd: windowEnd) }
        // The heads may all lie behind the lane (it passed them): to the front after two empty windows.
        #expect(next(windowEnd: 193_000) == 193_000)
        #expect(next(windowEnd: 194_000) == 0)
        // None there either (held, or waiting for a retry): back where the walk left off, for four
        // windows this time, so a head further on is still reached.
        #expect(next(windowEnd: 1_000) == 1_000)
        #expect(next(windowEnd: 2_000) == 194_000)
        #expect((1...3).map { next(windowEnd: 194_000 + $0 * 1_000) } == [195_000, 196_000, 197_000])
        #expect(next(windowEnd: 198_000) == 0)
        #expect(next(windowEnd: 1_000) == 1_000)
        #expect(next(windowEnd: 2_000) == 198_000)
        // A claim that finds heads starts a new course.
        course = ClaimPlanning.Course(resume: 9_001)
        #expect(next(windowEnd: 4_000) == 9_001)
        #expect(next(windowEnd: 10_000) == 0)
    }

    @Test func anUnconfirmedDeliveryIsRetriedPastTheLimitsAndAFailedOneIsNot() {
        let settings = RelaySettings()
        let old = ClaimedEvent(
            id: 1, destination: .redis, operation: "xadd", key: "k", payload: [:], createdAt: Date(timeIntervalSinceNow: -2 * 86_400),
            attempts: settings.maxAttempts - 1)
        guard case .deadLetter(let reason) = Settlement.afterFailure(.retry(reason: "LOADING", retryAfter: nil), of: old, settings: settings, now: Date())
        else {
            Issue.record("a failed delivery past relay.max_attempts was not dead-lettered")
            return
        }
        #expect(reason == "gave up after 25 attempts; last error: LOADING")
        guard case .retry = Settlement.afterFailure(.unconfirmed(reason: "connection lost"), of: old, settings: settings, now: Date()) else {
            Issue.record("an unconfirmed delivery was dead-lettered")
            return
        }
        // Which outcomes are unconfirmed: a call left unanswered, for events deduplicated by their key's mark.
        var event = ClaimedEvent(id: 1, destination: .redis, operation: "xadd", key: "k", payload: [:], createdAt: Date(), attempts: 0)
        #expect(RedisDeliverer.unanswered(event, reason: "r") == .unconfirmed(reason: "r"))
        event.requeued = true
        #expect(RedisDeliverer.unanswered(event, reason: "r") == .retry(reason: "r", retryAfter: nil))
        let set = ClaimedEvent(id: 2, destination: .redis, operation: "set", key: "k", payload: [:], createdAt: Date(), attempts: 0)
        #expect(RedisDeliverer.unanswered(set, reason: "r") == .retry(reason: "r", retryAfter: nil))
    }

    @Test func redisChunksKeepEachKeysEventsTogetherAndInOrder() {
        let keys = ["a", "b", "a", "c", "d", "a", "c", "e", "b"]
        let items = keys.enumerated().map { i, key in
            (event: ClaimedEvent(id: Int64(i + 1), destination: .redis, operation: "set", key: key, payload: [:], createdAt: Date(), attempts: 0),
             arguments: i)
        }
        let chunks = RedisDeliverer.chunked(items, size: 2)
        #expect(chunks.map { $0.map(\.event.id) } == [[1, 2, 3, 6, 9], [4, 5, 7], [8]])
        #expect(RedisDeliverer.chunked(items, size: 500).map(\.count) == [9])
    }

    /// Large values: a chunk closes at a byte size too, and chunks go out in round trips of about
    /// `bytes` each (a chunk larger than that alone), in order.
    @Test func redisChunksAndRoundTripsAreBoundedByBytes() {
        let sizes = [3, 1, 1, 9, 1, 1, 1]
        let items = sizes.enumerated().map { i, size in
            var arguments = RedisArguments()
            arguments.append(bytes: [UInt8](repeating: 120, count: size * 100))
            return (event: ClaimedEvent(id: Int64(i + 1), destination: .redis, operation: "set", key: "k\(i)", payload: [:], createdAt: Date(), attempts: 0),
                    arguments: arguments)
        }
        let chunks = RedisDeliverer.chunked(items, size: 500, bytes: 250)
        #expect(chunks.map { $0.map(\.event.id) } == [[1], [2, 3, 4], [5, 6, 7]])
        let rounds = RedisDeliverer.rounds(chunks, bytes: 400)
        #expect(rounds.map { $0.map { $0.map(\.event.id) } } == [[[1]], [[2, 3, 4]], [[5, 6, 7]]])
        let small = RedisDeliverer.rounds(RedisDeliverer.chunked(items, size: 1, bytes: .max), bytes: 400)
        #expect(small.map { $0.flatMap { $0.map(\.event.id) } } == [[1], [2, 3], [4], [5, 6, 7]])
        #expect(items[3].arguments.longest == 900)
    }

    @Test func redisCommandsAreEncodedInTheWireProtocolOnce() {
        var arguments = RedisArguments(["SET", "é", ""])
        arguments.append(Int64(42))
        arguments.append(-7)
        #expect(arguments.count == 5)
        #expect(arguments.strings == ["SET", "é", "", "42", "-7"])
        #expect(String(decoding: RedisCommand(arguments).encoded, as: UTF8.self) == "*5\r\n$3\r\nSET\r\n$2\r\né\r\n$0\r\n\r\n$2\r\n42\r\n$2\r\n-7\r\n")
        #expect(RedisCommand(bytes: [[0, 13, 10]]).encoded == Array("*1\r\n$3\r\n".utf8) + [0, 13, 10, 13, 10])
    }

    @Test func redisCommandsCarryTheOrderingKeyDedupeModeAndOutboxID() throws {
        let redis = RedisDelivererCommands()
        let xadd = try redis.command(for: event("xadd", ["stream": "s", "fields": ["b": "2", "a": "1"], "maxlen": 100], destination: .redis)).get()
        #expect(xadd == ["k", "k", "1", "12", "XADD", "s", "MAXLEN", "~", "100", "*", "a", "1", "b", "2", "outbox_id", "1"])
        var requeued = event("publish", ["channel": "c", "message": "m"], destination: .redis)
        #expect(try redis.command(for: requeued).get() == ["k", "k", "1", "3", "PUBLISH", "c", "m"])
        requeued.requeued = true
        #expect(try redis.command(for: requeued).get() == ["k", "e", "1", "3", "PUBLISH", "c", "m"])
        let set = try redis.command(for: event("set", ["key": "k", "value": "v", "ttl_seconds": 60], destination: .redis)).get()
        #expect(set == ["k", "", "1", "5", "SET", "k", "v", "EX", "60"])
        guard case .failure(let problem) = redis.command(for: event("set", ["key": "k", "value": 5], destination: .redis)) else {
            Issue.record("accepted a non-string value")
            return
        }
        #expect(problem.message == #"malformed redis.set payload: "value" must be a string"#)
    }
}

/// `RedisDeliverer.buildCommand` without a connection, as text.
struct RedisDelivererCommands {
    func command(for event: ClaimedEvent, trace: (field: String, value: String)? = nil) -> Result<[String], RedisDeliverer.PayloadProblem> {
        RedisDeliverer.buildCommand(for: event, trace: trace).map(\.strings)
    }
}

/// What a traced event carries to its destination (DESIGN, "Tracing"), without a tracer.
@Suite struct TraceContextTests {
    let traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    func event(_ id: Int64, _ traceParent: String?, _ operation: String = "xadd", _ payload: JSONValue = ["stream": "s", "fields": ["a": "b"]])
        -> ClaimedEvent
    {
        ClaimedEvent(
            id: id, destination: .redis, operation: operation, key: "k", payload: payload, createdAt: Date(), attempts: 0,
            traceParent: traceParent)
    }

    /// With span export off, the writer's valid traceparent is passed on as it is; an invalid one
    /// is reported and passed on nowhere; an event without one carries none.
    @Test func withoutATracerTheWritersContextIsCarriedAndAnInvalidOneReported() {
        var invalid: [Int64] = []
        let upper = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"
        let traces = DeliveryTraces(
            [event(1, traceParent), event(2, "00-zz"), event(3, nil), event(4, upper), event(5, "01-\(traceParent.dropFirst(3))-extra")],
            destination: .redis, tracer: nil) { invalid.append($0.id) }
        #expect(traces.carried(1) == traceParent)
        #expect(traces.carried(2) == nil && traces.carried(3) == nil)
        // Upper-case hex is not valid (W3C: lower-case only), nor is a version the relay does not know.
        #expect(invalid == [2, 4, 5])
        #expect(traces.spans.isEmpty)
        #expect(traces.request("redis pipeline", carrying: [event(1, traceParent)]) == nil)
    }

    /// The stream entry gets the trace field after the event's own fields, unless it has one.
    @Test func anXAddCarriesTheTraceFieldUnlessItsFieldsHaveOne() throws {
        let redis = RedisDelivererCommands()
        let traced = try redis.command(for: event(7, traceParent), trace: ("traceparent", traceParent)).get()
        #expect(traced == ["k", "k", "7", "9", "XADD", "s", "*", "a", "b", "outbox_id", "7", "traceparent", traceParent])
        let own = event(8, traceParent, "xadd", ["stream": "s", "fields": ["traceparent": "mine"]])
        #expect(try redis.command(for: own, trace: ("traceparent", traceParent)).get().filter { $0 == "traceparent" }.count == 1)
        // Other operations are not altered.
        let publish = try redis.command(for: event(9, traceParent, "publish", ["channel": "c", "message": "m"]), trace: ("traceparent", traceParent)).get()
        #expect(publish == ["k", "k", "9", "3", "PUBLISH", "c", "m"])
    }
}

@Suite struct WakeupTests {
    /// Lane 0 probes its destination when its wait ends at the deadline, and claims when signalled.
    @Test func aWaitTellsASignalFromItsDeadline() async {
        let wakeup = Wakeup()
        #expect(await wakeup.wait(until: .now + .milliseconds(20)) == false)
        await wakeup.signal()
        #expect(await wakeup.wait(until: .now + .seconds(30)) == true)  // a pending signal, at once
        Task {
            try? await Task.sleep(for: .milliseconds(20))
            await wakeup.signal()
        }
        #expect(await wakeup.wait(until: nil) == true)
        // A wait whose deadline has passed while it was being set up still ends, as a timeout.
        #expect(await wakeup.wait(until: .now - .seconds(1)) == false)
    }
}
