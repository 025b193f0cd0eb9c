import CLibPQ

/// The wire form of a statement's parameters: type OIDs, formats (0 text, 1 binary), lengths, and
/// every value's bytes in one buffer (a buffer per value cost a writer two allocations each).
struct EncodedParameters {
    private(set) var types: [UInt32] = []
    private(set) var formats: [Int32] = []
    private(set) var lengths: [Int32] = []
    /// Where each value starts in `bytes`; nil for NULL.
    private(set) var offsets: [Int?] = []
    private(set) var bytes: [UInt8] = []

    init(_ parameters: [PostgresValue]) {
        types.reserveCapacity(parameters.count)
        formats.reserveCapacity(parameters.count)
        lengths.reserveCapacity(parameters.count)
        offsets.reserveCapacity(parameters.count)
        bytes.reserveCapacity(64 * parameters.count)
        for parameter in parameters { append(parameter) }
    }

    private mutating func append(_ value: PostgresValue) {
        switch value {
        case .null:
            types.append(0)
            formats.append(0)
            lengths.append(0)
            offsets.append(nil)
        case .text(let s): append(PostgresOID.text, s.utf8)
        case .int(let i): append(PostgresOID.int8, String(i).utf8)
        case .bool(let b): append(PostgresOID.bool, (b ? "t" : "f").utf8)
        case .double(let d): append(PostgresOID.float8, PostgresText.double(d).utf8)
        case .uuid(let u): append(PostgresOID.uuid, PostgresText.uuid(u).utf8)
        case .jsonb(let j): append(PostgresOID.jsonb, j.utf8)
        case .timestamptz(let d): append(PostgresOID.timestamptz, PostgresText.timestamp(d).utf8)
        // Binary format: bytea bytes go over the wire untouched, NULs included.
        case .bytea(let b): append(PostgresOID.bytea, b, format: 1)
        case .textArray(let a): append(PostgresOID.textArray, PostgresText.arrayLiteral(a.map(PostgresText.quoteArrayElement)).utf8)
        case .intArray(let a): append(PostgresOID.int8Array, PostgresText.arrayLiteral(a.map(String.init)).utf8)
        case .doubleArray(let a): append(PostgresOID.float8Array, PostgresText.arrayLiteral(a.map(PostgresText.double)).utf8)
        case .untyped(let s): append(0, s.utf8)
        }
    }

    private mutating func append(_ oid: UInt32, _ value: some Collection<UInt8>, format: Int32 = 0) {
        types.append(oid)
        formats.append(format)
        lengths.append(Int32(value.count))
        offsets.append(bytes.count)
        bytes.append(contentsOf: value)
        // Text-format values are read up to a NUL (libpq ignores their length), so terminate them.
        bytes.append(0)
    }

    /// Text-format values travel as C strings: libpq would cut one at a NUL byte and send the
    /// rest of the statement with a silently shortened value (`"a\0b"` stored as `"a"`). Postgres
    /// text and jsonb cannot hold NUL anyway, so such a value is refused before anything is sent,
    /// with the SQLSTATE Postgres uses for it (22021, character_not_in_repertoire).
    static func checkForNUL(_ parameters: [PostgresValue]) throws {
        for (index, parameter) in parameters.enumerated() {
            let hasNUL = switch parameter {
            case .text(let s), .jsonb(let s), .untyped(let s): s.utf8.contains(0)
            case .textArray(let a): a.contains { $0.utf8.contains(0) }
            default: false
            }
            guard hasNUL else { continue }
            throw PostgresError(
                code: .invalidParameter, sqlState: "22021",
                message: "parameter $\(index + 1) contains a NUL byte (0x00), which Postgres text cannot store")
        }
    }
}

/// Calls `body` with libpq parameter arrays for `parameters`, valid for the call only.
func withParameters<R>(
    _ parameters: [PostgresValue],
    _ body: (Int32, UnsafePointer<Oid>?, UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?) throws -> R
) rethrows -> R {
    let encoded = EncodedParameters(parameters)
    return try encoded.bytes.withUnsafeBufferPointer { buffer in
        let base = UnsafeRawPointer(buffer.baseAddress)?.assumingMemoryBound(to: CChar.self)
        let values = encoded.offsets.map { offset in offset.flatMap { offset in base.map { $0 + offset } } }
        return try body(Int32(parameters.count), encoded.types, values, encoded.lengths, encoded.formats)
    }
}
