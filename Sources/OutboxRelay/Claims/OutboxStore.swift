import Foundation
import OutboxCore

/// The relay's SQL: claiming and acknowledging events. Every statement runs inside the claiming
/// transaction, so claims are row locks that vanish the instant the relay's session ends.
enum OutboxStore {
    /// One claim: the events, and where the next claim's scan starts.
    struct Claim {
        var events: [ClaimedEvent] = []
        /// Heads claimed (one per key).
        var heads = 0
        /// Where the next claim should start (0: from the front) and whether to claim again at once.
        var next = ClaimPlanning.Scan()
        /// The lowest of the last ids of the keys that took their whole share: those keys' next
        /// events, the heads to claim once this claim is acknowledged, lie after it.
        var resume: Int64?
        /// Every key took its whole share: the keys have more events than a claim of this many
        /// heads takes of each (see `DestinationWorker.nextHeadsLimit`).
        var saturated = false
        /// `relay.batch_bytes` left events that the claim would otherwise have taken (they stay
        /// for the next claim).
        var capped = false
    }

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
    /// id order. `Claim.next` says where the next claim starts (see `ClaimPlanning.nextScan`).
    ///
    /// `excludingKeys` are keys known to be held (a sibling lane's open claim): their rows are
    /// neither candidates nor counted in the window, so the window reaches past them to the heads
    /// of other keys instead of ending among rows that cannot be claimed.
    static func claim(
        _ tx: PostgresConnection, destination: OutboxEvent.Destination, batchSize: Int, batchEvents: Int, maxPerKey: Int,
        maxBytes: Int = .max, after: Int64 = 0, excludingKeys: [String] = [], maxHeads: Int? = nil,
        horizon: ClaimHorizon.Limits? = nil
    ) async throws -> Claim {
        let maxHeads = maxHeads ?? batchSize
        // The head test looks for the key's previous event backwards from the candidate, so a
        // follower is rejected at its neighbour rather than after the key's dead index entries.
        // `OFFSET 0` keeps `w` a subquery of its own: pulled up into the query, its window scan
        // ran twice (once per reference). Without keys to exclude the window's count needs no
        // column but the index's (no key test that would read every row).
        var parameters: [PostgresValue] = [
            .text(destination.rawValue), .int(Int64(maxHeads)), .int(after), .int(Int64(ClaimPlanning.window(batchSize: batchSize))),
            .int(Int64(maxBytes)),
        ]
        var notHeld = (window: "", candidate: "")
        if !excludingKeys.isEmpty {
            parameters.append(.textArray(excludingKeys))
            notHeld = (" AND key <> ALL($6::text[])", " AND e.key <> ALL($6::text[])")
        }
        // Only settled ids (`ClaimHorizon`): up to the observation's value, and in slots with
        // writers still running, up to what is settled for them.
        let settled = horizon.map { Self.settled($0, column: "e", key: "e.key", parameters: &parameters) } ?? ""
        // The byte cap takes heads in id order while their payloads add up to at most `maxBytes`
        // (the first one whatever its size, so an event over the cap is delivered alone). Heads
        // past the cap come back without their payload, which is never read: they stay locked,
        // undelivered, until the transaction ends, and the next claim takes them.
        let heads = try await tx.query(
            """
            SELECT w.window_end, h.*
            FROM (SELECT (SELECT id FROM outbox.events WHERE destination = $1 AND id > $3\(notHeld.window)
                          ORDER BY id OFFSET $4 - 1 LIMIT 1) AS window_end OFFSET 0) w
            LEFT JOIN LATERAL (
              SELECT c.id, c.operation, c.key, c.payload_bytes, c.created_at, c.attempts, c.requeued, c.traceparent, c.tracestate,
                     CASE WHEN c.running_bytes <= $5 OR c.running_bytes = c.payload_bytes THEN c.payload::text END AS payload
              FROM (
                SELECT l.*, sum(l.payload_bytes) OVER (ORDER BY l.id) AS running_bytes
                FROM (
                  SELECT e.id, e.operation, e.key, e.payload, e.payload_bytes, e.created_at, e.attempts, e.requeued_at IS NOT NULL AS requeued,
                         e.headers->>'traceparent' AS traceparent, e.headers->>'tracestate' AS tracestate
                  FROM outbox.events e
                  WHERE e.destination = $1 AND e.id > $3 AND e.id <= coalesce(w.window_end, 9223372036854775807)
                    AND e.available_at <= now()\(notHeld.candidate)\(settled)
                    AND (SELECT p.id FROM outbox.events p WHERE p.destination = $1 AND p.key = e.key AND p.id < e.id
                         ORDER BY p.id DESC LIMIT 1) IS NULL
                  ORDER BY e.id
                  LIMIT $2
                  FOR UPDATE OF e SKIP LOCKED
                ) l
              ) c
            ) h ON true
            """, parameters)
        let windowEnd = try heads.first?.decode("window_end", as: Int64?.self) ?? nil
        var claim = Claim()
        let columns = try Columns(heads)
        let headRows = heads.rows.filter { !$0.values[columns.id].isNull }
        let takenHeads = headRows.filter { !$0.values[columns.payload].isNull }
        claim.capped = takenHeads.count < headRows.count
        claim.events = try takenHeads.map { try decode($0, columns, destination) }
        claim.heads = claim.events.count
        let headIDs = claim.events.map(\.id)
        let perKey = min(maxPerKey, batchEvents / max(1, claim.heads))
        let headBytes = try takenHeads.reduce(0) { $0 + (try $1.decode(at: columns.payloadBytes) as Int) }
        var fullKeysLast: [Int64] = []
        if perKey > 1, !claim.events.isEmpty, headBytes < maxBytes {
            // Followers in id order while they fit in what the heads left of the cap: each key's
            // followers taken are the first ones after its head, so its order holds.
            var parameters: [PostgresValue] = [
                .text(destination.rawValue), .textArray(claim.events.map(\.key)), .intArray(headIDs), .int(Int64(perKey - 1)),
                .int(Int64(maxBytes - headBytes)),
            ]
            let settled = horizon.map { Self.settled($0, column: "x", key: "h.key", parameters: &parameters) } ?? ""
            let followers = try await tx.query(
                """
                SELECT f.id, f.operation, f.key, f.payload_bytes, f.created_at, f.attempts, f.requeued, f.traceparent, f.tracestate,
                       CASE WHEN f.running_bytes <= $5 THEN f.payload::text END AS payload
                FROM (
                  SELECT x.id, x.operation, x.key, x.payload, x.payload_bytes, x.created_at, x.requeued_at IS NOT NULL AS requeued,
                         x.attempts, x.headers->>'traceparent' AS traceparent, x.headers->>'tracestate' AS tracestate,
                         sum(x.payload_bytes) OVER (ORDER BY x.id) AS running_bytes
                  FROM unnest($2::text[], $3::bigint[]) AS h(key, head_id)
                  CROSS JOIN LATERAL (
                    SELECT * FROM outbox.events x
                    WHERE x.destination = $1 AND x.key = h.key AND x.id > h.head_id\(settled)
                    ORDER BY x.id LIMIT $4
                  ) x
                ) f
                """, parameters)
            let columns = try Columns(followers)
            let takenFollowers = followers.rows.filter { !$0.values[columns.payload].isNull }
            claim.capped = claim.capped || takenFollowers.count < followers.rows.count
            claim.events += try takenFollowers.map { try decode($0, columns, destination) }
            claim.events.sort { $0.id < $1.id }
            // A key that took its whole share of this claim may have more events just after it.
            var share: [String: (events: Int, last: Int64)] = [:]
            for event in claim.events {
                share[event.key, default: (0, 0)].events += 1
                share[event.key]?.last = event.id
            }
            // So may every key when the byte cap cut the followers short.
            fullKeysLast = share.values.filter { claim.capped || $0.events >= perKey }.map(\.last)
            claim.saturated = fullKeysLast.count == claim.heads
        }
        claim.resume = fullKeysLast.min()
        // A claim the byte cap cut short goes on where it stopped, like a full one.
        claim.next = ClaimPlanning.nextScan(
            from: after, heads: headIDs, batchSize: claim.capped ? min(maxHeads, headIDs.count) : maxHeads, windowEnd: windowEnd,
            fullKeysLast: fullKeysLast)
        return claim
    }

    /// The condition that keeps `column`'s ids within `horizon`, its values appended to `parameters`.
    /// A requeued dead letter is exempt: it keeps its old id, comes after its key's later events,
    /// and is deduplicated by a key of its own, not by the key's high-water mark.
    private static func settled(_ horizon: ClaimHorizon.Limits, column: String, key: String, parameters: inout [PostgresValue]) -> String {
        parameters.append(.int(horizon.through))
        var condition = "\(column).id <= $\(parameters.count)"
        if !horizon.busy.isEmpty {
            let busy = horizon.busy.sorted { $0.key < $1.key }
            parameters.append(.intArray(busy.map { Int64($0.key) }))
            parameters.append(.intArray(busy.map(\.value)))
            condition += """
                 AND NOT EXISTS (SELECT FROM unnest($\(parameters.count - 1)::bigint[], $\(parameters.count)::bigint[]) b(slot, upto)
                                 WHERE b.slot = (hashtext(\(key)) & \(ClaimHorizon.slots - 1)) AND \(column).id > b.upto)
                """
        }
        return " AND (\(column).requeued_at IS NOT NULL OR (\(condition)))"
    }

    /// Where a claim's columns are in its result, looked up once rather than per row and column
    /// (string hashing was ~5 % of the relay's time in drain-redis).
    private struct Columns {
        let id, operation, key, payload, payloadBytes, createdAt, attempts, requeued, traceParent, traceState: Int

        init(_ result: PostgresResult) throws {
            (id, operation, key, payload) = (try result.index(of: "id"), try result.index(of: "operation"), try result.index(of: "key"), try result.index(of: "payload"))
            payloadBytes = try result.index(of: "payload_bytes")
            (createdAt, attempts, requeued) = (try result.index(of: "created_at"), try result.index(of: "attempts"), try result.index(of: "requeued"))
            (traceParent, traceState) = (try result.index(of: "traceparent"), try result.index(of: "tracestate"))
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
            attempts: try row.decode(at: columns.attempts), payloadProblem: problem, requeued: try row.decode(at: columns.requeued),
            traceParent: try row.decode(at: columns.traceParent), traceState: try row.decode(at: columns.traceState))
    }

    /// Carries out `settlement` in the claiming transaction, in one pipelined round trip: deletes
    /// delivered events and sets their rows' embedding columns, reschedules retries, and moves dead
    /// letters to `outbox.dead_letters`. Events the settlement does not name are released untouched.
    static func acknowledge(_ tx: PostgresConnection, _ settlement: Settlement, sources: SourceColumnTypes) async throws {
        var statements: [(sql: String, parameters: [PostgresValue])] = []
        if !settlement.delivered.isEmpty {
            statements.append(("DELETE FROM outbox.events WHERE id = ANY($1::bigint[])", [.intArray(settlement.delivered.map(\.id))]))
        }
        let dead = settlement.deadLetters
        if !dead.isEmpty {
            statements.append((
                """
                WITH r AS (SELECT * FROM unnest($1::bigint[], $2::text[]) AS r(id, reason)),
                d AS (DELETE FROM outbox.events e USING r WHERE e.id = r.id RETURNING e.*, r.reason)
                INSERT INTO outbox.dead_letters (id, destination, operation, key, payload, headers, created_at, attempts, error)
                SELECT id, destination, operation, key, payload, headers, created_at, attempts + 1, reason FROM d
                ON CONFLICT (id) DO UPDATE SET attempts = EXCLUDED.attempts, error = EXCLUDED.error, dead_lettered_at = now()
                """, [.intArray(dead.map(\.id)), .textArray(dead.map(\.reason))]))
        }
        let retries = settlement.retries
        if !retries.isEmpty {
            statements.append((
                """
                UPDATE outbox.events e
                SET attempts = e.attempts + 1, available_at = now() + make_interval(secs => r.delay), last_error = r.reason
                FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS r(id, delay, reason)
                WHERE e.id = r.id
                """, [.intArray(retries.map(\.id)), .doubleArray(retries.map(\.delay)), .textArray(retries.map(\.reason))]))
        }
        for (table, updates) in settlement.sourceUpdates {
            statements.append((sources.updateSQL(table), [.textArray(updates.map(\.rowID)), .textArray(updates.map(\.pointID))]))
        }
        for result in try await tx.pipeline(statements) {
            _ = try result.get()
        }
    }
}
