/// The WAL position a logical replication reader may confirm to its slot.
///
/// Confirming a position tells Postgres that every transaction ending at or before it is done
/// with, and may never be sent again. So the position confirmed is the end of the last
/// transaction before which every event received is settled (delivered, dead-lettered or
/// parked), and never a keepalive's end of WAL while received work is unsettled: confirming that
/// is how a reader loses events after a crash. A keepalive moves the position only when nothing
/// is in flight, which is what keeps an idle reader's slot from pinning WAL.
public struct ReplicationProgress: Sendable {
    /// A transaction received and not yet settled, in the order the stream sent them.
    public struct Ticket: Hashable, Sendable {
        let sequence: Int
    }

    private var inFlight: [(end: LogSequenceNumber, unsettled: Int)] = []
    private var firstSequence = 0
    public private(set) var confirmable: LogSequenceNumber

    /// `start`: the slot's confirmed position (what the stream starts after).
    public init(start: LogSequenceNumber) { confirmable = start }

    /// Transactions received and not yet settled.
    public var transactionsInFlight: Int { inFlight.count }
    public var eventsInFlight: Int { inFlight.reduce(0) { $0 + $1.unsettled } }

    /// Records a transaction ending at `end` carrying `events` events to settle (0 for one that
    /// carried none of ours: it is settled at once, in its turn).
    public mutating func received(end: LogSequenceNumber, events: Int) -> Ticket {
        precondition(events >= 0)
        inFlight.append((end, events))
        advance()
        return Ticket(sequence: firstSequence + inFlight.count - 1)
    }

    /// Records that `count` events of a transaction are settled.
    public mutating func settled(_ ticket: Ticket, count: Int = 1) {
        let index = ticket.sequence - firstSequence
        precondition(index >= 0 && index < inFlight.count && inFlight[index].unsettled >= count,
                     "settled more events than the transaction carried")
        inFlight[index].unsettled -= count
        advance()
    }

    /// A keepalive: the server has sent everything up to `serverEnd`.
    public mutating func serverReached(_ serverEnd: LogSequenceNumber) {
        if inFlight.isEmpty, serverEnd > confirmable { confirmable = serverEnd }
    }

    private mutating func advance() {
        var settledPrefix = 0
        while settledPrefix < inFlight.count, inFlight[settledPrefix].unsettled == 0 {
            if inFlight[settledPrefix].end > confirmable { confirmable = inFlight[settledPrefix].end }
            settledPrefix += 1
        }
        if settledPrefix > 0 {
            inFlight.removeFirst(settledPrefix)
            firstSequence += settledPrefix
        }
    }
}
