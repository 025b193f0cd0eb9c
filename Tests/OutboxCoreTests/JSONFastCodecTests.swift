import Foundation
import Testing

@testable import OutboxCore

@Suite struct JSONFastCodecTests {
    /// What `JSONEncoder` writes for `value` (the text `jsonText` has always promised).
    func encoderText(_ value: JSONValue) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(value)) ?? Data("null".utf8), as: UTF8.self)
    }

    /// The fast writer must produce what JSONEncoder (sorted keys) produces.
    @Test(arguments: [
        JSONValue.null, true, false, 0, -0.0, 1, -1, 42, 0.1, -0.123456, 1e-7, 1.5e300, 123_456_789_012_345,
        9_007_199_254_740_991, 9_007_199_254_740_993, 1.8446744073709552e19, 3.4028234663852886e38,
        "", "plain", "quote \" backslash \\ slash /", "tab\tnewline\ncr\rbs\u{8}ff\u{c}", "nul \u{0} unit \u{1f} del \u{7f}",
        "naïve ✓ 𝄞", ["b": 1, "a": [1, 2.5, "x"], "c": ["nested": [:]]], [], [[], [:], [nil]],
        ["collection": "extractions", "id": "0b6f1c1e-5d7a-4f3e-9a55-2f0d1c3b4a59", "payload": ["n": 7],
         "vector": [0.012345, -0.5, 1, 0.333333]],
        ["B": 1, "a": 2, "a10": 3, "a2": 4, "_": 5, "Ä": 6, "z": 7],
    ])
    func matchesJSONText(_ value: JSONValue) {
        #expect(value.jsonText == encoderText(value))
    }

    @Test func parsesBackToTheSameValue() throws {
        let value: JSONValue = ["s": "é\u{0}\"\\/", "n": [0.1, -2, 1e-9, 12345.678], "o": ["t": true, "f": false, "z": nil]]
        #expect(try JSONValue.parse(value.jsonText) == value)
    }

    @Test func nonFiniteNumbersGiveNullAsJSONEncoderDoes() {
        let value: JSONValue = ["v": [1, .number(.nan)]]
        var out: [UInt8] = []
        #expect(!value.appendJSON(to: &out))
        #expect(value.jsonText == encoderText(value))
    }
}
