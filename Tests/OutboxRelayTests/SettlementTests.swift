import Foundation
import Testing

@testable import OutboxCore
@testable import OutboxRelay

/// What a claim's outcomes settle into, with no server: the plan `OutboxStore.acknowledge` carries out.
@Suite struct SettlementTests {
    let settings = RelaySettings()
    let extractions = TableMapping.extractions

    func event(_ id: Int64, key: String = "k", attempts: Int = 0, age: TimeInterval = 0, problem: String? = nil) -> ClaimedEvent {
        ClaimedEvent(
            id: id, destination: .qdrant, operation: "upsert", key: key, payload: [:], createdAt: Date(timeIntervalSinceNow: -age),
            attempts: attempts, payloadProblem: problem)
    }

    @Test func eachOutcomeGoesItsOwnWay() {
        let source = SourceUpdate(table: extractions, rowID: "r1", pointID: "p1")
        let events = [event(1), event(2), event(3), event(4, key: "other"), event(5)]
        let settlement = Settlement(
            events: events,
            outcomes: [
                1: .delivered(source: source), 2: .delivered(source: nil), 3: .retry(reason: "qdrant answered 503", retryAfter: .seconds(7)),
                4: .dead(reason: "qdrant answered 400: bad vector"),
            ],
            settings: settings)
        #expect(settlement.delivered.map(\.id) == [1, 2])
        #expect(settlement.sourceUpdates == [extractions: [source]])
        #expect(settlement.retries.map(\.id) == [3])
        #expect(settlement.retries.first?.delay ?? 0 >= 7, "Retry-After longer than the backoff wins")
        #expect(settlement.deadLetters == [.init(id: 4, key: "other", operation: "upsert", reason: "qdrant answered 400: bad vector")])
        // Event 5 has no outcome (skipped behind its key's failure): released untouched.
        #expect(settlement.counts == .init(delivered: 2, retried: 1, deadLettered: 1))
        #expect(settlement.retryIn == .seconds(7))
        #expect(settlement.lastRetryReason == "qdrant answered 503")
    }

    /// Refused by the destination, unreadable as stored, out of attempts, out of time: every way to
    /// become a dead letter ends in the same list, which is what the worker logs and counts.
    @Test func everyWayToBecomeADeadLetterIsInOneList() {
        let events = [
            event(1), event(2, problem: "the integer 9007199254740993, beyond ±2^53"),
            event(3, attempts: settings.maxAttempts - 1), event(4, age: settings.maxAge.seconds + 60),
        ]
        let settlement = Settlement(
            events: events,
            outcomes: [1: .dead(reason: "qdrant answered 422"), 3: .retry(reason: "timeout", retryAfter: nil), 4: .retry(reason: "timeout", retryAfter: nil)],
            settings: settings)
        #expect(settlement.deadLetters.map(\.id) == [1, 2, 3, 4])
        #expect(settlement.deadLetters[1].reason == "the integer 9007199254740993, beyond ±2^53")
        #expect(settlement.deadLetters[2].reason == "gave up after 25 attempts; last error: timeout")
        #expect(settlement.deadLetters[3].reason.hasPrefix("gave up after "))
        #expect(settlement.deadLetters[3].reason.hasSuffix(" s (relay.max_age); last error: timeout"))
        #expect(settlement.retries.isEmpty && settlement.retryIn == nil && settlement.lastRetryReason == nil)
    }

    @Test func anUnconfirmedDeliveryIsRetriedSoonAndNeverGivenUp() {
        let settlement = Settlement(
            events: [event(1, attempts: settings.maxAttempts + 10, age: settings.maxAge.seconds * 2)],
            outcomes: [1: .unconfirmed(reason: "redis connection lost")], settings: settings)
        #expect(settlement.retries.map(\.id) == [1])
        #expect(settlement.deadLetters.isEmpty)
        #expect(settlement.retryIn == settings.backoff.initial / 2)
    }

    @Test func aDestinationFaultWaitsWithBackoffAndIsNeverDeadLettered() {
        let settlement = Settlement(
            events: [event(1, attempts: settings.maxAttempts + 3, age: settings.maxAge.seconds * 2), event(2)],
            outcomes: [1: .destinationFault(reason: "qdrant answered 401: Invalid api-key"), 2: .destinationFault(reason: "qdrant answered 401")],
            settings: settings)
        #expect(settlement.deadLetters.isEmpty)
        #expect(settlement.retries.map(\.id) == [1, 2])
        #expect(settlement.retries.allSatisfy { $0.delay > 0 })
        #expect(settlement.lastRetryReason == "qdrant answered 401")
    }

    @Test func reasonsAreStoredWithoutNULAndCapped() {
        let settlement = Settlement(
            events: [event(1), event(2)],
            outcomes: [1: .dead(reason: "echo \0 of input"), 2: .retry(reason: String(repeating: "x", count: 10_000), retryAfter: nil)],
            settings: settings)
        #expect(settlement.deadLetters.first?.reason == "echo \\u0000 of input")
        #expect(settlement.retries.first?.reason.utf8.count == 4096 + "…".utf8.count)
    }
}
