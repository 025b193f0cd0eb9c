import Foundation
import Testing

@testable import OutboxCore

/// The logical replication session a WAL-capture relay reads (issue 23), against the real
/// Postgres of `scripts/services` (wal_level = logical, the role may replicate). Each test
/// works in a database of its own with its own slot.
@Suite struct ReplicationConnectionTests {
    /// Everything a reader saw, transaction by transaction.
    struct Transaction: Equatable {
        var messages: [String]
        var commit: LogSequenceNumber
        var end: LogSequenceNumber
    }

    static let publication = "outbox_messages"

    /// A fresh database with an empty publication and a slot; `body` gets its URL, a connection
    /// and the slot's name. The slot goes with the database.
    func withSlot(_ body: (String, PostgresConnection, String) async throws -> Void) async throws {
        try await TestEnvironment.withFreshDatabase(migrated: false) { url, connection in
            let level = try await connection.query("SHOW wal_level").first?.decode("wal_level", as: String.self)
            try #require(level == "logical", "Postgres runs with wal_level = \(level ?? "?"): run scripts/services up, which sets logical")
            try await connection.query("CREATE PUBLICATION \(Self.publication)")
            let slot = TestEnvironment.uniqueName("slot")
            let reader = try await replication(url)
            #expect(try await reader.createSlotIfMissing(slot))
            #expect(try await reader.createSlotIfMissing(slot) == false)  // it exists: left as it is
            await reader.close()
            try await body(url, connection, slot)
        }
    }

    func replication(_ url: String, statusInterval: Duration = .seconds(10)) async throws -> PostgresReplicationConnection {
        var configuration = PostgresConfiguration(url: url)
        configuration.applicationName = "outbox-replication-test"
        return try await PostgresReplicationConnection.connect(configuration, statusInterval: statusInterval, logger: TestEnvironment.logger)
    }

    /// A reader streaming `slot` as soon as the slot is free: the walsender of a reader that went
    /// away may take a moment to release it (55006 until then).
    func startWhenFree(_ url: String, _ slot: String) async throws -> PostgresReplicationConnection {
        let reader = try await replication(url)
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            do {
                try await reader.startReplication(slot: slot, publication: Self.publication, after: .zero)
                return reader
            } catch let error as PostgresError where error.sqlState == "55006" && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// Reads until `count` transactions carrying messages with `prefix` have committed.
    func transactions(_ reader: PostgresReplicationConnection, count: Int, prefix: String = "outbox",
                      within limit: Duration = .seconds(20)) async throws -> [Transaction] {
        var done: [Transaction] = []
        var open: [String]?
        let deadline = ContinuousClock.now + limit
        while done.count < count {
            try #require(ContinuousClock.now < deadline, "\(done.count) of \(count) transactions within \(limit)")
            for frame in try await reader.read(timeout: .milliseconds(500)) {
                guard case .walData(_, _, let message) = frame else { continue }
                switch message {
                case .begin:
                    open = []
                case .message(let transactional, _, let messagePrefix, let content):
                    #expect(transactional)
                    if messagePrefix == prefix { open?.append(String(decoding: content, as: UTF8.self)) }
                case .commit(let commit, let end):
                    if let messages = open, !messages.isEmpty { done.append(Transaction(messages: messages, commit: commit, end: end)) }
                    open = nil
                case .other(let tag):
                    Issue.record("an empty publication sent a message \(ReplicationFrame.describe(tag))")
                }
            }
        }
        return done
    }

    /// The slot's confirmed position, once it reached `target` or after 10 s (the walsender
    /// applies a status update shortly after it arrives).
    func slotPosition(_ connection: PostgresConnection, _ slot: String, reaching target: LogSequenceNumber) async throws -> LogSequenceNumber? {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let position = try await ReplicationSlotStatus.read(slot, on: connection)?.confirmed
            if let position, position >= target { return position }
            if ContinuousClock.now > deadline { return position }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func emit(_ connection: PostgresConnection, _ content: String, prefix: String = "outbox") async throws {
        try await connection.query("SELECT pg_logical_emit_message(true, $1, $2)", [.text(prefix), .text(content)])
    }

    @Test func messagesArriveInCommitOrderGroupedByTransactionAndRolledBackOnesNever() async throws {
        try await withSlot { url, connection, slot in
            let early = try await PostgresConnection.connect(PostgresConfiguration(url: url), logger: TestEnvironment.logger)
            try await early.query("BEGIN")
            try await emit(early, "first emitted, committed last")
            try await connection.query("BEGIN")
            try await emit(connection, "b1")
            try await emit(connection, "not ours", prefix: "another-tool")
            try await emit(connection, "b2 ✓")
            try await connection.query("COMMIT")
            try await connection.query("BEGIN")
            try await emit(connection, "rolled back")
            try await connection.query("ROLLBACK")
            try await early.query("COMMIT")
            await early.close()

            let reader = try await replication(url)
            try await reader.startReplication(slot: slot, publication: Self.publication, after: .zero)
            let seen = try await transactions(reader, count: 2)
            #expect(seen.map(\.messages) == [["b1", "b2 ✓"], ["first emitted, committed last"]])
            #expect(seen[0].end < seen[1].commit && seen[0].commit < seen[0].end)
            await reader.close()
        }
    }

    /// A reader that confirmed a transaction never sees it again; one that did not, does.
    @Test func aReconnectResumesAfterTheConfirmedPositionAndReplaysTheRest() async throws {
        try await withSlot { url, connection, slot in
            for name in ["one", "two", "three"] { try await emit(connection, name) }

            var reader = try await replication(url)
            try await reader.startReplication(slot: slot, publication: Self.publication, after: .zero)
            let all = try await transactions(reader, count: 3)
            #expect(all.map(\.messages) == [["one"], ["two"], ["three"]])
            try await reader.confirm(all[0].end)
            await reader.close()  // as a crash would: "two" and "three" were not confirmed

            #expect(try await slotPosition(connection, slot, reaching: all[0].end) == all[0].end)

            reader = try await replication(url)
            try await reader.startReplication(slot: slot, publication: Self.publication, after: .zero)
            #expect(try await transactions(reader, count: 2).map(\.messages) == [["two"], ["three"]])
            try await reader.confirm(all[2].end)
            await reader.close()

            try await emit(connection, "four")
            reader = try await replication(url)
            try await reader.startReplication(slot: slot, publication: Self.publication, after: .zero)
            #expect(try await transactions(reader, count: 1).map(\.messages) == [["four"]])
            await reader.close()
        }
    }

    /// One reader per slot: a second one is refused by Postgres with a message naming the slot,
    /// and takes over once the first is gone (a standby relay's path).
    @Test func aSecondReaderOfAnActiveSlotIsRefusedAndTakesOverWhenTheFirstIsGone() async throws {
        try await withSlot { url, connection, slot in
            try await emit(connection, "x")
            let first = try await replication(url)
            try await first.startReplication(slot: slot, publication: Self.publication, after: .zero)
            let second = try await replication(url)
            let refused = await #expect(throws: PostgresError.self) {
                try await second.startReplication(slot: slot, publication: Self.publication, after: .zero)
            }
            #expect(refused?.sqlState == "55006" && refused?.message.contains(slot) == true, "\(String(describing: refused))")
            await first.close()
            await second.close()

            let standby = try await startWhenFree(url, slot)
            #expect(try await transactions(standby, count: 1).map(\.messages) == [["x"]])
            await standby.close()
        }
    }

    /// An idle reader's slot follows the server's WAL (so it never pins WAL that others write),
    /// through keepalives and the reader's own periodic status updates.
    @Test func anIdleReaderKeepsItsSlotMovingWithTheServer() async throws {
        try await withSlot { url, connection, slot in
            let reader = try await replication(url, statusInterval: .milliseconds(500))
            try await reader.startReplication(slot: slot, publication: Self.publication, after: .zero)
            try await connection.query("CREATE TABLE busy AS SELECT generate_series(1, 20000) AS n")
            let written = try #require(LogSequenceNumber(try await connection.query("SELECT pg_current_wal_lsn()::text AS lsn").first!.decode("lsn", as: String.self)))
            var progress = ReplicationProgress(start: .zero)
            let deadline = ContinuousClock.now + .seconds(30)
            while progress.confirmable < written, ContinuousClock.now < deadline {
                for frame in try await reader.read(timeout: .milliseconds(500)) {
                    if case .keepalive(let end, _) = frame { progress.serverReached(end) }
                }
                try await reader.confirm(progress.confirmable)
            }
            #expect(progress.confirmable >= written, "the server's keepalives never passed \(written)")
            #expect(try #require(try await slotPosition(connection, slot, reaching: written)) >= written)
            await reader.close()
        }
    }

    /// DESIGN §6: a reader waiting for WAL blocks its own queue, never the cooperative pool (four
    /// waiting readers, more than this machine has pool threads, while a ticker runs on the pool),
    /// and cancellation ends the waits promptly.
    @Test func waitingReadersLeaveThePoolFreeAndCancellationEndsTheirWaits() async throws {
        try await withSlot { url, _, slot in
            var readers: [PostgresReplicationConnection] = []
            for index in 0..<4 {
                let reader = try await replication(url)
                let ownSlot = "\(slot)_\(index)"
                _ = try await reader.createSlotIfMissing(ownSlot)
                try await reader.startReplication(slot: ownSlot, publication: Self.publication, after: .zero)
                readers.append(reader)
            }
            let waits = readers.map { reader in
                Task {
                    while true { _ = try await reader.read(timeout: .seconds(30)) }  // keepalives end a read early
                }
            }
            let clock = ContinuousClock()
            var worst = Duration.zero
            var last = clock.now
            for _ in 0..<100 {
                try await Task.sleep(for: .milliseconds(10))
                worst = max(worst, clock.now - last)
                last = clock.now
            }
            #expect(worst < .milliseconds(900), "the pool stalled for \(worst)")
            let cancelled = clock.now
            waits.forEach { $0.cancel() }
            for wait in waits { await #expect(throws: CancellationError.self) { try await wait.value } }
            #expect(clock.now - cancelled < .seconds(3))
            for reader in readers { await reader.close() }
        }
    }

    /// A walsender that goes away (terminated, a server restart) ends the reader's read with an
    /// error saying so, not a wait that never ends; the slot keeps what was not confirmed.
    @Test func aTerminatedWalsenderEndsTheReadWithAnErrorAndTheSlotKeepsItsPlace() async throws {
        try await withSlot { url, connection, slot in
            try await emit(connection, "kept")
            let reader = try await replication(url)
            try await reader.startReplication(slot: slot, publication: Self.publication, after: .zero)
            #expect(try await transactions(reader, count: 1).map(\.messages) == [["kept"]])
            try await connection.query("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", [.text(slot)])
            let error = await #expect(throws: PostgresError.self) {
                for _ in 0..<40 { _ = try await reader.read(timeout: .milliseconds(500)) }
            }
            #expect(error?.sqlState == "57P01" || error?.code == .connectionLost, "\(String(describing: error))")
            await reader.close()

            let again = try await startWhenFree(url, slot)
            #expect(try await transactions(again, count: 1).map(\.messages) == [["kept"]])
            await again.close()
        }
    }

    /// The figures an operator watches: WAL the slot retains and the reader's lag grow while
    /// nothing is confirmed; active, and confirmed where the reader said, while a reader streams.
    @Test func aSlotsStatusShowsRetainedWALLagAndWhetherItIsRead() async throws {
        try await withSlot { url, connection, slot in
            #expect(try await ReplicationSlotStatus.read("no_such_slot", on: connection) == nil)
            let idle = try #require(try await ReplicationSlotStatus.read(slot, on: connection))
            #expect(!idle.active && idle.walStatus == "reserved" && !idle.isLost)

            try await connection.query("CREATE TABLE filler AS SELECT n, repeat('x', 200) AS pad FROM generate_series(1, 20000) AS n")
            try await emit(connection, "last")
            let behind = try #require(try await ReplicationSlotStatus.read(slot, on: connection))
            #expect(behind.retainedBytes > 4_000_000 && behind.confirmedLagBytes > 4_000_000, "\(behind)")

            let reader = try await replication(url)
            try await reader.startReplication(slot: slot, publication: Self.publication, after: .zero)
            let last = try await transactions(reader, count: 1)
            try await reader.confirm(last[0].end)
            _ = try await slotPosition(connection, slot, reaching: last[0].end)
            let caughtUp = try #require(try await ReplicationSlotStatus.read(slot, on: connection))
            // The lag is now only what the whole server (other tests' databases too) wrote since.
            #expect(caughtUp.active && caughtUp.confirmed == last[0].end && caughtUp.confirmedLagBytes >= 0)
            await reader.close()
        }
    }

    /// A status update due on every pass of a read (an interval shorter than a pass, as when a
    /// slow start-up or a loaded machine delays the first read past it): reading goes on, and
    /// messages still arrive. (A status sent after the pass had read the clock once made the
    /// time left until the next one underflow, and trapped.)
    @Test func statusUpdatesDueOnEveryPassLeaveReadingIntact() async throws {
        try await withSlot { url, connection, slot in
            let reader = try await replication(url, statusInterval: .milliseconds(1))
            try await reader.startReplication(slot: slot, publication: Self.publication, after: .zero)
            try await Task.sleep(for: .milliseconds(20))
            for _ in 0..<3 { _ = try await reader.read(timeout: .milliseconds(100)) }
            try await emit(connection, "after many updates")
            #expect(try await transactions(reader, count: 1).map(\.messages) == [["after many updates"]])
            await reader.close()
        }
    }

    @Test func namesThatAreNotPlainSlotNamesAreRefusedBeforeAnythingIsSent() async throws {
        try await withSlot { url, _, _ in
            let reader = try await replication(url)
            for bad in ["", "Upper", "semi;colon", "quote\"d", String(repeating: "a", count: 64)] {
                let error = await #expect(throws: PostgresError.self) { _ = try await reader.createSlotIfMissing(bad) }
                #expect(error?.message.contains("must be 1-63 lower-case letters, digits or underscores") == true)
            }
            await reader.close()
        }
    }
}
