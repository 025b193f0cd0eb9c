import Foundation

/// The messages of Postgres' streaming replication protocol inside CopyBoth data, and of the
/// `pgoutput` plugin inside them (protocol version 1). Only what a reader of logical messages
/// (`pg_logical_emit_message`) needs is decoded; other `pgoutput` messages are reported by tag.
/// References: "Streaming Replication Protocol" and "Logical Replication Message Formats" in the
/// Postgres 15 documentation.
public enum ReplicationFrame: Equatable, Sendable {
    /// `w`: WAL data from `start`, one `pgoutput` message; `serverEnd` is the end of WAL on the
    /// server when it was sent.
    case walData(start: LogSequenceNumber, serverEnd: LogSequenceNumber, message: PgOutputMessage)
    /// `k`: the server's end of WAL, and whether it wants a status update at once.
    case keepalive(serverEnd: LogSequenceNumber, replyRequested: Bool)

    public static func decode(_ bytes: [UInt8]) throws(ReplicationDecodingError) -> ReplicationFrame {
        try bytes.withUnsafeBytes { raw in Result { () throws(ReplicationDecodingError) in try decode(raw) } }.get()
    }

    /// Decodes from the buffer libpq returned, copying only a message's prefix and content.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(ReplicationDecodingError) -> ReplicationFrame {
        var reader = ByteReader(bytes)
        switch try reader.byte() {
        case UInt8(ascii: "w"):
            let start = try reader.lsn()
            let end = try reader.lsn()
            _ = try reader.int64()  // the server's clock
            return .walData(start: start, serverEnd: end, message: try PgOutputMessage.decode(&reader))
        case UInt8(ascii: "k"):
            let end = try reader.lsn()
            _ = try reader.int64()
            return .keepalive(serverEnd: end, replyRequested: try reader.byte() == 1)
        case let tag:
            throw ReplicationDecodingError("unknown replication message \(Self.describe(tag))")
        }
    }

    /// A standby status update (`r`): every position reported as `flushed` (a logical reader
    /// applies nothing of its own that could lag), the clock in microseconds since 2000-01-01.
    public static func statusUpdate(flushed: LogSequenceNumber, now: Date = Date(), replyRequested: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(ascii: "r")]
        bytes.reserveCapacity(34)
        let micros = Int64((now.timeIntervalSince1970 - 946_684_800) * 1_000_000)
        for value in [flushed.rawValue, flushed.rawValue, flushed.rawValue, UInt64(bitPattern: micros)] {
            withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
        }
        bytes.append(replyRequested ? 1 : 0)
        return bytes
    }

    static func describe(_ tag: UInt8) -> String {
        (0x20..<0x7F).contains(tag) ? "'\(Character(UnicodeScalar(tag)))'" : "0x" + String(tag, radix: 16)
    }
}

/// One `pgoutput` message (protocol version 1, not streamed).
public enum PgOutputMessage: Equatable, Sendable {
    /// `B`: a transaction starts; `finalLSN` is its commit record's position.
    case begin(finalLSN: LogSequenceNumber, xid: UInt32)
    /// `C`: the transaction committed at `commitLSN`; `endLSN` is the end of its commit record,
    /// the position to confirm once everything in it is done.
    case commit(commitLSN: LogSequenceNumber, endLSN: LogSequenceNumber)
    /// `M`: a logical message; transactional ones arrive between their transaction's `B` and `C`.
    case message(transactional: Bool, lsn: LogSequenceNumber, prefix: String, content: [UInt8])
    /// Any other message (relations, row changes, origins, types): not used by a message reader.
    case other(tag: UInt8)

    public static func decode(_ bytes: [UInt8]) throws(ReplicationDecodingError) -> PgOutputMessage {
        try bytes.withUnsafeBytes { raw in
            Result { () throws(ReplicationDecodingError) in
                var reader = ByteReader(raw)
                return try decode(&reader)
            }
        }.get()
    }

    static func decode(_ reader: inout ByteReader) throws(ReplicationDecodingError) -> PgOutputMessage {
        let tag = try reader.byte()
        switch tag {
        case UInt8(ascii: "B"):
            let final = try reader.lsn()
            _ = try reader.int64()  // commit time
            return .begin(finalLSN: final, xid: UInt32(bitPattern: try reader.int32()))
        case UInt8(ascii: "C"):
            _ = try reader.byte()  // flags, unused
            let commit = try reader.lsn()
            let end = try reader.lsn()
            return .commit(commitLSN: commit, endLSN: end)
        case UInt8(ascii: "M"):
            let flags = try reader.byte()
            let lsn = try reader.lsn()
            let prefix = try reader.cString()
            let length = try reader.int32()
            guard length >= 0 else { throw ReplicationDecodingError("logical message with a negative length \(length)") }
            return .message(transactional: flags & 1 == 1, lsn: lsn, prefix: prefix, content: try reader.bytes(Int(length)))
        default:
            return .other(tag: tag)
        }
    }
}

public struct ReplicationDecodingError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = "replication stream: " + description }
}

/// Big-endian reads over a byte buffer, throwing on truncation. Valid while the buffer is.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    mutating func byte() throws(ReplicationDecodingError) -> UInt8 {
        guard offset < bytes.count else { throw truncated(1) }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func int64() throws(ReplicationDecodingError) -> UInt64 {
        guard bytes.count - offset >= 8 else { throw truncated(8) }
        defer { offset += 8 }
        return UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    mutating func int32() throws(ReplicationDecodingError) -> Int32 {
        guard bytes.count - offset >= 4 else { throw truncated(4) }
        defer { offset += 4 }
        return Int32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: Int32.self))
    }

    mutating func lsn() throws(ReplicationDecodingError) -> LogSequenceNumber {
        LogSequenceNumber(rawValue: try int64())
    }

    mutating func cString() throws(ReplicationDecodingError) -> String {
        guard let end = bytes[offset...].firstIndex(of: 0) else {
            throw ReplicationDecodingError("a string without its terminating NUL at byte \(offset)")
        }
        defer { offset = end + 1 }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<end]), as: UTF8.self)
    }

    mutating func bytes(_ count: Int) throws(ReplicationDecodingError) -> [UInt8] {
        guard bytes.count - offset >= count else { throw truncated(count) }
        defer { offset += count }
        return Array(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]))
    }

    private func truncated(_ wanted: Int) -> ReplicationDecodingError {
        ReplicationDecodingError("message truncated: \(wanted) more byte(s) wanted at byte \(offset) of \(bytes.count)")
    }
}
