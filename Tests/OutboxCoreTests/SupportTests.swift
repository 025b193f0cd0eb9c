import Foundation
import Testing

@testable import OutboxCore

@Suite struct URLAndRedactionTests {
    @Test func parsesPostgresURLWithPassword() throws {
        let parts = try #require(URLParts("postgresql://outbox:s%40cret@127.0.0.1:55432/outbox?sslmode=disable"))
        #expect(parts.scheme == "postgresql")
        #expect(parts.user == "outbox")
        #expect(parts.password == "s@cret")
        #expect(parts.host == "127.0.0.1")
        #expect(parts.port == 55432)
        #expect(parts.path == "/outbox")
        #expect(parts.query.map(\.0) == ["sslmode"])
    }

    @Test func parsesRedisURLWithEmptyUser() throws {
        let parts = try #require(URLParts("redis://:pw@localhost/3"))
        #expect(parts.user == "")
        #expect(parts.password == "pw")
        #expect(parts.port == nil)
        #expect(parts.path == "/3")
    }

    @Test func parsesIPv6Host() throws {
        let parts = try #require(URLParts("redis://[::1]:6380"))
        #expect(parts.host == "::1")
        #expect(parts.port == 6380)
    }

    @Test func redactsPasswordsInURLs() {
        #expect(SecretAddress.redacted("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db")
        #expect(SecretAddress.redacted("redis://:secret@h/0") == "redis://:***@h/0")
        #expect(SecretAddress.redacted("postgresql://u@h/db") == "postgresql://u@h/db")
        #expect(SecretAddress.redacted("host=h dbname=x") == "host=h dbname=x")
    }

    @Test func redactorRemovesEverySecretOccurrence() {
        let redactor = Redactor(secrets: ["hunter2", nil, "hunter2-long"])
        #expect(redactor.redact("a hunter2-long b hunter2") == "a *** b ***")
    }

    @Test func postgresConfigurationRedactsItsURL() {
        let config = PostgresConfiguration(url: "postgresql://outbox:pw123@127.0.0.1/outbox")
        #expect(!config.redactedURL.contains("pw123"))
        #expect(config.redactor.redact("failed for postgresql://outbox:pw123@127.0.0.1/outbox").contains("pw123") == false)
    }

    @Test func redisURLMustBeRedisScheme() {
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "http://x").endpoint() }
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "redis://h/notanumber").endpoint() }
        let endpoint = try? RedisConfiguration(url: "redis://:pw@h:1234/2", password: "override").endpoint()
        #expect(endpoint?.password == "override")
        #expect(endpoint?.database == 2)
        #expect(endpoint?.port == 1234)
    }
}

@Suite struct SQLIdentifierTests {
    @Test(arguments: ["extractions", "_x", "Table_1", "a$b"])
    func acceptsPlainIdentifiers(name: String) throws {
        #expect(try SQLIdentifier(name).quoted == "\"\(name)\"")
    }

    @Test(arguments: ["", "1abc", "a b", "x\"; DROP TABLE y; --", "a.b", "naïve", String(repeating: "a", count: 64), "a\u{0}b"])
    func refusesAnythingElse(name: String) {
        #expect(throws: SQLIdentifier.Invalid.self) { try SQLIdentifier(name) }
    }

    @Test func tableNamesMayBeSchemaQualified() throws {
        #expect(try SQLTableName("public.extractions").quoted == "\"public\".\"extractions\"")
        #expect(try SQLTableName("extractions").quoted == "\"extractions\"")
        #expect(throws: SQLIdentifier.Invalid.self) { try SQLTableName("a.b.c") }
    }
}

@Suite struct PostgresTextTests {
    @Test func timestampsRoundTripAtMicrosecondPrecision() throws {
        let date = Date(timeIntervalSince1970: 1_700_000_000.123456)
        let text = PostgresText.timestamp(date)
        #expect(text == "2023-11-14 22:13:20.123456+00")
        let parsed = try #require(PostgresText.parseTimestamp(text))
        #expect(abs(parsed.timeIntervalSince1970 - date.timeIntervalSince1970) < 0.000_001)
    }

    @Test func uuidsPrintAsPostgresPrintsThem() {
        #expect(PostgresText.uuid(UUID(uuidString: "8F0C3A8E-2F7A-4D6E-9B7E-0A1B2C3D4E5F")!) == "8f0c3a8e-2f7a-4d6e-9b7e-0a1b2c3d4e5f")
        #expect(PostgresText.uuid(UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))) == "00000000-0000-0000-0000-000000000000")
        let samples = (0..<10_000).map { _ in UUID() }
        #expect(samples.filter { PostgresText.uuid($0) != $0.uuidString.lowercased() } == [])
    }

    @Test func timestampsWithOffsetsParse() throws {
        let parsed = try #require(PostgresText.parseTimestamp("2024-01-02 05:34:05+05:30"))
        #expect(parsed.timeIntervalSince1970 == 1_704_153_845)
        #expect(PostgresText.parseTimestamp("2024-01-01 22:34:05-01:30")?.timeIntervalSince1970 == 1_704_153_845)
        #expect(PostgresText.parseTimestamp("1900-01-01 00:00:00+00:09:21")?.timeIntervalSince1970 == -2_208_989_361)
        #expect(PostgresText.parseTimestamp("2024-01-02 00:04:05")?.timeIntervalSince1970 == 1_704_153_845)
    }

    /// The calendar arithmetic agrees with glibc's `gmtime_r` (which formats the text) at every
    /// second sampled from 1901 to 2100, leap days and month ends included.
    @Test func timestampsRoundTripAcrossTheCalendar() throws {
        var random = SystemRandomNumberGenerator()
        let samples = (0..<20_000).map { _ in Int.random(in: -2_145_916_800...4_102_444_800, using: &random) }
            + [951_782_400, 951_868_799, 1_709_164_800, -2_203_891_200, 0, 1_704_067_199]
        for seconds in samples {
            let text = PostgresText.timestamp(Date(timeIntervalSince1970: Double(seconds)))
            #expect(PostgresText.parseTimestamp(text)?.timeIntervalSince1970 == Double(seconds), "\(text)")
        }
    }

    @Test func timestampsThatAreNotPlainDatesAreRefused() {
        for text in ["infinity", "-infinity", "2024-01-02 03:04:05+00 BC", "12024-01-02 03:04:05+00", "2024-13-02 03:04:05+00",
                     "2024-01-02", "2024-01-02 03:04", "2024-01-02 03:04:05+0", "2024/01/02 03:04:05+00", ""] {
            #expect(PostgresText.parseTimestamp(text) == nil, "\(text)")
        }
    }

    @Test func byteaHexDecodes() {
        let text = Array("\\x00ff10".utf8)
        let decoded = text.withUnsafeBufferPointer { PostgresText.parseByteaHex($0) }
        #expect(decoded == [0x00, 0xff, 0x10])
        let bad = Array("\\x0g".utf8)
        #expect(bad.withUnsafeBufferPointer { PostgresText.parseByteaHex($0) } == nil)
    }
}

@Suite struct DurationParsingTests {
    @Test func parsesUnits() {
        #expect(parseDuration("250ms") == .milliseconds(250))
        #expect(parseDuration("5s") == .seconds(5))
        #expect(parseDuration("1.5s") == .milliseconds(1500))
        #expect(parseDuration("2m") == .seconds(120))
        #expect(parseDuration("1h") == .seconds(3600))
        #expect(parseDuration("7") == .seconds(7))
        #expect(parseDuration("-3s") == .seconds(-3))
    }

    @Test(arguments: ["", "s", "five seconds", "5 parsecs", "nan", "infs"])
    func rejectsNonsense(text: String) {
        #expect(parseDuration(text) == nil)
    }
}

@Suite struct JSONValueTests {
    @Test func integersEncodeWithoutFraction() {
        let value: JSONValue = ["id": 42, "score": 0.5, "name": "x", "tags": ["a"], "none": nil]
        #expect(value.jsonText == #"{"id":42,"name":"x","none":null,"score":0.5,"tags":["a"]}"#)
    }

    @Test func parsesAndReads() throws {
        let value = try JSONValue.parse(#"{"result": {"points": [1, 2]}, "status": "ok"}"#)
        #expect(value["status"]?.stringValue == "ok")
        #expect(value["result"]?["points"]?.arrayValue?.count == 2)
    }
}

@Suite struct OutboxEventTests {
    @Test func upsertCarriesSourceAndDefaultsKeyToPointID() {
        let id = UUID(uuidString: "6F1C1D3E-5B1A-4C36-9A8F-2F0D3B7C9E11")!
        let event = OutboxEvent.qdrantUpsert(
            collection: "extractions", id: .uuid(id), text: "hello", source: ("extractions", "row-1"))
        #expect(event.destination == .qdrant)
        #expect(event.operation == "upsert")
        #expect(event.key == "6f1c1d3e-5b1a-4c36-9a8f-2f0d3b7c9e11")
        #expect(event.payload.jsonText
            == #"{"collection":"extractions","id":"6f1c1d3e-5b1a-4c36-9a8f-2f0d3b7c9e11","payload":{},"source":{"id":"row-1","table":"extractions"},"text":"hello"}"#)
    }

    @Test func xaddAndSetPayloads() {
        let xadd = OutboxEvent.redisXAdd(stream: "s", fields: ["seq": "1"], maxLength: 1000, key: "k")
        #expect(xadd.payload.jsonText == #"{"fields":{"seq":"1"},"maxlen":1000,"stream":"s"}"#)
        let set = OutboxEvent.redisSet(key: "cache:1", value: "v", ttlSeconds: 60, key: "k")
        #expect(set.payload.jsonText == #"{"key":"cache:1","ttl_seconds":60,"value":"v"}"#)
    }
}

/// Redis Cluster's key → slot function and the relay's hash tags (checked against a real cluster's
/// `CLUSTER KEYSLOT` by RedisClusterTests' drain, whose keys all land where the relay sends them).
@Suite struct RedisSlotTests {
    @Test func slotsAreCRC16OfTheHashTagAsRedisDefinesThem() {
        #expect(RedisSlot.of("123456789") == 0x31C3 % 16384)  // CRC16/XMODEM's check value
        #expect(RedisSlot.of("a") == 15495)
        #expect(RedisSlot.of("b") == 3300)
        #expect(RedisSlot.of("{user1000}.following") == RedisSlot.of("{user1000}.followers"))
        #expect(RedisSlot.of("{user1000}.following") == RedisSlot.of("user1000"))
        // An empty tag, or no closing brace: the whole key is hashed. Only the first tag counts.
        #expect(RedisSlot.of("foo{}{bar}") != RedisSlot.of("bar"))
        #expect(RedisSlot.of("foo{{bar}}zap") == RedisSlot.of("{bar"))
        #expect(RedisSlot.of("foo{bar}{zap}") == RedisSlot.of("bar"))
        #expect(RedisSlot.of("{unclosed") == RedisSlot.of("{unclosed"))
    }

    @Test func everySlotHasAShortTagThatHashesToIt() {
        // One expectation for all 16,384: an #expect each kept the test's thread busy for a second.
        let wrong = (0..<RedisSlot.count).filter { slot in
            let tag = RedisSlot.tag(for: slot)
            return tag.count > 3 || RedisSlot.of("ns:{\(tag)}:key:any}thing{") != slot
        }
        #expect(wrong.isEmpty, "slots whose tag is wrong: \(wrong.prefix(10))")
        // The tags name the relay's keys in Redis: a different choice in a later version would make
        // a relay miss the marks an earlier one wrote (computed independently, in Python).
        #expect([0, 1, 16383, 15495].map(RedisSlot.tag(for:)) == ["06S", "Qi", "6ZJ", "a"])
    }

    @Test func redirectsAndSlotMapsParse() throws {
        #expect(RedisRedirect(errorReply: "MOVED 3999 127.0.0.1:6381")?.address == RedisNodeAddress(host: "127.0.0.1", port: 6381))
        let ask = try #require(RedisRedirect(errorReply: "ASK 12 [::1]:7000"))
        #expect(ask.kind == .ask && ask.slot == 12 && ask.address == RedisNodeAddress(host: "::1", port: 7000))
        for notARedirect in ["MOVED 16384 h:1", "MOVED x h:1", "ERR MOVED 1 h:1", "MOVED 1 h", "TRYAGAIN Multiple keys"] {
            #expect(RedisRedirect(errorReply: notARedirect) == nil, "\(notARedirect)")
        }
        let reply = RedisReply.array([
            .array([.integer(0), .integer(5460), .array([.bulk(Array("".utf8)), .integer(7001), .bulk(Array("id1".utf8))])]),
            .array([.integer(5461), .integer(16383), .array([.bulk(Array("10.0.0.2".utf8)), .integer(7002)])]),
        ])
        let map = try RedisCluster.slotMap(reply, answeredBy: RedisNodeAddress(host: "10.0.0.1", port: 7001))
        #expect(map[0] == RedisNodeAddress(host: "10.0.0.1", port: 7001) && map[5460] == map[0])
        #expect(map[5461] == RedisNodeAddress(host: "10.0.0.2", port: 7002) && map[16383] == map[5461])
        #expect(throws: RedisError.self) { try RedisCluster.slotMap(.array([.array([.integer(1)])]), answeredBy: ask.address) }
    }
}
