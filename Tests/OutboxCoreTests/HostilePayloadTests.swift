import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport


/// Payloads as the relay reads them back from jsonb: exact, or refused with a reason.
@Suite struct HostilePayloadTests {
    @Test func exactParserAgreesWithFoundationOnRandomDocuments() throws {
        var rng = SplitMix64(seed: 0x6F75_7462_6F78)
        for _ in 0..<500 {
            let value = Self.randomJSON(&rng, depth: 0)
            let text = value.jsonText
            #expect(try JSONValue.parseExact(text) == JSONValue.parse(text), "\(text)")
            #expect(try JSONValue.parseExact(text) == value, "\(text)")
        }
    }

    @Test func escapesSurrogatePairsAndJsonbSpacingParse() throws {
        // jsonb::text spells objects with spaces and escapes control characters.
        let text = #"{"a": "\u00e9\ud83d\ude00\n\t\"\\\/", "b": [1, -2.5e-3, true, null, {}], "c": "日本"}"#
        let value = try JSONValue.parseExact(text)
        #expect(value["a"] == .string("é😀\n\t\"\\/"))
        #expect(value["b"] == [1, -0.0025, true, nil, [:]])
        #expect(value["c"] == "日本")
    }

    @Test(arguments: [
        (#"{"id": 9007199254740993}"#, "the integer 9007199254740993, beyond ±2^53"),
        (#"{"id": 18446744073709551615}"#, "the integer 18446744073709551615, beyond ±2^53"),
        (#"{"n": -9007199254740993}"#, "the integer -9007199254740993, beyond ±2^53"),
        (#"{"n": 1e400}"#, "beyond the range of a double"),
        ("{\"n\": 1\(String(repeating: "0", count: 400))}", "beyond the range of a double"),
        (#"{"e\u0301": "1", "é": "2"}"#, "differ only in Unicode normalization"),
        (#"{"a": "\ud800"}"#, "unpaired UTF-16 surrogate"),
        (String(repeating: "[", count: 513) + String(repeating: "]", count: 513), "nested deeper than 512 levels"),
        (#"{"a": 1} x"#, "not valid JSON"),
    ])
    func payloadsTheRelayCannotCarryExactlyAreRefusedWithAReason(text: String, reason: String) {
        #expect(throws: JSONValue.InexactPayload.self) { try JSONValue.parseExact(text) }
        do {
            _ = try JSONValue.parseExact(text)
        } catch {
            #expect(error.message.contains(reason), "\(error.message)")
        }
    }

    /// A writer refuses a number a double would round, naming where it is in the payload.
    @Test func writersRefuseInexactIntegersNamingTheirPath() throws {
        let payload: JSONValue = ["collection": "c", "ids": [1, 2, 9_007_199_254_740_992], "payload": ["n": 3]]
        let error = try #require(throws: JSONValue.InexactPayload.self) { try payload.checkExactIntegers() }
        #expect(error.message.hasPrefix("payload.ids[2] holds 9007199254740992.0, an integer of magnitude 2^53 or more"), "\(error.message)")
        try (["ids": [1, 9_007_199_254_740_991], "n": -9_007_199_254_740_991.0, "x": 0.5] as JSONValue).checkExactIntegers()
    }

    @Test func numbersThatSurviveADoubleAreAccepted() throws {
        #expect(try JSONValue.parseExact("9007199254740992") == .number(9_007_199_254_740_992))
        #expect(try JSONValue.parseExact("-9007199254740992") == .number(-9_007_199_254_740_992))
        // Not integers (or past 64 bits): Qdrant reads them as doubles too.
        #expect(try JSONValue.parseExact("1e300") == .number(1e300))
        #expect(try JSONValue.parseExact("18446744073709551616") == .number(18_446_744_073_709_551_616))
        #expect(try JSONValue.parseExact("1e-400") == .number(0))
        let nested = String(repeating: "[", count: 512) + String(repeating: "]", count: 512)
        #expect(throws: Never.self) { try JSONValue.parseExact(nested) }
    }

    @Test func canonicallyEquivalentValuesStayByteExact() throws {
        let value = try JSONValue.parseExact(#"{"nfc": "\u00e9", "nfd": "e\u0301"}"#)
        #expect(value["nfc"]?.stringValue.map { Array($0.utf8) } == [0xC3, 0xA9])
        #expect(value["nfd"]?.stringValue.map { Array($0.utf8) } == [0x65, 0xCC, 0x81])
    }

    @Test func dotCollectionNamesCannotBecomeDotSegments() {
        #expect(QdrantClient.escape(".") == "%2E")
        #expect(QdrantClient.escape("..") == "%2E%2E")
        #expect(QdrantClient.escape("a/../b") == "a%2F..%2Fb")
        #expect(QdrantClient.escape("extractions.v2") == "extractions.v2")
    }

    /// A random JSON value whose numbers a double carries exactly.
    static func randomJSON(_ rng: inout SplitMix64, depth: Int) -> JSONValue {
        switch Int.random(in: 0..<(depth > 3 ? 4 : 6), using: &rng) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &rng))
        case 2:
            return Bool.random(using: &rng)
                ? .number(Double(Int64.random(in: -(1 << 53)...(1 << 53), using: &rng)))
                : .number(Double.random(in: -1e12...1e12, using: &rng))
        case 3: return .string(randomString(&rng))
        case 4: return .array((0..<Int.random(in: 0...4, using: &rng)).map { _ in randomJSON(&rng, depth: depth + 1) })
        default:
            var object: [String: JSONValue] = [:]
            for _ in 0..<Int.random(in: 0...4, using: &rng) { object[randomString(&rng)] = randomJSON(&rng, depth: depth + 1) }
            return .object(object)
        }
    }

    static let alphabet: [String] = [
        "a", "Z", "0", " ", "\"", "\\", "/", "\n", "\t", "\u{1}", "\u{1F}", "é", "e\u{301}", "ß", "日", "😀", "👩‍👩‍👧",
        "\u{202E}", "\u{FEFF}", "\u{10FFFF}", "'", ";", "--", "%", "{", "]",
    ]

    static func randomString(_ rng: inout SplitMix64) -> String {
        (0..<Int.random(in: 0...8, using: &rng)).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] }.joined()
    }
}
