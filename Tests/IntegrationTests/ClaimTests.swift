import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport
@testable import OutboxRelay

/// Claims against a real outbox: which heads a claim takes, where the next one starts, and how a
/// relay behaves when another holds every key (the planning itself: `RelayLogicTests`).
@Suite struct ClaimTests {
    @Test func claimsFollowHotKeysAndLookAtOneWindowOfRows() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { _, db in
            try await db.query(
                """
                SELECT count(outbox.enqueue('redis', 'set', 'hot' || (g % 3), jsonb_build_object('key', 'k', 'value', g::text)))
                FROM generate_series(1, 1500) g
                """)
            try await db.query(#"SELECT outbox.enqueue('redis', 'set', 'late', '{"key": "k", "value": "v"}')"#)
            let base: Int64 = try await db.query("SELECT min(id) - 1 AS base FROM outbox.events").first!.decode("base")
            let window = Int64(ClaimPlanning.window(batchSize: 10))
            #expect(window == 1_000)
            func claim(after: Int64, deliver: Bool) async throws -> OutboxStore.Claim {
                try await db.transaction { tx in
                    let claim = try await OutboxStore.claim(tx, destination: .redis, batchSize: 10, batchEvents: 60, maxPerKey: 20, after: after)
                    if deliver { try await tx.query("DELETE FROM outbox.events WHERE id = ANY($1)", [.intArray(claim.events.map(\.id))]) }
                    return claim
                }
            }
            // 3 heads, 20 events each (60 / 3): every key may have more, so the next claim starts
            // after the lowest of their last events.
            let first = try await claim(after: 0, deliver: true)
            #expect(first.heads == 3)
            #expect(first.events.map(\.id) == (1...60).map { base + $0 })
            #expect(first.next == ClaimPlanning.Scan(cursor: base + 58, more: true))  // hot1's 20th is event 58
            let second = try await claim(after: first.next.cursor, deliver: true)
            #expect(second.events.map(\.id) == (61...120).map { base + $0 })
            // Started past pending events of every key, a claim finds no heads in its window of
            // 1,000 rows and says to go on after it, without reading further.
            let blocked = try await claim(after: base + 200, deliver: false)
            #expect(blocked.events.isEmpty)
            #expect(blocked.next == ClaimPlanning.Scan(cursor: base + 200 + window, more: true))
            // The rest of the events fit in one window: the late key's head, then a new pass.
            let last = try await claim(after: blocked.next.cursor, deliver: false)
            #expect(last.events.map(\.key) == ["late"])
            #expect(last.next == ClaimPlanning.Scan(cursor: 0, more: true))
        }
    }

    /// `relay.batch_bytes`: a claim takes heads, then followers, in id order while their sizes as
    /// written add up to at most the cap, the first head whatever its size; each key's followers
    /// taken are the first ones after its head; a capped claim says to claim again at once, no later
    /// than where it stopped.
    @Test func aClaimIsCappedByPayloadBytes() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { _, db in
            // Keys a, b, c: 100 kB values, a few each; then d, one value of 1 MB.
            try await db.query(
                """
                SELECT count(outbox.enqueue('redis', 'set', k, jsonb_build_object('key', k, 'value', repeat('x', 100000))))
                FROM unnest('{a,b,c,a,b,c,a,b,c}'::text[]) k
                """)
            try await db.query("SELECT outbox.enqueue('redis', 'set', 'd', jsonb_build_object('key', 'd', 'value', repeat('y', 1000000)))")
            let sizes: [Int] = try await db.query("SELECT payload_bytes FROM outbox.events ORDER BY id").rows.map { try $0.decode("payload_bytes") }
            #expect(sizes.count == 10 && sizes.allSatisfy { $0 >= 100_000 } && sizes[9] >= 1_000_000, "\(sizes)")
            func claim(maxBytes: Int) async throws -> OutboxStore.Claim {
                try await db.transaction { tx in
                    try await OutboxStore.claim(tx, destination: .redis, batchSize: 10, batchEvents: 100, maxPerKey: 10, maxBytes: maxBytes)
                }
            }
            let all = try await claim(maxBytes: 64 << 20)
            #expect(all.events.count == 10 && !all.capped)
            // Room for 5 values: the 3 heads, then the first followers in id order (a's and b's second).
            let five = try await claim(maxBytes: 5 * 100_100)
            #expect(five.capped)
            #expect(five.events.map(\.key) == ["a", "b", "c", "a", "b"])
            #expect(five.events.map(\.payload["value"]?.stringValue?.count) == Array(repeating: 100_000, count: 5))
            // Room for 2 heads only: c's head and d's wait, untouched, for the next claim.
            let two = try await claim(maxBytes: 2 * 100_100)
            #expect(two.events.map(\.key) == ["a", "b"] && two.capped)
            #expect(two.next.more && two.next.cursor <= two.events.last!.id, "\(two.next) \(two.events.map(\.id))")
            // Under one value: the first head still goes, alone.
            let one = try await claim(maxBytes: 1000)
            #expect(one.events.map(\.key) == ["a"] && one.capped)
            // An event larger than the cap, once it is the first head, goes alone.
            try await db.query("DELETE FROM outbox.events WHERE key <> 'd'")
            let large = try await claim(maxBytes: 1000)
            #expect(large.events.map(\.key) == ["d"] && !large.capped)
        }
    }

    /// Two lanes of one relay: a claim that passes over the keys its sibling holds reaches past
    /// their rows to other keys' heads; without them it ends its window among rows it cannot claim.
    @Test func aClaimPassesOverTheKeysASiblingHoldsAndTakesAtMostItsHeads() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            for (key, count) in [("held", 1500), ("free", 5), ("free2", 5)] {
                try await db.query(
                    "SELECT count(outbox.enqueue('redis', 'set', $1, jsonb_build_object('key', 'k', 'value', g::text))) FROM generate_series(1, $2) g",
                    [.text(key), .int(Int64(count))])
            }
            func claim(_ tx: PostgresConnection, excluding: [String] = [], maxHeads: Int? = nil) async throws -> OutboxStore.Claim {
                try await OutboxStore.claim(
                    tx, destination: .redis, batchSize: 10, batchEvents: 60, maxPerKey: 20, excludingKeys: excluding, maxHeads: maxHeads)
            }
            let sibling = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)
            try await sibling.transaction { siblingTx in
                // The sibling's claim: the first window holds only the deep key, which takes its whole share.
                let held = try await claim(siblingTx)
                #expect(held.events.map(\.key) == Array(repeating: "held", count: 20))
                #expect(held.saturated)
                try await db.transaction { tx in
                    let blind = try await claim(tx)
                    #expect(blind.events.isEmpty)
                    let passing = try await claim(tx, excluding: ["held"])
                    #expect(passing.events.map(\.key) == Array(repeating: "free", count: 5) + Array(repeating: "free2", count: 5))
                    #expect(!passing.saturated, "the keys ran out before their shares")
                }
                try await db.transaction { tx in
                    let one = try await claim(tx, excluding: ["held"], maxHeads: 1)
                    #expect(one.heads == 1)
                    #expect(one.events.map(\.key) == Array(repeating: "free", count: 5))
                }
            }
            await sibling.close()
        }
    }

    /// Writers of one key never wait for each other (schema/013), so a smaller id can commit after
    /// a larger one: a claim with the horizon passes over the key's events until the writer that
    /// held the smaller id has ended, then takes them in id order. Other keys are not held back.
    @Test func aClaimWaitsForASmallerIdOfTheKeyStillBeingWritten() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            func enqueue(_ on: PostgresConnection, _ key: String, _ value: String) async throws -> Int64 {
                try await on.query("SELECT outbox.enqueue('redis', 'set', $1, jsonb_build_object('key', $1, 'value', $2::text)) AS id",
                                   [.text(key), .text(value)]).first!.decode("id")
            }
            var horizon = ClaimHorizon()
            func claim() async throws -> [Int64] {
                try await db.transaction { tx in
                    try await horizon.observe(tx, destination: .redis)
                    return try await OutboxStore.claim(tx, destination: .redis, batchSize: 10, batchEvents: 100, maxPerKey: 10,
                                                       horizon: horizon.limits).events.map(\.id)
                }
            }
            let slow = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)
            let (first, second, other) = try await slow.transaction { tx in
                let first = try await enqueue(tx, "k", "first")  // not committed yet
                let second = try await enqueue(db, "k", "second")  // committed, same key, a larger id: did not wait
                let other = try await enqueue(db, "other", "x")
                #expect(second > first)
                #expect(try await claim() == [other], "the key's committed event must wait for the smaller id")
                return (first, second, other)
            }
            #expect(other > second)
            #expect(try await claim() == [first, second, other])
            await slow.close()
        }
    }

    /// A relay beside another that holds every key makes one pass over the events per wake-up,
    /// not one pass after another (two relays on three hot keys: 120 empty claims a second).
    @Test func aRelayWhoseKeysAreAllHeldElsewhereWaitsForAWakeUpAfterAPass() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            try await db.query(
                "SELECT count(outbox.enqueue('redis', 'set', 'hot' || (g % 3), jsonb_build_object('key', 'k', 'value', g::text))) FROM generate_series(1, 3000) g")
            let holder = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)
            try await holder.transaction { tx in
                // Another relay's claim: the three keys' heads, locked until this transaction ends.
                let held = try await OutboxStore.claim(tx, destination: .redis, batchSize: 10, batchEvents: 30, maxPerKey: 10)
                #expect(held.heads == 3)
                let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_RELAY_POLL_INTERVAL": "2s"])
                try await relay.waitUntilReady()
                try await Task.sleep(for: .seconds(6))
                let metrics = await relay.get("/metrics")?.body ?? ""
                // A pass over 3,000 rows (three windows, and two looks at the front) is about six
                // claims; 6 s at one poll per 2 s, and the wake-up at start, are four passes.
                let empty = sample(metrics, #"outbox_relay_claims_total{destination="redis",result="empty"}"#)
                #expect(empty.map { $0 > 0 && $0 <= 60 } == true, "empty claims in 6 s: \(empty.map(String.init) ?? "none counted")")
                #expect((sample(metrics, #"outbox_relay_claims_total{destination="redis",result="events"}"#) ?? 0) == 0)
            }
            await holder.close()
        }
    }
}
