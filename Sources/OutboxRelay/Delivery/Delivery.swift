import Foundation
import OutboxCore

/// An event claimed from `outbox.events`, held (row-locked) by the claiming transaction.
public struct ClaimedEvent: Sendable, Equatable {
    public let id: Int64
    public let destination: OutboxEvent.Destination
    public let operation: String
    public let key: String
    public let payload: JSONValue
    public let createdAt: Date
    /// Attempts before this one.
    public let attempts: Int
    /// Set when the stored payload cannot be delivered exactly as written (see
    /// ``JSONValue/parseExact(_:)``); such an event is dead-lettered with this reason.
    public var payloadProblem: String? = nil
    /// Moved back from the dead letters by an operator (`requeued_at`): it comes after later events
    /// of its key, so Redis deduplicates it by its own id rather than by the key's high-water mark.
    public var requeued = false
    /// The writer's trace context (`headers.traceparent` / `headers.tracestate`), unchecked.
    public var traceParent: String? = nil
    public var traceState: String? = nil
}

/// What became of one claimed event.
public enum DeliveryOutcome: Sendable, Equatable {
    /// Applied and confirmed; `source` is the domain row to mark as embedded, if any.
    case delivered(source: SourceUpdate?)
    /// Failed transiently (transport, 5xx, 429, unconfirmed): try again after a backoff.
    case retry(reason: String, retryAfter: Duration?)
    /// Sent, but whether it took effect is unknown (the connection broke, or the server refused the
    /// call as a whole after an earlier attempt's reply was lost): tried again after a backoff like
    /// `retry`, but never dead-lettered for `relay.max_attempts` or `relay.max_age`. A Redis
    /// `xadd`/`publish` dead letter must be known not to have landed, or its requeue could append
    /// it twice.
    case unconfirmed(reason: String)
    /// The destination refused the relay itself (401/403, Redis `NOAUTH`/`WRONGPASS`/`NOPERM`):
    /// nothing is wrong with the event. Tried again after a backoff, never dead-lettered for it; the
    /// destination is reported failing (`/readyz` 503) until an attempt succeeds.
    case destinationFault(reason: String)
    /// Failed permanently (4xx, malformed payload, unmapped table): dead-letter it now.
    case dead(reason: String)
    /// Not attempted, because an earlier event of its key failed in this batch; released as is.
    case skipped
}

/// Set `table.embeddingColumn = pointID WHERE table.idColumn = rowID` when the upsert is acknowledged.
public struct SourceUpdate: Sendable, Hashable {
    public let table: TableMapping
    public let rowID: String
    public let pointID: String
}

extension SourceColumnTypes {
    /// Why `source` cannot be written back, or nil when it can: a row id or point id that does not
    /// parse as the column's type would fail the whole acknowledgement.
    func problem(with source: SourceUpdate) -> String? {
        guard let t = types[source.table] else { return nil }
        if !Self.fits(source.rowID, t.id) {
            return "source.id \"\(source.rowID)\" is not a valid \(t.id) for \(source.table.table).\(source.table.idColumn)"
        }
        if !Self.fits(source.pointID, t.embedding) {
            return "point id \(source.pointID) cannot be stored in \(source.table.table).\(source.table.embeddingColumn) (\(t.embedding))"
        }
        return nil
    }
}

/// Applies claimed events to one destination. Never throws: every event gets an outcome.
protocol Deliverer: Sendable {
    /// `traces` holds the events' spans and the trace context each carries (``DeliveryTraces``).
    func deliver(_ events: [ClaimedEvent], traces: DeliveryTraces) async -> [Int64: DeliveryOutcome]
    /// Asks the destination something cheap that needs the relay's credentials (Redis `PING`, a
    /// Qdrant collection `GET`): nil when it answers, otherwise why not. Run while the relay is
    /// idle, so an outage or a rotated key shows on `/readyz` before the next event meets it.
    func probe() async -> String?
}

extension Deliverer {
    func deliver(_ events: [ClaimedEvent]) async -> [Int64: DeliveryOutcome] { await deliver(events, traces: .none) }
}

/// Marks, in event order, every event of a key after the key's first failure as `.skipped`, so a
/// failing event blocks only its own key.
struct KeyBlocker {
    private var blocked: Set<String> = []

    func isBlocked(_ event: ClaimedEvent) -> Bool { blocked.contains(event.key) }

    mutating func record(_ outcome: DeliveryOutcome, for event: ClaimedEvent) {
        switch outcome {
        case .retry, .unconfirmed, .destinationFault: blocked.insert(event.key)
        default: break
        }
    }
}
