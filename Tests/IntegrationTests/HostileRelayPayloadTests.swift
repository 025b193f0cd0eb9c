import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

extension HostileInput {
    /// Hostile payloads through the relay: events enqueue accepts whose contents are hostile (SQL text
    /// in names and path tricks in collection names, numbers a double cannot carry and deep nesting,
    /// unicode of every kind, 10 MB payloads and ones beyond Qdrant's request limit) are delivered
    /// byte for byte or dead-lettered with the reason, and the relay stays up.
    ///
    /// Part of ``HostileInput``, which runs its suites' tests one at a time.
    @Suite struct HostileRelayPayloadTests {
        @Test func sqlTextInNamesIsStoredAndDeliveredAsData() async throws {
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
                let injection = "extractions; DROP TABLE extractions; --"
                let redisKey = TestEnvironment.uniqueName("sqli") + ":'; DROP TABLE outbox.events; --"
                let eventKey = "k'); DELETE FROM outbox.events; --"
                let row = UUID()
                let collection = TestEnvironment.uniqueName("sqli")
                let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
                #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
                try await db.transaction { tx in
                    try await tx.query("INSERT INTO extractions (id, source_id, content) VALUES ($1, 's', 'c')", [.uuid(row)])
                    // Accepted (the shape is right) and dead-lettered: source.table names no mapped table.
                    try await OutboxWriter.enqueue(.qdrantUpsert(
                        collection: collection, id: .uuid(row), vector: [1, 0, 0, 0], source: (injection, row.uuidString), key: eventKey), on: tx)
                    // A mapped table, but a row id that is SQL text: not a uuid, dead-lettered before sending.
                    try await OutboxWriter.enqueue(.qdrantUpsert(
                        collection: collection, id: .uuid(UUID()), vector: [1, 0, 0, 0], source: ("extractions", "1' OR '1'='1"),
                        key: eventKey), on: tx)
                    // Collection names that are path tricks.
                    for name in [".", "..", "../collections/\(collection)", "\(collection)/points"] {
                        try await OutboxWriter.enqueue(.qdrantUpsert(collection: name, id: .uuid(UUID()), vector: [1, 0, 0, 0], key: eventKey), on: tx)
                    }
                    try await OutboxWriter.enqueue(.redisSet(key: redisKey, value: "'; FLUSHALL; --", key: eventKey), on: tx)
                }
                // SQL text as destination or operation is refused, naming it.
                for (destination, operation, message) in [
                    ("redis'; DROP TABLE outbox.events; --", "set", "unknown destination"),
                    ("redis", "set; DROP TABLE outbox.events", "unknown operation"),
                ] {
                    let error = try await #require(throws: PostgresError.self) {
                        try await db.query("SELECT outbox.enqueue($1, $2, 'k', '{\"key\": \"k\", \"value\": \"v\"}')", [.text(destination), .text(operation)])
                    }
                    #expect(error.sqlState == "22023")
                    #expect(error.message.contains(message), "\(error.message)")
                }

                let relay = try DaemonProcess.relay(databaseURL: url)
                try await eventually("drain", timeout: .seconds(60)) {
                    try await db.count("outbox.events") == 0
                }
                let errors = try await db.query("SELECT error FROM outbox.dead_letters ORDER BY id").rows.map { try $0.decode("error", as: String.self) }
                #expect(errors.count == 6, "\(errors)")
                #expect(errors.first?.contains(#"source.table "extractions; DROP TABLE extractions; --" is not a table mapped in config"#) == true)
                #expect(errors.dropFirst().first?.contains(#"source.id "1' OR '1'='1" is not a valid uuid"#) == true)
                #expect(errors.dropFirst(2).allSatisfy { $0.hasPrefix("qdrant answered 4") }, "\(errors)")
                // Nothing was dropped or deleted; the redis key holds the text as written.
                #expect(try await db.count("extractions") == 1)
                let redis = try await TestEnvironment.redis()
                #expect(try await redis.command("GET", redisKey) == .bulk(Array("'; FLUSHALL; --".utf8)))
                // The path tricks reached no other collection: ours is empty, and no "points" collection appeared.
                let count = try await qdrant.call(.POST, "/collections/\(collection)/points/count", ["exact": true])
                #expect(count.json?["result"]?["count"] == 0)
                #expect(try await qdrant.call(.GET, "/collections/points/exists").json?["result"]?["exists"] != true)
                #expect(relay.process.isRunning)
                try await redis.command("DEL", redisKey)
                _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
            }
        }

        /// Numbers jsonb keeps exactly but a double cannot, a row id that would overflow Int64, and
        /// nesting beyond the parser's depth: accepted by enqueue, then dead-lettered with the reason —
        /// never rounded into another point id, never a crash — while neighbours on the same keys land.
        @Test func numbersAndNestingTheRelayCannotCarryAreDeadLetteredNotRoundedOrFatal() async throws {
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
                let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
                let collection = TestEnvironment.uniqueName("numbers")
                #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
                let deep = String(repeating: #"{"a":"#, count: 600) + "1" + String(repeating: "}", count: 600)
                let poison: [(String, String, String)] = [
                    ("id 2^53+1", #"{"collection": "\#(collection)", "id": 9007199254740993, "vector": [1, 0, 0, 0]}"#, "the integer 9007199254740993, beyond ±2^53"),
                    ("id 2^64-1", #"{"collection": "\#(collection)", "id": 18446744073709551615, "vector": [1, 0, 0, 0]}"#, "the integer 18446744073709551615"),
                    ("source.id 1e300", #"{"collection": "\#(collection)", "id": 7, "vector": [1, 0, 0, 0], "source": {"table": "extractions", "id": 1e300}}"#,
                     #""source.id" must be a string or an integer"#),
                    ("payload 1e400", #"{"collection": "\#(collection)", "id": 8, "vector": [1, 0, 0, 0], "payload": {"x": 1e400}}"#, "beyond the range of a double"),
                    ("deep payload", #"{"collection": "\#(collection)", "id": 9, "vector": [1, 0, 0, 0], "payload": \#(deep)}"#, "nested deeper than 512 levels"),
                    ("NFC/NFD keys", #"{"collection": "\#(collection)", "id": 10, "vector": [1, 0, 0, 0], "payload": {"\u00e9": 1, "e\u0301": 2}}"#,
                     "differ only in Unicode normalization"),
                ]
                var ids: [String: Int64] = [:]
                try await db.transaction { tx in
                    for (name, payload, _) in poison {
                        ids[name] = try await tx.query("SELECT outbox.enqueue('qdrant', 'upsert', $1, $2::jsonb) AS id", [.text(name), .jsonb(payload)])
                            .first!.decode("id")
                        // A good neighbour on the same key, after the poison.
                        try await OutboxWriter.enqueue(
                            .qdrantUpsert(collection: collection, id: .integer(UInt64(100 + ids.count)), vector: [0, 1, 0, 0], key: name), on: tx)
                    }
                }
                let relay = try DaemonProcess.relay(databaseURL: url)
                try await eventually("drain", timeout: .seconds(60)) {
                    try await db.count("outbox.events") == 0
                }
                #expect(relay.process.isRunning, "relay died: \(relay.log.suffix(3000))")
                #expect(await relay.get("/livez")?.status == 200)
                for (name, _, reason) in poison {
                    let error = try await db.query("SELECT error FROM outbox.dead_letters WHERE id = $1", [.int(ids[name]!)]).first?
                        .decode("error", as: String.self)
                    #expect(error?.contains(reason) == true, "\(name): \(String(describing: error))")
                }
                // The neighbours landed; 2^53+1 was not rounded into point 2^53.
                let points = try await qdrant.call(.POST, "/collections/\(collection)/points", [
                    "ids": .array((101...106).map { .number(Double($0)) } + [9_007_199_254_740_992, 7, 8, 9, 10]), "with_payload": false,
                ])
                let found = Set(points.json?["result"]?.arrayValue?.compactMap { $0["id"]?.numberValue } ?? [])
                #expect(found == Set((101...106).map(Double.init)), "\(found)")
                _ = try await qdrant.call(.DELETE, "/collections/\(collection)")

                // The Swift writer refuses a point id a JSON number would round, before anything is sent.
                await #expect(throws: JSONValue.InexactPayload.self) {
                    try await db.transaction { tx in
                        try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection, id: .integer(9_007_199_254_740_993), vector: [1]), on: tx)
                    }
                }
            }
        }

        @Test func unicodeRoundTripsToRedisAndQdrantByteForByte() async throws {
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
                let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
                let collection = TestEnvironment.uniqueName("unicode")
                #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
                let samples = [
                    "é", "e\u{301}", "Å", "A\u{30A}", "\u{212B}", "ß", "ﬁ", "İ", "日本語", "한국어", "עברית", "\u{202E}olleh", "\u{200B}",
                    "\u{FEFF}bom", "😀", "👩‍👩‍👧‍👦", "🇫🇷", "\u{10FFFF}", "\u{1}\u{1F}\u{7F}", "tab\there\nnewline\r", "\"quoted\" \\back\\",
                    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
                ]
                let name = TestEnvironment.uniqueName("unicode")
                let point = UUID()
                try await db.transaction { tx in
                    for (i, sample) in samples.enumerated() {
                        let key = "\(name):\(i):\(sample)"
                        try await OutboxWriter.enqueue(.redisSet(key: key, value: sample, key: sample), on: tx)
                    }
                    // NFC and NFD spellings as separate field names are fine as *values*; see below for keys.
                    try await OutboxWriter.enqueue(.redisXAdd(
                        stream: "\(name):stream:é", fields: Dictionary(uniqueKeysWithValues: samples.enumerated().map { ("f\($0.offset)", $0.element) }),
                        key: name), on: tx)
                    try await OutboxWriter.enqueue(.qdrantUpsert(
                        collection: collection, id: .uuid(point), vector: [1, 0, 0, 0],
                        payload: Dictionary(uniqueKeysWithValues: samples.enumerated().map { ("k\($0.offset)\($0.element)", .string($0.element)) }),
                        key: name), on: tx)
                }
                // Two field names that are the same text in NFC and NFD: jsonb keeps both, a Swift
                // dictionary would keep one. Dead-lettered with the reason instead of losing a field.
                let bothForms = try await db.query(
                    "SELECT outbox.enqueue('redis', 'xadd', $1, $2::jsonb) AS id",
                    [.text(name + "-nf"), .jsonb(#"{"stream": "\#(name):nf", "fields": {"\u00e9": "nfc", "e\u0301": "nfd"}}"#)]
                ).first!.decode("id", as: Int64.self)

                let relay = try DaemonProcess.relay(databaseURL: url)
                try await eventually("drain", timeout: .seconds(60)) {
                    try await db.count("outbox.events") == 0
                }
                let dead = try await db.query("SELECT id, error FROM outbox.dead_letters").rows
                #expect(dead.count == 1, "\(dead)")
                #expect(try dead.first?.decode("id", as: Int64.self) == bothForms)
                #expect(try dead.first?.decode("error", as: String.self).contains("differ only in Unicode normalization") == true)

                let redis = try await TestEnvironment.redis()
                for (i, sample) in samples.enumerated() {
                    let value = try await redis.command("GET", "\(name):\(i):\(sample)")
                    #expect(value == .bulk(Array(sample.utf8)), "sample \(i) \(Array(sample.unicodeScalars)) came back as \(value)")
                }
                let fields = try await redis.command("XRANGE", "\(name):stream:é", "-", "+").array?.first?.array?[1].array ?? []
                var map: [String: [UInt8]] = [:]
                for pair in stride(from: 0, to: fields.count - 1, by: 2) {
                    if case .bulk(let k) = fields[pair], case .bulk(let v) = fields[pair + 1] { map[String(decoding: k, as: UTF8.self)] = v }
                }
                for (i, sample) in samples.enumerated() { #expect(map["f\(i)"] == Array(sample.utf8), "stream field f\(i)") }
                let stored = try await qdrant.call(.POST, "/collections/\(collection)/points", [
                    "ids": [.string(point.uuidString.lowercased())], "with_payload": true,
                ])
                let payload = stored.json?["result"]?.arrayValue?.first?["payload"]
                for (i, sample) in samples.enumerated() {
                    #expect(payload?["k\(i)\(sample)"]?.stringValue.map { Array($0.utf8) } == Array(sample.utf8), "qdrant payload k\(i)")
                }
                #expect(relay.process.isRunning)
                let keys = samples.enumerated().map { "\(name):\($0.offset):\($0.element)" }
                try await redis.command(RedisCommand(["DEL", "\(name):stream:é"] + keys))
                _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
            }
        }

        // MARK: The heavy one, last

        @Test func tenMegabytePayloadsAreDeliveredIntactAndOversizedOnesDeadLettered() async throws {
            try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
                let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
                let collection = TestEnvironment.uniqueName("big")
                let name = TestEnvironment.uniqueName("big")
                #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
                // 10 MB of mixed 1- to 4-byte characters and JSON escapes: a random block, repeated
                // (built, enqueued and compared without long CPU work on the cooperative pool).
                var rng = SplitMix64(seed: 10)
                let alphabet = ["a", "é", "日", "😀", "\"", "\\", "\n", " "]
                let block = (0..<16_384).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] }.joined()
                let big = String(repeating: block, count: 10_000_000 / block.utf8.count + 1)
                let bigBytes = await offPool { Array(big.utf8) }
                let point = UUID().uuidString.lowercased()
                let row = UUID()
                // As a writer in any language would: the payload built by Postgres from bound text.
                try await db.transaction { tx in
                    try await tx.query("INSERT INTO extractions (id, source_id, content) VALUES ($1, 's', $2)", [.uuid(row), .text(big)])
                    try await tx.query(
                        "SELECT outbox.enqueue('redis', 'set', $1, jsonb_build_object('key', $2::text, 'value', $3::text))",
                        [.text(name), .text(name + ":set"), .text(big)])
                    try await tx.query(
                        "SELECT outbox.enqueue('redis', 'xadd', $1, jsonb_build_object('stream', $2::text, 'fields', jsonb_build_object('big', $3::text)))",
                        [.text(name), .text(name + ":stream"), .text(big)])
                    try await tx.query(
                        """
                        SELECT outbox.enqueue('qdrant', 'upsert', $1, jsonb_build_object(
                          'collection', $2::text, 'id', $4::text, 'vector', '[1, 0, 0, 0]'::jsonb, 'payload', jsonb_build_object('big', $3::text)))
                        """, [.text(name), .text(collection), .text(big), .text(point)])
                    // 10 MB of text to embed, and the row's embedding written back.
                    try await tx.query(
                        """
                        SELECT outbox.enqueue('qdrant', 'upsert', $1, jsonb_build_object(
                          'collection', $2::text, 'id', $4::text, 'text', $3::text, 'source', jsonb_build_object('table', 'extractions', 'id', $4::text)))
                        """, [.text(name + "-t"), .text(collection), .text(big), .text(row.uuidString.lowercased())])
                    // Beyond Qdrant's 32 MiB request limit: dead-lettered, naming its size and the limit, without being sent.
                    try await tx.query(
                        """
                        SELECT outbox.enqueue('qdrant', 'upsert', $1, jsonb_build_object(
                          'collection', $2::text, 'id', $4::text, 'vector', '[1, 0, 0, 0]'::jsonb, 'payload', jsonb_build_object('big', repeat($3::text, 4))))
                        """, [.text(name + "-huge"), .text(collection), .text(big), .text(UUID().uuidString)])
                }
                let config = try TestEnvironment.configWithoutCollections()
                defer { try? FileManager.default.removeItem(atPath: config) }
                let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_EMBEDDING_DIMENSIONS": "4"], config: config)
                try await eventually("drain", timeout: .seconds(120)) {
                    try await db.count("outbox.events") == 0
                }
                #expect(relay.process.isRunning, "relay died: \(relay.log.suffix(3000))")
                let dead = try await db.query("SELECT key, error FROM outbox.dead_letters").rows
                #expect(dead.count == 1)
                #expect(try dead.first?.decode("key", as: String.self) == name + "-huge")
                #expect(try dead.first?.decode("error", as: String.self).contains("over Qdrant's request limit of 33554432 bytes") == true, "\(dead)")

                let redis = try await TestEnvironment.redis()
                #expect(try await redis.command("GET", name + ":set") == .bulk(bigBytes), "10 MB value changed on the way")
                let entry = try await redis.command("XRANGE", name + ":stream", "-", "+").array?.first?.array?[1].array ?? []
                #expect(entry.count == 4 && entry[1] == .bulk(bigBytes), "10 MB stream field changed on the way")
                let stored = try await qdrant.http.perform(HTTPRequest(
                    method: .POST, url: qdrant.baseURL + "/collections/\(collection)/points",
                    headers: [("api-key", qdrant.apiKey), ("Content-Type", "application/json")],
                    body: Array(#"{"ids": ["\#(point)"], "with_payload": true}"#.utf8), timeout: .seconds(60)))
                let storedBig = await offPool {
                    (try? JSONValue.parse(stored.bodyText))?["result"]?.arrayValue?.first?["payload"]?["big"]?.stringValue.map { Array($0.utf8) }
                }
                #expect(storedBig == bigBytes, "10 MB Qdrant payload changed on the way")
                #expect(try await db.query("SELECT embedding_id FROM extractions WHERE id = $1", [.uuid(row)]).first?
                    .decode("embedding_id", as: UUID?.self) == row)
                try await redis.command("DEL", name + ":set", name + ":stream")
                _ = try await qdrant.call(.DELETE, "/collections/\(collection)")

                // A key beyond what a btree index row can hold: Postgres' own error, nothing written.
                let longKey = (0..<2000).map { _ in String(UInt64.random(in: 0...UInt64.max, using: &rng), radix: 36) }.joined()
                let error = try await #require(throws: PostgresError.self) {
                    try await db.transaction { tx in
                        try await tx.query("INSERT INTO extractions (id, source_id, content) VALUES ($1, 's', 'c')", [.uuid(UUID())])
                        try await OutboxWriter.enqueue(.redisSet(key: "k", value: "v", key: longKey), on: tx)
                    }
                }
                #expect(error.sqlState == "54000", "\(error)")
                #expect(error.message.contains("index row"), "\(error.message)")
                #expect(try await db.count("extractions") == 1)
            }
        }
    }
}

/// Runs CPU-heavy test work (copying or parsing megabytes) on a Dispatch thread, so that it does
/// not hold a cooperative-pool thread that other tests in this process are timing.
func offPool<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    // A serial queue of its own runs on an overcommitting thread. `DispatchQueue.global()` does not
    // do: on Linux its threads are the ones Swift's global executor runs tasks on, so this work
    // stalled the pool (HTTPDriverTests' ticker saw gaps of 1 s while a 10 MB payload was parsed).
    await withCheckedContinuation { continuation in
        DispatchQueue(label: "tests.off-pool").async { continuation.resume(returning: work()) }
    }
}
