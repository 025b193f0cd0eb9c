import Foundation

extension JSONValue {
    /// Why an event payload that Postgres accepted cannot be delivered as written.
    public struct InexactPayload: Error, CustomStringConvertible, Sendable {
        public let message: String
        public var description: String { message }
    }

    /// Parses an event payload (`payload::text` of a jsonb column), refusing what the relay could
    /// only deliver altered.
    ///
    /// jsonb keeps numbers exactly and object keys byte for byte; ``JSONValue`` holds numbers as
    /// doubles and keys as Swift strings. A payload is refused, rather than delivered changed, when
    /// it holds:
    /// - an integer beyond ±2^53 that fits 64 bits (`9007199254740993` would arrive as
    ///   `…992`: another point id, another payload value), or a number beyond a double's range;
    /// - two keys of one object that Swift considers equal but whose bytes differ (the same text
    ///   in NFC and NFD): one would be lost;
    /// - nesting deeper than ``maximumDepth``.
    ///
    /// Integers of 2^64 and more are accepted as doubles: Qdrant parses them as doubles too.
    public static func parseExact(_ text: String) throws(InexactPayload) -> JSONValue {
        var parser = ExactJSONParser(Array(text.utf8))
        return try parser.parseDocument()
    }

    public static let maximumDepth = 512

    /// Throws when this value holds an integer-valued number of magnitude 2^53 or more. Such a
    /// double may already be a rounded 64-bit integer (`UInt64(9007199254740993)` becomes
    /// `9007199254740992.0`), so a writer refuses it instead of enqueueing another value.
    public func checkExactIntegers(path: String = "payload") throws(InexactPayload) {
        // The path is only spelled out for a value refused: writers call this for every event.
        guard let (n, subpath) = firstInexactInteger() else { return }
        throw InexactPayload(message:
            "\(path)\(subpath) holds \(n), an integer of magnitude 2^53 or more, which a JSON number cannot carry exactly; "
                + "send it as a string (or use a UUID point id)")
    }

    private func firstInexactInteger() -> (Double, subpath: String)? {
        switch self {
        case .number(let n) where n.rounded() == n && n.magnitude >= 9_007_199_254_740_992:
            return (n, "")
        case .array(let elements):
            for (i, element) in elements.enumerated() {
                if let (n, subpath) = element.firstInexactInteger() { return (n, "[\(i)]" + subpath) }
            }
        case .object(let members):
            for (key, member) in members {
                if let (n, subpath) = member.firstInexactInteger() { return (n, ".\(key)" + subpath) }
            }
        default:
            break
        }
        return nil
    }
}

struct ExactJSONParser {
    let bytes: [UInt8]
    var index = 0
    var depth = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    private func fail(_ message: String) -> JSONValue.InexactPayload { JSONValue.InexactPayload(message: message) }

    mutating func parseDocument() throws(JSONValue.InexactPayload) -> JSONValue {
        let value = try parseValue()
        skipWhitespace()
        guard index == bytes.count else { throw fail("payload is not valid JSON (trailing data at byte \(index))") }
        return value
    }

    private mutating func skipWhitespace() {
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }

    private mutating func parseValue() throws(JSONValue.InexactPayload) -> JSONValue {
        skipWhitespace()
        guard index < bytes.count else { throw fail("payload is not valid JSON (unexpected end)") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        default: return try parseNumber()
        }
    }

    private mutating func literal(_ word: String, _ value: JSONValue) throws(JSONValue.InexactPayload) -> JSONValue {
        let w = Array(word.utf8)
        guard index + w.count <= bytes.count, Array(bytes[index..<index + w.count]) == w else {
            throw fail("payload is not valid JSON (unexpected byte at \(index))")
        }
        index += w.count
        return value
    }

    private mutating func enter() throws(JSONValue.InexactPayload) {
        depth += 1
        guard depth <= JSONValue.maximumDepth else {
            throw fail("payload is nested deeper than \(JSONValue.maximumDepth) levels")
        }
    }

    private mutating func parseArray() throws(JSONValue.InexactPayload) -> JSONValue {
        try enter()
        defer { depth -= 1 }
        index += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            return .array(elements)
        }
        while true {
            elements.append(try parseValue())
            skipWhitespace()
            guard index < bytes.count else { throw fail("payload is not valid JSON (unterminated array)") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            guard bytes[index] == UInt8(ascii: "]") else { throw fail("payload is not valid JSON (expected , or ] at byte \(index))") }
            index += 1
            return .array(elements)
        }
    }

    private mutating func parseObject() throws(JSONValue.InexactPayload) -> JSONValue {
        try enter()
        defer { depth -= 1 }
        index += 1
        var members: [String: JSONValue] = [:]
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else {
                throw fail("payload is not valid JSON (expected a key at byte \(index))")
            }
            let key = try parseString()
            // Swift's String equality is canonical equivalence: a key equal to an earlier one may
            // be spelled differently (NFC and NFD), and the two cannot both be kept.
            if let earlier = members.index(forKey: key).map({ members[$0].key }), !earlier.utf8.elementsEqual(key.utf8) {
                throw fail(
                    "payload object has keys \(JSONValue.string(earlier).jsonText) and "
                        + "\(JSONValue.string(key).jsonText) that differ only in Unicode normalization; the relay cannot keep them apart")
            }
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else {
                throw fail("payload is not valid JSON (expected : at byte \(index))")
            }
            index += 1
            members[key] = try parseValue()
            skipWhitespace()
            guard index < bytes.count else { throw fail("payload is not valid JSON (unterminated object)") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            guard bytes[index] == UInt8(ascii: "}") else { throw fail("payload is not valid JSON (expected , or } at byte \(index))") }
            index += 1
            return .object(members)
        }
    }

    private mutating func parseString() throws(JSONValue.InexactPayload) -> String {
        index += 1  // opening quote
        var out: [UInt8] = []
        var runStart = index
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\""), out.isEmpty {  // no escapes: straight from the input
                defer { index += 1 }
                return String(decoding: bytes[runStart..<index], as: UTF8.self)
            }
            if byte == UInt8(ascii: "\"") {
                out.append(contentsOf: bytes[runStart..<index])
                index += 1
                return String(decoding: out, as: UTF8.self)
            }
            guard byte == UInt8(ascii: "\\") else {
                index += 1
                continue
            }
            out.append(contentsOf: bytes[runStart..<index])
            index += 1
            guard index < bytes.count else { break }
            let escape = bytes[index]
            index += 1
            switch escape {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(escape)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                        throw fail("payload holds an unpaired UTF-16 surrogate")
                    }
                    index += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw fail("payload holds an unpaired UTF-16 surrogate") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let unicode = Unicode.Scalar(scalar) else { throw fail("payload holds an unpaired UTF-16 surrogate") }
                UTF8.encode(unicode) { out.append($0) }
            default:
                throw fail("payload is not valid JSON (bad escape at byte \(index - 1))")
            }
            runStart = index
        }
        throw fail("payload is not valid JSON (unterminated string)")
    }

    private mutating func hex4() throws(JSONValue.InexactPayload) -> UInt32 {
        guard index + 4 <= bytes.count, let value = UInt32(String(decoding: bytes[index..<index + 4], as: UTF8.self), radix: 16) else {
            throw fail("payload is not valid JSON (bad \\u escape at byte \(index))")
        }
        index += 4
        return value
    }

    private mutating func parseNumber() throws(JSONValue.InexactPayload) -> JSONValue {
        let start = index
        var integral = true
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "+"): break
            case UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): integral = false
            default:
                return try number(start: start, integral: integral)
            }
            index += 1
        }
        return try number(start: start, integral: integral)
    }

    private func number(start: Int, integral: Bool) throws(JSONValue.InexactPayload) -> JSONValue {
        let token = String(decoding: bytes[start..<index], as: UTF8.self)
        guard !token.isEmpty else { throw fail("payload is not valid JSON (unexpected byte at \(start))") }
        if integral {
            // Within ±2^53 every integer is an exact double. Between 2^53 and 64 bits a receiver
            // such as Qdrant would keep the integer exact, so a rounded double would be wrong.
            let exactLimit: Int64 = 1 << 53
            if let value = Int64(token) {
                guard value.magnitude <= exactLimit.magnitude else { throw inexact(token) }
                return .number(Double(value))
            }
            if UInt64(token) != nil { throw inexact(token) }
        }
        guard let value = Double(token) else { throw fail("payload is not valid JSON (bad number \(token.prefix(40)))") }
        guard value.isFinite else {
            throw fail("payload holds the number \(token.prefix(40))\(token.count > 40 ? "…" : ""), beyond the range of a double")
        }
        return .number(value)
    }

    private func inexact(_ token: String) -> JSONValue.InexactPayload {
        fail("payload holds the integer \(token), beyond ±2^53: it cannot be carried exactly; send it as a string (or use a UUID point id)")
    }
}
