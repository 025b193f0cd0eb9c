import Foundation

/// The relay's SQL: claiming and acknowledging events. Every statement runs inside the claiming
/// transaction, so claims are row locks that vanish the instant the relay's session ends.
enum OutboxStore {
    /// One claim: the events, and where the next claim's scan starts.
    struct Claim {
        var events: [ClaimedEvent] = []
        /// Heads claimed (one per key).
        var heads = 0
        /// Where the next claim should start (0: from the front) and whether to claim again at once.
        var next = Scan()
        /// The lowest of the last ids of the keys that took their whole share: those keys' next
        /// events, the heads to claim once this claim is acknowledged, lie after it.
        var resume: Int64?
        /// Every key took its whole share: the keys have more events than a claim of this many
        /// heads takes of each (see `DestinationWorker.nextHeadsLimit`).
        var saturated = false
    }

    /// A claim's place in a pass over one destination's events.
    struct Scan: Equatable {
        /// Heads with ids up to this one are left for the next pass.
        var cursor: Int64 = 0
        /// Claim again without waiting: the pass has not reached the end, or it did work.
        var more = false
    }

    /// Rows one claim looks at for heads: enough for a full claim, and a bound on the work of a
    /// claim that finds few (few keys, or keys another lane or relay holds).
    static func window(batchSize: Int) -> Int { max(1_000, 2 * batchSize) }

    /// Claims up to `maxHeads` (by default `batchSize`) keys' worth of events for `destination`, in
    /// id order; `batchSize` also sets the window.
    ///
    /// Step 1 locks the *head* (oldest event) of each available key with `SKIP LOCKED`: a key whose
    /// head another relay holds is skipped whole, so two relays never work on one key. Step 2
    /// reads up to `maxPerKey` following events of the keys this relay got, so a hot key moves
    /// many events per round trip. They need no lock: while its head is pending, no claimer takes
    /// a follower for a head, and the locked head keeps the key from every other claimer (a lock
    /// per follower cost a heap write and a WAL record per event: Postgres 74 % → 51 % of a core
    /// in drain-redis).
    ///
    /// A pass walks the destination's events in id order, one *window* of rows after `after` per
    /// claim, so a claim never scans further than `window` rows however few heads it finds, and a
    /// long drain does not rescan the dead index entries its own deletes left at the front of the
    /// id order. `Claim.next` says where the next claim starts (see `nextScan`).
    ///
    /// `excludingKeys` are keys known to be held (a sibling lane's open claim): their rows are
    /// neither candidates nor counted in the window, so the window reaches past them to the heads
    /// of other keys instead of ending among rows that cannot be claimed.
    static func claim(
        _ tx: PostgresConnection, destination: OutboxEvent.Destination, batchSize: Int, batchEvents: Int, maxPerKey: Int,
        after: Int64 = 0, excludingKeys: [String] = [], maxHeads: Int? = nil
    ) async throws -> Claim {
        let maxHeads = maxHeads ?? batchSize
        // The head test looks for the key's previous event backwards from the candidate, so a
        // follower is rejected at its neighbour rather than after the key's dead index entries.
        // `OFFSET 0` keeps `w` a subquery of its own: pulled up into the query, its window scan
        // ran twice (once per reference). Without keys to exclude the window's count needs no
        // column but the index's (no key test that would read every row).
        var parameters: [PostgresValue] = [
            .text(destination.rawValue), .int(Int64(maxHeads)), .int(after), .int(Int64(window(batchSize: batchSize))),
        ]
        var notHeld = (window: "", candidate: "")
        if !excludingKeys.isEmpty {
            parameters.append(.textArray(excludingKeys))
            notHeld = (" AND key <> ALL($5::text[])", " AND e.key <> ALL($5::text[])")
        }
        let heads = try await tx.query(
            """
            SELECT w.window_end, h.*
            FROM (SELECT (SELECT id FROM outbox.events WHERE destination = $1 AND id > $3\(notHeld.window)
                          ORDER BY id OFFSET $4 - 1 LIMIT 1) AS window_end OFFSET 0) w
            LEFT JOIN LATERAL (
              SELECT e.id, e.operation, e.key, e.payload::text AS payload, e.created_at, e.attempts, e.requeued_at IS NOT NULL AS requeued
              FROM outbox.events e
              WHERE e.destination = $1 AND e.id > $3 AND e.id <= coalesce(w.window_end, 9223372036854775807)
                AND e.available_at <= now()\(notHeld.candidate)
                AND (SELECT p.id FROM outbox.events p WHERE p.destination = $1 AND p.key = e.key AND p.id < e.id
                     ORDER BY p.id DESC LIMIT 1) IS NULL
              ORDER BY e.id
              LIMIT $2
              FOR UPDATE OF e SKIP LOCKED
            ) h ON true
            """, parameters)
        let windowEnd = try heads.first?.decode("window_end", as: Int64?.self) ?? nil
        var claim = Claim()
        let columns = try Columns(heads)
        claim.events = try heads.rows.filter { !$0.values[columns.id].isNull }.map { try decode($0, columns, destination) }
        claim.heads = claim.events.count
        let headIDs = claim.events.map(\.id)
        let perKey = min(maxPerKey, batchEvents / max(1, claim.heads))
        var fullKeysLast: [Int64] = []
        if perKey > 1, !claim.events.isEmpty {
            let followers = try await tx.query(
                """
                SELECT x.id, x.operation, x.key, x.payload::text AS payload, x.created_at, x.attempts, x.requeued_at IS NOT NULL AS requeued
                FROM unnest($2::text[], $3::bigint[]) AS h(key, head_id)
                CROSS JOIN LATERAL (
                  SELECT * FROM outbox.events x
                  WHERE x.destination = $1 AND x.key = h.key AND x.id > h.head_id
                  ORDER BY x.id LIMIT $4
                ) x
                """,
                [.text(destination.rawValue), .textArray(claim.events.map(\.key)), .intArray(headIDs), .int(Int64(perKey - 1))])
            let columns = try Columns(followers)
            claim.events += try followers.rows.map { try decode($0, columns, destination) }
            claim.events.sort { $0.id < $1.id }
            // A key that took its whole share of this claim may have more events just after it.
            var share: [String: (events: Int, last: Int64)] = [:]
            for event in claim.events {
                share[event.key, default: (0, 0)].events += 1
                share[event.key]?.last = event.id
            }
            fullKeysLast = share.values.filter { $0.events >= perKey }.map(\.last)
            claim.saturated = fullKeysLast.count == claim.heads
        }
        claim.resume = fullKeysLast.min()
        claim.next = nextScan(
            from: after, heads: headIDs, batchSize: maxHeads, windowEnd: windowEnd, fullKeysLast: fullKeysLast)
        return claim
    }

    /// Where the claim after one that started `from` (0: the front) begins:
    /// - after a full claim (`batchSize` heads), after its last head;
    /// - after a short claim that stopped at the window's end (`windowEnd`), after the window:
    ///   its other heads are held by another lane or relay, or waiting for a retry, and are left
    ///   for the next pass;
    /// - after a claim that reached the end, at the front (a new pass, which also picks up retries
    ///   come due); at once if this pass did any work.
    /// A key that took its whole share of a claim (`fullKeysLast`: its last claimed id) may have
    /// more events just after it, and the next claim starts no later than that: a few hot keys
    /// then drain claim after claim instead of once per pass.
    static func nextScan(from: Int64, heads: [Int64], batchSize: Int, windowEnd: Int64?, fullKeysLast: [Int64]) -> Scan {
        var scan: Scan
        if heads.count >= batchSize, let last = heads.max() {
            scan = Scan(cursor: last, more: true)
        } else if let windowEnd {
            scan = Scan(cursor: windowEnd, more: true)
        } else {
            scan = Scan(cursor: 0, more: !heads.isEmpty || from != 0)
        }
        if let lowest = fullKeysLast.min() {
            scan.cursor = scan.cursor == 0 ? lowest : min(scan.cursor, lowest)
            scan.more = true
        }
        return scan
    }

    /// Where a claim's columns are in its result, looked up once rather than per row and column
    /// (string hashing was ~5 % of the relay's time in drain-redis).
    private struct Columns {
        let id, operation, key, payload, createdAt, attempts, requeued: Int

        init(_ result: PostgresResult) throws {
            (id, operation, key, payload) = (try result.index(of: "id"), try result.index(of: "operation"), try result.index(of: "key"), try result.index(of: "payload"))
            (createdAt, attempts, requeued) = (try result.index(of: "created_at"), try result.index(of: "attempts"), try result.index(of: "requeued"))
        }
    }

    private static func decode(_ row: PostgresRow, _ columns: Columns, _ destination: OutboxEvent.Destination) throws -> ClaimedEvent {
        // jsonb holds numbers exactly and keys byte for byte; a payload the relay could only
        // deliver altered is kept out of delivery and dead-lettered with the reason.
        var payload: JSONValue = .null
        var problem: String?
        do {
            payload = try JSONValue.parseExact(try row.decode(at: columns.payload))
        } catch let error as JSONValue.InexactPayload {
            problem = error.message
        }
        return ClaimedEvent(
            id: try row.decode(at: columns.id), destination: destination, operation: try row.decode(at: columns.operation),
            key: try row.decode(at: columns.key), payload: payload, createdAt: try row.decode(at: columns.createdAt),
            attempts: try row.decode(at: columns.attempts), payloadProblem: problem, requeued: try row.decode(at: columns.requeued))
    }

    /// An error text as it can be stored: a NUL byte (which a server could echo back from input)
    /// would make the driver refuse the whole acknowledgement, and a huge echo would bloat the row.
    static func storable(_ reason: String) -> String {
        var text = reason.contains("\0") ? reason.replacingOccurrences(of: "\0", with: "\\u0000") : reason
        if text.utf8.count > 4096 { text = String(decoding: text.utf8.prefix(4096), as: UTF8.self) + "…" }
        return text
    }

    /// What a failed attempt leads to.
    enum AfterFailure: Equatable {
        /// Another attempt after this many seconds.
        case retry(delay: Double)
        case deadLetter(reason: String)
    }

    /// A `.retry` is given up after `relay.max_attempts` attempts or `relay.max_age`; an
    /// `.unconfirmed` attempt never is (it may have landed; see ``DeliveryOutcome``).
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

    struct Acknowledgement: Equatable {
        var delivered = 0
        var retried = 0
        var deadLettered = 0
    }

    /// Applies `outcomes` in the claiming transaction: deletes delivered events and sets their
    /// rows' embedding columns, reschedules retries with backoff, and moves permanent failures
    /// (and retries past `maxAttempts` / `maxAge`, but never unconfirmed ones) to
    /// `outbox.dead_letters`.
    static func acknowledge(
        _ tx: PostgresConnection, events: [ClaimedEvent], outcomes: [Int64: DeliveryOutcome], settings: RelaySettings,
        sources: SourceColumnTypes, now: Date = Date()
    ) async throws -> Acknowledgement {
        var ack = Acknowledgement()
        var deliveredIDs: [Int64] = []
        var dead: [(Int64, String)] = []
        var retries: [(Int64, Double, String)] = []
        var sourceUpdates: [TableMapping: [SourceUpdate]] = [:]
        for event in events {
            let outcome = outcomes[event.id] ?? .skipped
            switch outcome {
            case .delivered(let source):
                deliveredIDs.append(event.id)
                if let source { sourceUpdates[source.table, default: []].append(source) }
            case .dead(let reason):
                dead.append((event.id, Self.storable(reason)))
            case .retry(let reason, _), .unconfirmed(let reason):
                switch Self.afterFailure(outcome, of: event, settings: settings, now: now) {
                case .retry(let delay): retries.append((event.id, delay, Self.storable(reason)))
                case .deadLetter(let reason): dead.append((event.id, Self.storable(reason)))
                }
            case .skipped:
                break  // released untouched when the transaction commits
            }
        }

        var statements: [(sql: String, parameters: [PostgresValue])] = []
        if !deliveredIDs.isEmpty {
            statements.append(("DELETE FROM outbox.events WHERE id = ANY($1::bigint[])", [.intArray(deliveredIDs)]))
        }
        if !dead.isEmpty {
            statements.append((
                """
                WITH r AS (SELECT * FROM unnest($1::bigint[], $2::text[]) AS r(id, reason)),
                d AS (DELETE FROM outbox.events e USING r WHERE e.id = r.id RETURNING e.*, r.reason)
                INSERT INTO outbox.dead_letters (id, destination, operation, key, payload, headers, created_at, attempts, error)
                SELECT id, destination, operation, key, payload, headers, created_at, attempts + 1, reason FROM d
                ON CONFLICT (id) DO UPDATE SET attempts = EXCLUDED.attempts, error = EXCLUDED.error, dead_lettered_at = now()
                """, [.intArray(dead.map(\.0)), .textArray(dead.map(\.1))]))
        }
        if !retries.isEmpty {
            statements.append((
                """
                UPDATE outbox.events e
                SET attempts = e.attempts + 1, available_at = now() + make_interval(secs => r.delay), last_error = r.reason
                FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS r(id, delay, reason)
                WHERE e.id = r.id
                """, [.intArray(retries.map(\.0)), .doubleArray(retries.map(\.1)), .textArray(retries.map(\.2))]))
        }
        for (table, updates) in sourceUpdates {
            statements.append((sources.updateSQL(table), [.textArray(updates.map(\.rowID)), .textArray(updates.map(\.pointID))]))
        }
        for result in try await tx.pipeline(statements) {
            _ = try result.get()
        }
        ack.delivered = deliveredIDs.count
        ack.retried = retries.count
        ack.deadLettered = dead.count
        return ack
    }
}

/// Column types of mapped tables, read from the catalog once, so source updates can cast text
/// parameters to the right type (uuid, bigint, text, …) and check values before delivery.
struct SourceColumnTypes: Sendable {
    struct Types: Sendable, Hashable {
        let id: String
        let embedding: String
    }

    private(set) var types: [TableMapping: Types] = [:]

    struct Problem: Error, CustomStringConvertible {
        let key: String
        let message: String
        var description: String { "config: \(key): \(message)" }
    }

    static func resolve(_ tables: [String: TableMapping], on db: PostgresConnection) async throws -> SourceColumnTypes {
        var resolved = SourceColumnTypes()
        for mapping in tables.values {
            func type(_ column: SQLIdentifier) async throws -> String {
                let rows = try await db.query(
                    """
                    SELECT format_type(a.atttypid, a.atttypmod) AS type
                    FROM pg_attribute a
                    WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped
                    """, [.text(mapping.table.quoted), .text(column.name)])
                guard let type = try rows.first?.decode("type", as: String.self) else {
                    throw Problem(key: "tables.\(mapping.name)", message: "\(mapping.table) has no column \(column) (or the table does not exist)")
                }
                return type
            }
            resolved.types[mapping] = Types(id: try await type(mapping.idColumn), embedding: try await type(mapping.embeddingColumn))
        }
        return resolved
    }

    /// `UPDATE table SET embedding = point WHERE id = row` for arrays of (row id, point id) text.
    /// Identifiers are validated and quoted; types come from the catalog; values are parameters.
    func updateSQL(_ table: TableMapping) -> String {
        let t = types[table] ?? Types(id: "text", embedding: "text")
        return """
            UPDATE \(table.table.quoted) AS t SET \(table.embeddingColumn.quoted) = u.point_id::\(t.embedding)
            FROM unnest($1::text[], $2::text[]) AS u(row_id, point_id)
            WHERE t.\(table.idColumn.quoted) = u.row_id::\(t.id)
            """
    }

    /// Whether `value` parses as a value of the SQL `type` (for the types point ids and row ids
    /// commonly have; other types are assumed to accept any text).
    static func fits(_ value: String, _ type: String) -> Bool {
        switch type {
        case "uuid": UUID(uuidString: value) != nil
        case "bigint", "integer", "smallint": Int64(value) != nil
        default: true
        }
    }

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
