import Foundation
import Testing

@testable import OutboxCore

/// The replication frames and `pgoutput` messages a WAL reader decodes, built byte by byte from
/// the formats in Postgres' documentation, and the position a reader may confirm.
@Suite struct ReplicationProtocolTests {
    private func be64(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
    private func be32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
    private func lsn(_ text: String) -> LogSequenceNumber { LogSequenceNumber(text)! }

    @Test func positionsParseAndPrintAsPostgresWritesThem() {
        #expect(lsn("16/B374D848").rawValue == 0x16_B374_D848)
        #expect(lsn("16/B374D848").description == "16/B374D848")
        #expect(LogSequenceNumber(rawValue: 0).description == "0/0")
        #expect(lsn("0/1") < lsn("1/0"))
        for bad in ["", "1", "1/", "/1", "G/1", "1/2/3", "123456789/0", " 1/0"] {
            #expect(LogSequenceNumber(bad) == nil, "\(bad)")
        }
    }

    @Test func walDataAndKeepalivesDecode() throws {
        let begin = [UInt8(ascii: "B")] + be64(0x500) + be64(99) + be32(731)
        let wal = [UInt8(ascii: "w")] + be64(0x10) + be64(0x20) + be64(7) + begin
        #expect(try ReplicationFrame.decode(wal)
            == .walData(start: .init(rawValue: 0x10), serverEnd: .init(rawValue: 0x20), message: .begin(finalLSN: .init(rawValue: 0x500), xid: 731)))
        let keepalive = [UInt8(ascii: "k")] + be64(0x30) + be64(7) + [1]
        #expect(try ReplicationFrame.decode(keepalive) == .keepalive(serverEnd: .init(rawValue: 0x30), replyRequested: true))
        #expect(try ReplicationFrame.decode([UInt8(ascii: "k")] + be64(0x30) + be64(7) + [0])
            == .keepalive(serverEnd: .init(rawValue: 0x30), replyRequested: false))
    }

    @Test func truncatedAndUnknownFramesAreErrorsNamingWhatIsWrong() {
        #expect(throws: ReplicationDecodingError.self) { try ReplicationFrame.decode([]) }
        let short = #expect(throws: ReplicationDecodingError.self) { try ReplicationFrame.decode([UInt8(ascii: "k")] + be64(1)) }
        #expect(short?.description.contains("truncated") == true)
        let unknown = #expect(throws: ReplicationDecodingError.self) { try ReplicationFrame.decode([UInt8(ascii: "x")]) }
        #expect(unknown?.description == "replication stream: unknown replication message 'x'")
    }

    @Test func statusUpdateReportsThePositionAsWrittenFlushedAndApplied() {
        let epoch2000 = Date(timeIntervalSince1970: 946_684_800 + 2)
        let bytes = ReplicationFrame.statusUpdate(flushed: lsn("1/2"), now: epoch2000, replyRequested: true)
        #expect(bytes == [UInt8(ascii: "r")] + be64(0x1_0000_0002) + be64(0x1_0000_0002) + be64(0x1_0000_0002) + be64(2_000_000) + [1])
    }

    @Test func pgoutputBeginCommitAndMessagesDecode() throws {
        let begin = [UInt8(ascii: "B")] + be64(0x500) + be64(99) + be32(0xFFFF_FFF0)
        #expect(try PgOutputMessage.decode(begin) == .begin(finalLSN: .init(rawValue: 0x500), xid: 0xFFFF_FFF0))
        let commit = [UInt8(ascii: "C"), 0] + be64(0x500) + be64(0x538) + be64(99)
        #expect(try PgOutputMessage.decode(commit) == .commit(commitLSN: .init(rawValue: 0x500), endLSN: .init(rawValue: 0x538)))
        let content = Array(#"{"k":"é"}"#.utf8)
        let message = [UInt8(ascii: "M"), 1] + be64(0x4F0) + Array("outbox".utf8) + [0] + be32(UInt32(content.count)) + content
        #expect(try PgOutputMessage.decode(message)
            == .message(transactional: true, lsn: .init(rawValue: 0x4F0), prefix: "outbox", content: content))
        let nonTransactional = [UInt8(ascii: "M"), 0] + be64(1) + [0] + be32(0)
        #expect(try PgOutputMessage.decode(nonTransactional) == .message(transactional: false, lsn: .init(rawValue: 1), prefix: "", content: []))
        #expect(try PgOutputMessage.decode([UInt8(ascii: "R"), 0, 0]) == .other(tag: UInt8(ascii: "R")))
    }

    @Test func aMessageWhoseLengthRunsPastItsBytesIsAnError() {
        let message = [UInt8(ascii: "M"), 1] + be64(1) + Array("outbox".utf8) + [0] + be32(10) + [1, 2, 3]
        #expect(throws: ReplicationDecodingError.self) { try PgOutputMessage.decode(message) }
        let unterminated = [UInt8(ascii: "M"), 1] + be64(1) + Array("outbox".utf8)
        let error = #expect(throws: ReplicationDecodingError.self) { try PgOutputMessage.decode(unterminated) }
        #expect(error?.description.contains("NUL") == true)
    }

    // MARK: ReplicationProgress

    @Test func theConfirmablePositionIsTheEndOfTheLastTransactionWithEverythingBeforeItSettled() {
        var progress = ReplicationProgress(start: lsn("0/100"))
        let first = progress.received(end: lsn("0/200"), events: 2)
        let second = progress.received(end: lsn("0/300"), events: 1)
        let third = progress.received(end: lsn("0/400"), events: 1)
        #expect(progress.confirmable == lsn("0/100") && progress.eventsInFlight == 4)
        progress.settled(third)  // a later transaction settled first: nothing before it moves
        progress.settled(second)
        #expect(progress.confirmable == lsn("0/100"))
        progress.settled(first)
        #expect(progress.confirmable == lsn("0/100"))  // one of its two events is still out
        progress.settled(first)
        #expect(progress.confirmable == lsn("0/400") && progress.transactionsInFlight == 0)
    }

    /// The data-loss bug CDC readers have shipped: confirming a keepalive's end of WAL while a
    /// received transaction is still being delivered. After a crash the slot would never send it again.
    @Test func aKeepaliveNeverMovesThePositionPastUnsettledWork() {
        var progress = ReplicationProgress(start: lsn("0/100"))
        let pending = progress.received(end: lsn("0/200"), events: 1)
        progress.serverReached(lsn("5/0"))
        #expect(progress.confirmable == lsn("0/100"))
        progress.settled(pending)
        #expect(progress.confirmable == lsn("0/200"))
        progress.serverReached(lsn("5/0"))  // nothing in flight: an idle reader keeps up with the server
        #expect(progress.confirmable == lsn("5/0"))
        progress.serverReached(lsn("4/0"))
        #expect(progress.confirmable == lsn("5/0"))
    }

    @Test func aTransactionWithNoneOfOurEventsIsSettledInItsTurn() {
        var progress = ReplicationProgress(start: .zero)
        let ours = progress.received(end: lsn("0/10"), events: 1)
        _ = progress.received(end: lsn("0/20"), events: 0)
        #expect(progress.confirmable == .zero)
        progress.settled(ours)
        #expect(progress.confirmable == lsn("0/20") && progress.transactionsInFlight == 0)
        _ = progress.received(end: lsn("0/30"), events: 0)
        #expect(progress.confirmable == lsn("0/30"))
    }
}
