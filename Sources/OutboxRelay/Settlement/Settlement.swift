import Foundation
import OutboxCore

/// What becomes of a claim's events once the deliverer has tried them: the one place the relay
/// decides between acknowledging, retrying and dead-lettering.
///
/// A value computed from the claim, the deliverer's outcomes and the settings, with no I/O:
/// `OutboxStore.acknowledge` carries it out in the claiming transaction, and `DestinationWorker`
/// logs and counts from it, so every way to become a dead letter (refused by the destination, a
/// payload that cannot be delivered exactly, `relay.max_attempts`, `relay.max_age`) is logged and
/// counted the same way.
struct Settlement: Equatable {
    /// An event tried again after `delay` seconds.
    struct Retry: Equatable {
        let id: Int64
        let delay: Double
        let reason: String
    }

    /// An event moved to `outbox.dead_letters` with `reason`.
    struct DeadLetter: Equatable {
        let id: Int64
        let key: String
        let operation: String
        let reason: String
    }

    /// How many events went each way.
    struct Counts: Equatable, Sendable {
        var delivered = 0
        var retried = 0
        var deadLettered = 0
    }

    /// Confirmed: deleted from the outbox.
    private(set) var delivered: [ClaimedEvent] = []
    /// Domain rows whose embedding column is set, by table, in the same transaction.
    private(set) var sourceUpdates: [TableMapping: [SourceUpdate]] = [:]
    private(set) var retries: [Retry] = []
    private(set) var deadLetters: [DeadLetter] = []
    /// When a lane should look at the retried keys again: the soonest any of them may be due.
    private(set) var retryIn: Duration?

    var counts: Counts { Counts(delivered: delivered.count, retried: retries.count, deadLettered: deadLetters.count) }

    /// The reason of the last retry, for `/readyz` and the log.
    var lastRetryReason: String? { retries.last?.reason }

    /// `outcomes` are the deliverer's, by event id. An event with a `payloadProblem` was not sent
    /// and is dead-lettered with it; an event without an outcome was not attempted (`.skipped`) and
    /// is released untouched when the transaction commits.
    init(events: [ClaimedEvent], outcomes: [Int64: DeliveryOutcome], settings: RelaySettings, now: Date = Date()) {
        for event in events {
            let outcome = event.payloadProblem.map { DeliveryOutcome.dead(reason: $0) } ?? outcomes[event.id] ?? .skipped
            switch outcome {
            case .delivered(let source):
                delivered.append(event)
                if let source { sourceUpdates[source.table, default: []].append(source) }
            case .dead(let reason):
                deadLetter(event, reason)
            case .retry(let reason, _), .unconfirmed(let reason), .destinationFault(let reason):
                switch Self.afterFailure(outcome, of: event, settings: settings, now: now) {
                case .retry(let delay):
                    retries.append(Retry(id: event.id, delay: delay, reason: Self.storable(reason)))
                    // A lane looks again soon (the key's first retry is due after the initial backoff
                    // at the earliest), or when the destination asked (`Retry-After`).
                    let wait: Duration
                    if case .retry(_, let after) = outcome { wait = max(settings.backoff.initial / 2, after ?? .zero) } else {
                        wait = settings.backoff.initial / 2
                    }
                    retryIn = min(retryIn ?? wait, wait)
                case .deadLetter(let reason):
                    deadLetter(event, reason)
                }
            case .skipped:
                break
            }
        }
    }

    private mutating func deadLetter(_ event: ClaimedEvent, _ reason: String) {
        deadLetters.append(DeadLetter(id: event.id, key: event.key, operation: event.operation, reason: Self.storable(reason)))
    }

    /// What a failed attempt leads to.
    enum AfterFailure: Equatable {
        /// Another attempt after this many seconds.
        case retry(delay: Double)
        case deadLetter(reason: String)
    }

    /// A `.retry` is given up after `relay.max_attempts` attempts or `relay.max_age`; an
    /// `.unconfirmed` attempt never is (it may have landed), nor a `.destinationFault` (nothing is
    /// wrong with the event; see ``DeliveryOutcome``). The delay is
    /// the exponential backoff with jitter, or the destination's `Retry-After` when longer.
    static func afterFailure(_ outcome: DeliveryOutcome, of event: ClaimedEvent, settings: RelaySettings, now: Date) -> AfterFailure {
        let attempt = event.attempts + 1
        let backoff = settings.backoff.delay(afterAttempt: attempt).seconds
        guard case .retry(let reason, let retryAfter) = outcome else { return .retry(delay: backoff) }
        let age = now.timeIntervalSince(event.createdAt)
        if attempt >= settings.maxAttempts {
            return .deadLetter(reason: "gave up after \(attempt) attempts; last error: \(reason)")
        } else if age >= settings.maxAge.seconds {
            return .deadLetter(reason: "gave up after \(Int(age)) s (relay.max_age); last error: \(reason)")
        }
        return .retry(delay: max(backoff, retryAfter?.seconds ?? 0))
    }

    /// An error text as it can be stored: a NUL byte (which a server could echo back from input)
    /// would make the driver refuse the whole acknowledgement, and a huge echo would bloat the row.
    static func storable(_ reason: String) -> String {
        var text = reason.contains("\0") ? reason.replacingOccurrences(of: "\0", with: "\\u0000") : reason
        if text.utf8.count > 4096 { text = String(decoding: text.utf8.prefix(4096), as: UTF8.self) + "…" }
        return text
    }
}
