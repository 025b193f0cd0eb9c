import OutboxCore

/// Which event ids a claim may take: those that no running writer can still come before
/// (schema/013).
///
/// `outbox.enqueue` takes a shared lock on its key's slot before the event's id and holds it to
/// its commit; writers never wait for one another. An *observation* reads the id sequence's last
/// value, then which transactions hold which slots (`pg_locks`). A transaction that got an id up
/// to that value and has not ended holds its slot at that moment. So the ids up to an observation's
/// value are *settled* for a slot — committed or rolled back, visible to any later snapshot — once
/// every transaction holding that slot at the observation has ended; for a slot no one held, at
/// once. A claim takes events up to the last observation's value, and for slots with writers
/// still running, only up to what is settled for them: a key's events are delivered in id order
/// and no smaller id of the key commits after a larger one was delivered, which the Redis
/// high-water marks rely on (docs/DESIGN.md, "Per-key order").
///
/// Each lane observes before each claim, in statements of their own (the claim's snapshot must come
/// after the holders were seen to end), and keeps its observations here.
struct ClaimHorizon {
    /// Slots per destination (schema/013: `hashtext(key) & 1023`).
    static let slots = 1024

    /// A claim's limits: ids up to `through`, and for the slots in `busy` up to their limit.
    struct Limits: Equatable {
        var through: Int64
        var busy: [Int: Int64]
    }

    private(set) var limits = Limits(through: 0, busy: [:])
    /// Per busy slot, the observations not yet settled: the sequence's value and the transactions
    /// that held the slot then.
    private var pending: [Int: [(through: Int64, holders: Set<String>)]] = [:]
    /// Observations kept per slot: a transaction that runs for minutes would otherwise leave one per
    /// claim. Dropping one only delays the limit (until a later one settles), never advances it.
    static let maxPendingPerSlot = 32

    /// Takes an observation: `lastID`, the sequence's value read first, and the (slot, virtual
    /// transaction) pairs holding slot locks read after it.
    mutating func observe(lastID: Int64, holders: [(slot: Int, transaction: String)]) {
        let now = Dictionary(grouping: holders, by: \.slot).mapValues { Set($0.map(\.transaction)) }
        var busy: [Int: Int64] = [:]
        var stillPending: [Int: [(through: Int64, holders: Set<String>)]] = [:]
        for (slot, current) in now {
            // Everything up to the previous observation's value was settled for a slot free then.
            var settled = limits.busy[slot] ?? limits.through
            var kept: [(through: Int64, holders: Set<String>)] = []
            for observation in pending[slot] ?? [] {
                if observation.holders.isDisjoint(with: current) {
                    settled = max(settled, observation.through)
                } else {
                    kept.append(observation)
                }
            }
            kept.append((lastID, current))
            if kept.count > Self.maxPendingPerSlot { kept.remove(at: kept.count - 2) }
            busy[slot] = settled
            stillPending[slot] = kept
        }
        limits = Limits(through: lastID, busy: busy)
        pending = stillPending
    }

    /// The observation's two statements, sent in one round trip and run one after the other: the
    /// sequence's value, then the (slot, holder) pairs of `destination`'s slots.
    ///
    /// Two statements, not one: in a single statement Postgres may read the sequence after the
    /// locks, whatever the join order. A scan of the sequence hands the join a reference to its
    /// page, which `nextval` updates in place, and the value is only copied out when first used,
    /// after the lock read in a nested loop. An id handed out between the two was then counted as
    /// settled while its writer was still running: 1 to 2 events in 6,000 were delivered after a
    /// later one of their key and dropped as duplicates (RelayTests, 2 runs in 8).
    /// (A sequence not yet used has handed out nothing: its `last_value` is the first id to come.)
    static let sequenceSQL = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS last_value FROM outbox.events_id_seq"
    static let holdersSQL = """
        SELECT objid::bigint - $2 AS slot, virtualtransaction AS holder
        FROM pg_locks
        WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objsubid = 2 AND granted
          AND objid::bigint >= $2 AND objid::bigint < $2 + \(slots)
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """

    /// Lock namespace of the slots (schema/013) and the first slot's object id of `destination`.
    static let namespace: Int64 = 1_869_575_287
    static func firstSlot(_ destination: OutboxEvent.Destination) -> Int64 { destination == .qdrant ? 0 : Int64(slots) }

    mutating func observe(_ db: PostgresConnection, destination: OutboxEvent.Destination) async throws {
        let results = try await db.pipeline([
            (Self.sequenceSQL, []), (Self.holdersSQL, [.int(Self.namespace), .int(Self.firstSlot(destination))]),
        ])
        guard let lastID = try results[0].get().first?.decode("last_value", as: Int64.self) else { return }
        let holders = try results[1].get().rows.map { row in
            (slot: try row.decode("slot", as: Int.self), transaction: try row.decode("holder", as: String.self))
        }
        observe(lastID: lastID, holders: holders)
    }
}
