import Foundation

@testable import OutboxCore
import OutboxTestSupport

// Fuzzing support: the seeded event fuzzer of `HostileWriterInputTests`. It runs on `SplitMix64`
// (OutboxTestSupport), which `HostileRelayPayloadTests` also uses for its 10 MB payloads.

struct FuzzCase {
    let n: Int
    let destination: String
    let operation: String
    let key: String
    /// JSON text, as sent to `$4::jsonb`.
    let payload: String
    let rowID: UUID
    var eventID: Int64?

    func with(eventID: Int64) -> FuzzCase {
        var copy = self
        copy.eventID = eventID
        return copy
    }
}

/// Builds seeded fuzz cases whose Redis names and Qdrant collections all live under `namespace`,
/// so random mutations can never touch another test's (or a colleague's) data.
struct EventFuzzer {
    let namespace: String
    var collection: String { namespace }

    /// A point the test creates first, so that set_payload has something to change.
    static let existingPoint = "00000000-0000-4000-8000-00000000f022"

    static let operations = ["qdrant.upsert", "qdrant.delete", "qdrant.set_payload", "redis.xadd", "redis.publish", "redis.del", "redis.set"]

    static let hostileStrings = [
        "", " ", "extractions; DROP TABLE extractions; --", "' OR '1'='1", "\"; SELECT pg_sleep(10); --", "$1", "%s%n%x",
        "\u{202E}evil", "é", "e\u{301}", "😀👩‍👩‍👧", "\u{1}\u{7F}", "\u{0}", "nul\u{0}inside", "\u{FEFF}", "\u{10FFFF}", "../../etc/passwd",
        "\\", "\"", "{}", "null", "true", "-1", String(repeating: "ab", count: 600), "日本語のテキスト", "\n\r\t",
    ]

    /// Number spellings a double does not carry exactly (or at all), spliced in as raw JSON.
    static let hostileNumbers = [
        "9007199254740993", "18446744073709551615", "18446744073709551616", "-1", "1.5", "1e300", "1e400", "0", "-0", "1e-400",
        "123456789012345678901234567890", "7",
    ]

    func makeCase(_ n: Int, seed: UInt64) -> FuzzCase {
        var rng = SplitMix64(seed: seed &+ UInt64(n) &* 0x1000_0001)
        let op = Self.operations[n % Self.operations.count]
        let prefix = "\(namespace):\(n)"
        let rowID = UUID(uuidString: "00000000-0000-4000-8000-\(String(format: "%012x", UInt64(rng.next() >> 16)))")!
        var raw: [String: String] = [:]  // placeholder -> raw JSON text
        var payload = valid(op, prefix: prefix, rowID: rowID, rng: &rng)
        for _ in 0..<Int.random(in: 0...3, using: &rng) { payload = mutate(payload, op: op, raw: &raw, rng: &rng) }
        payload = sandbox(payload, op: op, prefix: prefix)
        var text = payload.jsonText
        for (placeholder, value) in raw { text = text.replacingOccurrences(of: "\"\(placeholder)\"", with: value) }
        var parts = op.split(separator: ".").map(String.init)
        if n % 23 == 5 { parts[1] = pick(Self.hostileStrings, &rng) }
        if n % 29 == 7 { parts[0] = pick(Self.hostileStrings, &rng) }
        let key = n % 6 == 0 ? pick(Self.hostileStrings, &rng) : "\(prefix)-k"
        return FuzzCase(n: n, destination: parts[0], operation: parts[1], key: key, payload: text, rowID: rowID)
    }

    func valid(_ op: String, prefix: String, rowID: UUID, rng: inout SplitMix64) -> JSONValue {
        let point = JSONValue.string(UUID().uuidString.lowercased())
        switch op {
        case "qdrant.upsert":
            var body: [String: JSONValue] = ["collection": .string(collection), "id": point, "payload": ["n": .string(prefix)]]
            if Bool.random(using: &rng) { body["vector"] = [1, 0.5, -0.25, 0] } else { body["text"] = .string("some text to embed \(prefix)") }
            if Bool.random(using: &rng) { body["source"] = ["table": "extractions", "id": .string(rowID.uuidString.lowercased())] }
            return .object(body)
        case "qdrant.delete": return ["collection": .string(collection), "ids": [point]]
        case "qdrant.set_payload": return ["collection": .string(collection), "ids": [.string(Self.existingPoint)], "payload": ["k": "v"]]
        case "redis.xadd": return ["stream": .string(prefix + ":stream"), "fields": ["a": "b", "c": "d"], "maxlen": 1000]
        case "redis.publish": return ["channel": .string(prefix + ":channel"), "message": "hello"]
        case "redis.del": return ["keys": [.string(prefix + ":a"), .string(prefix + ":b")]]
        default: return ["key": .string(prefix + ":key"), "value": "value", "ttl_seconds": 600]
        }
    }

    func pick<T>(_ options: [T], _ rng: inout SplitMix64) -> T { options[Int.random(in: 0..<options.count, using: &rng)] }

    func mutate(_ payload: JSONValue, op: String, raw: inout [String: String], rng: inout SplitMix64) -> JSONValue {
        guard case .object(var body) = payload else { return randomJSON(&rng, depth: 0) }
        let keys = body.keys.sorted()
        let field = keys.isEmpty ? "x" : pick(keys, &rng)
        func rawValue(_ text: String) -> JSONValue {
            let placeholder = "§raw\(raw.count)§"
            raw[placeholder] = text
            return .string(placeholder)
        }
        switch Int.random(in: 0..<10, using: &rng) {
        case 0: body[field] = nil
        case 1: body[field] = randomJSON(&rng, depth: 0)
        case 2: body[pick(Self.hostileStrings, &rng)] = randomJSON(&rng, depth: 0)
        case 3: body[field] = .string(pick(Self.hostileStrings, &rng))
        case 4: body[["id", "ttl_seconds", "maxlen", field].randomElement(using: &rng)!] = rawValue(pick(Self.hostileNumbers, &rng))
        case 5: return randomJSON(&rng, depth: 0)
        case 6:  // inside the nested values
            switch body[field] {
            case .array(var elements)?:
                elements.append(Bool.random(using: &rng) ? randomJSON(&rng, depth: 2) : rawValue(pick(Self.hostileNumbers, &rng)))
                body[field] = .array(elements)
            case .object(var members)?:
                members[pick(Self.hostileStrings, &rng)] = Bool.random(using: &rng) ? .string(pick(Self.hostileStrings, &rng)) : randomJSON(&rng, depth: 2)
                body[field] = .object(members)
            default: body[field] = .array([randomJSON(&rng, depth: 2)])
            }
        case 7: body["payload"] = rawValue(String(repeating: "[", count: 600) + String(repeating: "]", count: 600))
        case 8:
            body["source"] = [
                "table": .string(Bool.random(using: &rng) ? "extractions" : pick(Self.hostileStrings, &rng)),
                "id": Bool.random(using: &rng) ? .string(pick(Self.hostileStrings, &rng)) : rawValue(pick(Self.hostileNumbers, &rng)),
            ]
        default: body[field] = rawValue("{\"\\u00e9\": \"1\", \"e\\u0301\": \"2\"}")
        }
        return .object(body)
    }

    func randomJSON(_ rng: inout SplitMix64, depth: Int) -> JSONValue {
        switch Int.random(in: 0..<(depth > 2 ? 4 : 6), using: &rng) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &rng))
        case 2: return .number(Bool.random(using: &rng) ? Double(Int.random(in: -1000...1000, using: &rng)) : Double.random(in: -1e6...1e6, using: &rng))
        case 3: return .string(pick(Self.hostileStrings, &rng))
        case 4: return .array((0..<Int.random(in: 0...3, using: &rng)).map { _ in randomJSON(&rng, depth: depth + 1) })
        default:
            var members: [String: JSONValue] = [:]
            for _ in 0..<Int.random(in: 0...3, using: &rng) { members[pick(Self.hostileStrings, &rng)] = randomJSON(&rng, depth: depth + 1) }
            return .object(members)
        }
    }

    /// Keeps every name a mutation produced inside this case's namespace.
    func sandbox(_ payload: JSONValue, op: String, prefix: String) -> JSONValue {
        guard case .object(var body) = payload else { return payload }
        func contain(_ value: JSONValue?) -> JSONValue? {
            guard case .string(let s)? = value, !s.hasPrefix(prefix) else { return value }
            return .string(prefix + ":" + s)
        }
        if op.hasPrefix("redis.") {
            for field in ["stream", "key", "channel"] where body[field] != nil { body[field] = contain(body[field]) }
            if case .array(let keys)? = body["keys"] { body["keys"] = .array(keys.map { contain($0)! }) }
        } else if case .string(let c)? = body["collection"], c != collection {
            body["collection"] = .string(prefix + ":" + c)
        }
        return .object(body)
    }

    /// Why the effect of a delivered case is not what its payload asked for, or nil.
    func effectProblem(of c: FuzzCase, redis: RedisConnection, qdrant: QdrantCalls, db: PostgresConnection, dedupeInstance: String)
        async throws -> String?
    {
        let payload = try JSONValue.parseExact(c.payload)
        switch "\(c.destination).\(c.operation)" {
        case "redis.set":
            guard let key = payload["key"]?.stringValue, let value = payload["value"]?.stringValue else { return "accepted without key/value" }
            if let ttl = payload["ttl_seconds"]?.numberValue, ttl < 120 { return nil }  // may have expired by now
            let stored = try await redis.command("GET", key)
            return stored == .bulk(Array(value.utf8)) ? nil : "GET \(key) = \(stored), expected \(Array(value.utf8).count) bytes"
        case "redis.xadd":
            guard let stream = payload["stream"]?.stringValue, case .object(let fields)? = payload["fields"] else { return "accepted without stream/fields" }
            let entries = try await redis.command("XRANGE", stream, "-", "+").array ?? []
            for entry in entries {
                let flat = entry.array?[1].array ?? []
                var map: [[UInt8]: [UInt8]] = [:]
                for i in stride(from: 0, to: flat.count - 1, by: 2) {
                    if case .bulk(let k) = flat[i], case .bulk(let v) = flat[i + 1] { map[k] = v }
                }
                guard map[Array("outbox_id".utf8)] == Array(String(c.eventID!).utf8) else { continue }
                var expected = Dictionary(uniqueKeysWithValues: fields.map { (Array($0.key.utf8), Array(($0.value.stringValue ?? "").utf8)) })
                expected[Array("outbox_id".utf8)] = Array(String(c.eventID!).utf8)
                return map == expected ? nil : "stream entry fields differ"
            }
            return "no stream entry with outbox_id \(c.eventID!)"
        case "redis.publish":
            // A publish leaves nothing behind but its key's dedupe mark, at or past its id.
            let mark = try await redis.command("GET", "outbox:dedupe:\(dedupeInstance):key:\(c.key)").string.flatMap { Int64($0) }
            return (mark ?? 0) >= c.eventID! ? nil : "publish left its key's dedupe mark at \(mark.map(String.init) ?? "nothing")"
        case "qdrant.upsert":
            guard case .string(let id)? = payload["id"], payload["collection"]?.stringValue == collection else { return nil }
            let reply = try await qdrant.call(.POST, "/collections/\(collection)/points", ["ids": [.string(id)], "with_payload": true])
            guard let point = reply.json?["result"]?.arrayValue?.first else { return "point \(id) missing" }
            if point["payload"] != (payload["payload"] ?? [:]) { return "payload differs: \(point["payload"]?.jsonText.prefix(200) ?? "")" }
            if payload["source"]?["table"] == "extractions", let row = payload["source"]?["id"]?.stringValue, row == c.rowID.uuidString.lowercased() {
                let embedded = try await db.query("SELECT embedding_id::text AS e FROM extractions WHERE id = $1", [.uuid(c.rowID)]).first?
                    .decode("e", as: String?.self)
                if embedded != id.lowercased() { return "embedding_id \(embedded ?? "NULL"), expected \(id)" }
            }
            return nil
        default:
            return nil  // del, delete, set_payload: nothing left to look at
        }
    }

    func cleanRedis(_ redis: RedisConnection) async throws {
        var cursor = "0"
        repeat {
            let reply = try await redis.command("SCAN", cursor, "MATCH", namespace + ":*", "COUNT", "1000").array ?? []
            cursor = reply.first?.string ?? "0"
            let keys = reply.dropFirst().first?.array?.compactMap(\.string) ?? []
            if !keys.isEmpty { try await redis.command(RedisCommand(["DEL"] + keys)) }
        } while cursor != "0"
    }
}
