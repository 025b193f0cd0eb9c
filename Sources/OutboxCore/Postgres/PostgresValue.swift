import Foundation

/// A value sent as a bound parameter or read from a result column.
///
/// Parameters are always bound (`PQexecParams`), never interpolated into SQL text.
public enum PostgresValue: Sendable, Hashable {
    case null
    case text(String)
    case int(Int64)
    case bool(Bool)
    case double(Double)
    case uuid(UUID)
    /// JSON text, sent with type `jsonb`.
    case jsonb(String)
    case timestamptz(Date)
    case bytea([UInt8])
    case textArray([String])
    case intArray([Int64])
    case doubleArray([Double])
    /// Text whose type the server infers from context (sent with type OID 0), e.g. a value
    /// compared with a column whose type is only known from configuration.
    case untyped(String)

    public var isNull: Bool { self == .null }
}

extension PostgresValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByFloatLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .text(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(nilLiteral: ()) { self = .null }
}

/// Postgres type OIDs the driver encodes and decodes (`pg_type.dat`).
enum PostgresOID {
    static let bool: UInt32 = 16
    static let bytea: UInt32 = 17
    static let name: UInt32 = 19
    static let int8: UInt32 = 20
    static let int2: UInt32 = 21
    static let int4: UInt32 = 23
    static let text: UInt32 = 25
    static let oid: UInt32 = 26
    static let json: UInt32 = 114
    static let float4: UInt32 = 700
    static let float8: UInt32 = 701
    static let bpchar: UInt32 = 1042
    static let varchar: UInt32 = 1043
    static let timestamp: UInt32 = 1114
    static let timestamptz: UInt32 = 1184
    static let numeric: UInt32 = 1700
    static let uuid: UInt32 = 2950
    static let jsonb: UInt32 = 3802
    static let textArray: UInt32 = 1009
    static let int8Array: UInt32 = 1016
    static let float8Array: UInt32 = 1022
}

/// Text-format conversions shared by encoding and decoding.
enum PostgresText {
    static func arrayLiteral(_ elements: [String]) -> String {
        "{" + elements.joined(separator: ",") + "}"
    }

    /// An element of a text-format array literal: always double-quoted, `"` and `\` escaped.
    static func quoteArrayElement(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            if c == "\"" || c == "\\" { out.unicodeScalars.append("\\") }
            out.unicodeScalars.append(c)
        }
        return out + "\""
    }

    /// `8f0c3a8e-2f7a-4d6e-9b7e-0a1b2c3d4e5f`: a uuid as Postgres prints it. Foundation's
    /// `uuidString` is upper case and formats through `snprintf`, so `.uuidString.lowercased()`
    /// cost a writer a formatted print and two strings per id (docs/PERFORMANCE.md, writer-overhead).
    static func uuid(_ u: UUID) -> String {
        withUnsafeBytes(of: u.uuid) { bytes in
            String(unsafeUninitializedCapacity: 36) { out in
                var n = 0
                func append(_ ascii: UInt8) {
                    out[n] = ascii
                    n += 1
                }
                func hexDigit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") - 10 + nibble }
                for (i, byte) in bytes.enumerated() {
                    if i == 4 || i == 6 || i == 8 || i == 10 { append(UInt8(ascii: "-")) }
                    append(hexDigit(byte >> 4))
                    append(hexDigit(byte & 0x0f))
                }
                return n
            }
        }
    }

    static func double(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d > 0 ? "Infinity" : "-Infinity" }
        return "\(d)"
    }

    /// `2024-01-02 03:04:05.123456+00` — microsecond precision, UTC.
    static func timestamp(_ date: Date) -> String {
        let micros = (date.timeIntervalSince1970 * 1_000_000).rounded()
        let seconds = Int((micros / 1_000_000).rounded(.down))
        let fraction = Int(micros - Double(seconds) * 1_000_000)
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        return String(
            format: "%04d-%02d-%02d %02d:%02d:%02d.%06d+00",
            Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
            Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), fraction
        )
    }

    /// Parses timestamptz output in the ISO DateStyle: `2024-01-02 03:04:05.123+05:30`.
    /// The driver sets `DateStyle=ISO` and `TimeZone=UTC` on every connection.
    static func parseTimestamp(_ text: String) -> Date? {
        var text = text
        return text.withUTF8 { parseTimestamp($0) }
    }

    /// The same, straight from a result's bytes: every claimed event carries one, and the
    /// String, arrays and `timegm` call of a general parser were 5 % of the relay's time in
    /// drain-redis. Anything else (`infinity`, BC years, years past 9999) is nil.
    static func parseTimestamp(_ bytes: UnsafeBufferPointer<UInt8>) -> Date? {
        var index = 0
        func digits(_ count: Int) -> Int? {
            guard index + count <= bytes.count else { return nil }
            var n = 0
            for _ in 0..<count {
                let b = bytes[index]
                guard b >= 48, b <= 57 else { return nil }
                n = n * 10 + Int(b - 48)
                index += 1
            }
            return n
        }
        func skip(_ separator: UInt8) -> Bool {
            guard index < bytes.count, bytes[index] == separator else { return false }
            index += 1
            return true
        }
        guard let year = digits(4), skip(UInt8(ascii: "-")), let month = digits(2), skip(UInt8(ascii: "-")),
            let day = digits(2), skip(UInt8(ascii: " ")) || skip(UInt8(ascii: "T")),
            let hour = digits(2), skip(UInt8(ascii: ":")), let minute = digits(2), skip(UInt8(ascii: ":")),
            let second = digits(2), (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var fraction = 0.0
        if skip(UInt8(ascii: ".")) {
            var scale = 0.1
            while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 {
                fraction += Double(bytes[index] - 48) * scale
                scale /= 10
                index += 1
            }
        }
        var offset = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
            let sign = bytes[index] == UInt8(ascii: "+") ? 1 : -1
            index += 1
            guard let hours = digits(2) else { return nil }
            offset = hours * 3600
            if skip(UInt8(ascii: ":")) {
                guard let minutes = digits(2) else { return nil }
                offset += minutes * 60
                if skip(UInt8(ascii: ":")) {
                    guard let seconds = digits(2) else { return nil }
                    offset += seconds
                }
            }
            offset *= sign
        }
        guard index == bytes.count else { return nil }
        let seconds = (daysFromCivil(year: year, month: month, day: day) * 86_400 + hour * 3600 + minute * 60 + second) - offset
        return Date(timeIntervalSince1970: Double(seconds) + fraction)
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// Decodes bytea text output in hex format (`\x0102…`), the server default since 9.0.
    static func parseByteaHex(_ bytes: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        guard bytes.count >= 2, bytes[0] == UInt8(ascii: "\\"), bytes[1] == UInt8(ascii: "x"),
            bytes.count % 2 == 0
        else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity((bytes.count - 2) / 2)
        var i = 2
        while i < bytes.count {
            guard let hi = nibble(bytes[i]), let lo = nibble(bytes[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}
