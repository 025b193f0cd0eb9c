import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport
@testable import Reconciler
@testable import OutboxRelay

/// Hostile input (issue 6): random and malformed events, NUL bytes, huge payloads, unicode, SQL
/// text in names; bad config files and unreachable hosts; abusive HTTP clients; secrets. Each test
/// asserts what a user sees: SQLSTATEs and messages, rows, dead letters, Redis bytes, Qdrant points,
/// exit codes and stderr, HTTP statuses, log lines.
///
/// Serialized: each test starts relays (and a 10 MB or fuzz workload); run all at once on a 2-core
/// machine they starve the other suites' timing checks (HTTPDriverTests' 100 ms pool-stall bound).
@Suite(.serialized) struct HostileInputTests {
    // MARK: Specific hostile events

    // Light, SQL-only tests first (the suite is serialized; see above).
    @Test func wrongArgumentTypesAndNullsGetAClearErrorAndWriteNothing() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { _, db in
            let cases: [(String, String, String)] = [
                ("SELECT outbox.enqueue(1, 2, 3, 4)", "42883", "function outbox.enqueue(integer, integer, integer, integer) does not exist"),
                ("SELECT outbox.enqueue('redis', 'set', 'k', 'not json')", "22P02", "invalid input syntax for type json"),
                ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": \"k\", \"value\": \"v\"}', '[]')", "22023", "headers must be a JSON object, got array"),
                ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": \"k\", \"value\": \"v\"}', NULL)", "22023", "headers must be a JSON object, got NULL"),
                ("SELECT outbox.enqueue(NULL, 'set', 'k', '{}')", "22023", "unknown destination"),
                ("SELECT outbox.enqueue('redis', NULL, 'k', '{}')", "22023", "unknown operation"),
                ("SELECT outbox.enqueue('redis', 'set', NULL, '{\"key\": \"k\", \"value\": \"v\"}')", "22023", "key must be a non-empty string"),
                ("SELECT outbox.enqueue('redis', 'set', 'k', NULL)", "22023", "payload must be a JSON object, got NULL"),
                ("SELECT outbox.enqueue('redis', 'set', 'k', 'null')", "22023", "payload must be a JSON object, got null"),
                ("SELECT outbox.enqueue('redis', 'set', 'k', '\"text\"')", "22023", "payload must be a JSON object, got string"),
                ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": [\"k\"], \"value\": \"v\"}')", "22023", #"field "key" must be a string, got array"#),
                ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": \"k\", \"value\": 5}')", "22023", #"field "value" must be a string, got number"#),
                ("SELECT outbox.enqueue('redis', 'set', 'k', '{\"key\": \"k\", \"value\": \"v\", \"ttl_seconds\": 1.5}')", "22023", #""ttl_seconds" must be a positive integer"#),
                ("SELECT outbox.enqueue('qdrant', 'upsert', 'k', '{\"collection\": \"c\", \"id\": -1, \"vector\": [1]}')", "22023", #"field "id" is -1"#),
                ("SELECT outbox.enqueue('qdrant', 'upsert', 'k', '{\"collection\": \"c\", \"id\": 1, \"vector\": [1, \"2\"]}')", "22023", #""vector" must hold numbers only"#),
                ("SELECT outbox.enqueue('qdrant', 'delete', 'k', '{\"collection\": \"c\", \"ids\": []}')", "22023", #""ids" must not be empty"#),
                ("SELECT outbox.enqueue('qdrant', 'set_payload', 'k', '{\"collection\": \"c\", \"ids\": [1], \"payload\": []}')", "22023", #"field "payload" must be an object, got array"#),
                ("SELECT outbox.enqueue('redis', 'xadd', 'k', '{\"stream\": \"s\", \"fields\": {\"outbox_id\": \"1\"}}')", "22023", #"must not contain "outbox_id""#),
            ]
            for (sql, state, message) in cases {
                let row = UUID()
                let error = try await #require(throws: PostgresError.self, "\(sql)") {
                    try await db.transaction { tx in
                        try await tx.query("INSERT INTO extractions (id, source_id, content) VALUES ($1, 's', 'c')", [.uuid(row)])
                        try await tx.query(sql)
                    }
                }
                #expect(error.sqlState == state, "\(sql): \(error)")
                #expect(error.message.contains(message), "\(sql): \(error.message)")
                #expect(try await db.count("extractions WHERE id = $1", [.uuid(row)]) == 0)
            }
            #expect(try await db.count("outbox.events") == 0)
        }
    }

    @Test func nulBytesAreRefusedWithAClearErrorAndWriteNothing() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { _, db in
            let marker = TestEnvironment.uniqueName("nul")
            let cases: [(String, [PostgresValue], String, String)] = [
                // \u0000 inside jsonb: Postgres' own error.
                ("payload \\u0000", [.text("redis"), .text("set"), .text(marker), .jsonb(#"{"key": "k", "value": "a\u0000b"}"#)],
                 "22P05", "unsupported Unicode escape sequence"),
                // NUL in a text argument: libpq would cut the value at the NUL and store "\(marker)" alone.
                ("key NUL", [.text("redis"), .text("set"), .text(marker + "\u{0}tail"), .jsonb(#"{"key": "k", "value": "v"}"#)],
                 "22021", "parameter $3 contains a NUL byte"),
                ("destination NUL", [.text("redis\u{0}x"), .text("set"), .text(marker), .jsonb(#"{"key": "k", "value": "v"}"#)],
                 "22021", "parameter $1 contains a NUL byte"),
                ("raw NUL in JSON text", [.text("redis"), .text("set"), .text(marker), .jsonb("{\"key\": \"k\", \"value\": \"v\"}\u{0}junk")],
                 "22021", "parameter $4 contains a NUL byte"),
            ]
            for (name, parameters, state, message) in cases {
                let row = UUID()
                let error = try await #require(throws: PostgresError.self, "\(name)") {
                    try await db.transaction { tx in
                        try await tx.query("INSERT INTO extractions (id, source_id, content) VALUES ($1, 's', 'c')", [.uuid(row)])
                        try await tx.query("SELECT outbox.enqueue($1, $2, $3, $4::jsonb)", parameters)
                    }
                }
                #expect(error.sqlState == state, "\(name): \(error)")
                #expect(error.message.contains(message), "\(name): \(error.message)")
                #expect(try await db.count("extractions WHERE id = $1", [.uuid(row)]) == 0)
            }
            // The Swift writer: a NUL in a Redis value becomes \u0000 in JSON, which jsonb refuses.
            let error = try await #require(throws: PostgresError.self) {
                try await db.transaction { tx in
                    try await OutboxWriter.enqueue(.redisSet(key: "k", value: "a\u{0}b", key: marker), on: tx)
                }
            }
            #expect(error.sqlState == "22P05")
            #expect(try await db.count("outbox.events WHERE key LIKE $1", [.text(marker + "%")]) == 0, "an event was written with a shortened key")
        }
    }

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

    // MARK: Configuration

    /// A config file with one mistake, run through every command: exit 2, and stderr is exactly one
    /// line naming the key.
    @Test func badConfigFilesExit2WithOneLineNamingTheKeyFromEveryCommand() async throws {
        let base = try String(contentsOf: TestEnvironment.repositoryRoot.appendingPathComponent("config/outbox.yaml"), encoding: .utf8)
        let cases: [(String, String)] = [
            (base.replacingOccurrences(of: "  batch_size: 500", with: "  batch_sise: 500"),
             "config: relay.batch_sise: unknown key; did you mean relay.batch_size?"),
            (base + "\nkafka:\n  brokers: localhost:9092\n",
             "config: kafka: unknown key (known here: embedding, postgres, qdrant, reconciler, redis, relay, schema, tables)"),
            (base.replacingOccurrences(of: "    text_column: content", with: "    text_colum: content"),
             "config: tables.extractions.text_colum: unknown key; did you mean tables.extractions.text_column?"),
            (base.replacingOccurrences(of: "{size: 384, distance: Cosine}", with: "{size: 384, distance: Cosine, on_disk: true}"),
             "config: qdrant.collections.extractions.on_disk: unknown key (known here: distance, size)"),
            (base.replacingOccurrences(of: "  max_attempts: 25", with: "  max_attempts: [25]"),
             "config: relay.max_attempts: expected a single value, got a list"),
            (base.replacingOccurrences(of: "  max_attempts: 25", with: "  max_attempts: plenty"),
             #"config: relay.max_attempts: expected an integer, got "plenty""#),
            (base.replacingOccurrences(of: "  poll_interval: 5s", with: "  poll_interval: -5s"),
             #"config: relay.poll_interval: must be positive, got "-5s""#),
            (base.replacingOccurrences(of: "  connect_timeout: 5s\n\nredis", with: "  connect_timeout: 1e300s\n\nredis"),
             #"config: postgres.connect_timeout: must be at most 36500d, got "1e300s""#),
        ]
        let relay = try TestEnvironment.executable("outbox-relay")
        let reconciler = try TestEnvironment.executable("outbox-reconciler")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for (i, (yaml, line)) in cases.enumerated() {
            #expect(yaml != base, "case \(i) changed nothing in the shipped config")
            let path = dir.appendingPathComponent("case\(i).yaml").path
            // Relative paths (secrets, schema) resolve against the config's folder: keep them working.
            try yaml.replacingOccurrences(of: "../", with: TestEnvironment.repositoryRoot.path + "/").write(toFile: path, atomically: true, encoding: .utf8)
            for (binary, arguments) in [
                (relay, ["check"]), (relay, ["migrate"]), (relay, ["status"]), (relay, ["serve"]), (relay, ["dead-letters", "list"]),
                (reconciler, ["reconcile", "--dry-run"]), (reconciler, ["serve"]),
            ] {
                let result = try await runProcess(binary, arguments + ["--config", path])
                #expect(result.status == 2, "\(binary.lastPathComponent) \(arguments): \(result.stderr)")
                #expect(result.stderr == line + "\n", "\(binary.lastPathComponent) \(arguments)")
            }
        }
        // Environment overrides go through the same checks.
        let fromEnvironment = try await runProcess(
            relay, ["serve", "--config", "config/outbox.yaml"], environment: ["OUTBOX_RELAY_SHUTDOWN_GRACE": "-1s"])
        #expect(fromEnvironment.status == 2)
        #expect(fromEnvironment.stderr == "config: relay.shutdown_grace: must be positive, got \"-1s\"\n")
    }

    /// Unreachable and unresolvable hosts: one-shot commands exit 2 with one line naming the key,
    /// without the password; `serve` keeps running, /livez 200, /readyz 503 naming the store.
    @Test func unreachableHostsExit2NamingTheKeyOrKeepServeWaiting() async throws {
        let relay = try TestEnvironment.executable("outbox-relay")
        let reconciler = try TestEnvironment.executable("outbox-reconciler")
        let password = "pw-\(UUID().uuidString.prefix(12))"
        let hosts = [
            ("unresolvable", "postgresql://outbox:\(password)@no-such-host.invalid:5432/outbox", "could not translate host name"),
            ("refused", "postgresql://outbox:\(password)@127.0.0.1:1/outbox", "Connection refused"),
        ]
        for (what, url, reason) in hosts {
            for (binary, arguments) in [(relay, ["migrate"]), (relay, ["status"]), (relay, ["dead-letters", "list"]), (reconciler, ["reconcile"])] {
                let result = try await runProcess(binary, arguments + ["--config", "config/outbox.yaml"], environment: ["OUTBOX_POSTGRES_URL": url])
                let name = "\(binary.lastPathComponent) \(arguments.joined(separator: " ")) (\(what))"
                #expect(result.status == 2, "\(name): \(result.stderr)")
                #expect(result.stderr.hasPrefix("postgres.url: cannot reach Postgres at postgresql://outbox:***@"), "\(name): \(result.stderr)")
                #expect(result.stderr.contains(reason), "\(name): \(result.stderr)")
                #expect(result.stderr.filter { $0 == "\n" }.count == 1, "\(name): not one line: \(result.stderr)")
                #expect(!result.stderr.contains(password) && !result.stdout.contains(password), "\(name) printed the password")
            }
            let check = try await runProcess(relay, ["check", "--config", "config/outbox.yaml"], environment: ["OUTBOX_POSTGRES_URL": url])
            #expect(check.status == 2)
            let failing = check.stdout.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
            #expect(failing.count == 1 && failing[0].contains("postgres.url: ") && failing[0].contains(reason), "\(check.stdout)")
            #expect(!check.stdout.contains(password))
        }
        let qdrantDown = try await runProcess(
            reconciler, ["reconcile", "--dry-run", "--config", "config/outbox.yaml"],
            environment: ["OUTBOX_QDRANT_URL": "http://no-such-host.invalid:6333"])
        #expect(qdrantDown.status == 2)
        #expect(qdrantDown.stderr.hasPrefix("qdrant.url: cannot reach Qdrant at http://no-such-host.invalid:6333: "), "\(qdrantDown.stderr)")
        #expect(qdrantDown.stderr.filter { $0 == "\n" }.count == 1)
        let redisDown = try await runProcess(
            relay, ["check", "--config", "config/outbox.yaml"], environment: ["OUTBOX_REDIS_URL": "redis://:\(password)@no-such-host.invalid:6379/0"])
        #expect(redisDown.status == 2)
        #expect(redisDown.stdout.contains("FAIL redis") && redisDown.stdout.contains("redis.url: "), "\(redisDown.stdout)")
        #expect(!redisDown.stdout.contains(password))

        // serve: a server that is down (or a name that does not resolve yet) is waited for.
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            let noPostgres = try DaemonProcess.relay(databaseURL: hosts[0].1)
            let noRedis = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_REDIS_URL": "redis://:\(password)@127.0.0.1:1/0"])
            for (process, reason) in [(noPostgres, "postgres unreachable: "), (noRedis, "redis unreachable: ")] {
                var body = ""
                try await eventually("/readyz 503 with \(reason) (last: \(body))", timeout: .seconds(20)) {
                    guard let r = await process.get("/readyz") else { return false }
                    body = r.body
                    return r.status == 503 && r.body.contains(reason)
                }
                #expect(!body.contains(password))
                #expect(await process.get("/livez")?.status == 200)
            }
            try await Task.sleep(for: .seconds(3))
            #expect(noPostgres.process.isRunning && noRedis.process.isRunning, "serve exited instead of waiting")
            #expect(!noPostgres.log.contains(password) && !noRedis.log.contains(password), "serve logged the password")
        }
    }

    // MARK: Health server

    @Test func healthServerAnswersUnknownPathsMethodsAndOversizedHeadersCorrectly() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            let relay = try DaemonProcess.relay(databaseURL: url)
            try await relay.waitUntilReady()
            let port = relay.port
            for path in ["/", "/nope", "/livez/extra", "/LIVEZ", "/%00", "/status/../../etc/passwd", "/" + String(repeating: "a", count: 4000)] {
                let r = try await RawHTTP.exchange(port: port, "GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(r.status == 404, "GET \(path.prefix(60)): \(r.head)")
            }
            for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
                for path in HealthServer.paths {
                    let r = try await RawHTTP.exchange(port: port, "\(method) \(path) HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                    #expect(r.status == 405, "\(method) \(path): \(r.head)")
                    #expect(r.header("allow") == "GET, HEAD", "\(method) \(path): \(r.head)")
                }
            }
            let head = try await RawHTTP.exchange(port: port, "HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n", expectBody: false)
            #expect(head.status == 200)
            #expect(head.header("content-length") == "3")
            #expect(head.body.isEmpty, "HEAD answered with a body")
            // A method the parser does not know: refused, the connection closed.
            let brew = try await RawHTTP.exchange(port: port, "BREW /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(brew.status == 400 || brew.status == 405, "\(brew.head)")
            // Headers beyond 16 KiB (one huge one, or many): refused before they cost memory.
            for request in [
                "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "b", count: 64 * 1024))\r\n\r\n",
                "GET /livez HTTP/1.1\r\nHost: x\r\n" + (0..<2000).map { "X-H\($0): v\r\n" }.joined() + "\r\n",
            ] {
                let r = try await RawHTTP.exchange(port: port, request)
                #expect(r.status == 400 || r.status == 431, "\(r.head)")
                #expect(r.closed, "the server kept a connection that sent oversized headers")
            }
            // Garbage instead of HTTP.
            let garbage = try await RawHTTP.exchange(port: port, "\u{16}\u{3}\u{1}\u{0}\u{a5}\u{1}\u{0}\u{0}\r\n\r\n")
            #expect(garbage.status == 400 && garbage.closed, "\(garbage.head)")
            // After all that, the server still answers normally.
            #expect(await relay.get("/livez")?.status == 200)
            #expect(await relay.get("/readyz")?.status == 200)
        }
    }

    /// Slowloris (headers a byte at a time) and hundreds of idle connections: /livez keeps
    /// answering fast from another connection, the relay keeps delivering, and the server closes
    /// the abusers after its idle timeout instead of holding them (and their descriptors) forever.
    @Test func slowAndIdleClientsLeaveTheDaemonUnaffected() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let relay = try DaemonProcess.relay(databaseURL: url)
            try await relay.waitUntilReady()
            let started = ContinuousClock.now
            var idle: [RawSocket] = []
            for _ in 0..<300 { idle.append(try await RawSocket(port: relay.port)) }
            let slow = try await withThrowingTaskGroup(of: RawSocket.self) { group in
                for _ in 0..<20 { group.addTask { try await RawSocket(port: relay.port) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let trickle = Task {
                // One byte every 200 ms of a request that never ends.
                let bytes = Array("GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ".utf8) + Array(repeating: UInt8(ascii: "z"), count: 200)
                var closedAfter: [Duration?] = Array(repeating: nil, count: slow.count)
                for byte in bytes {
                    for (i, socket) in slow.enumerated() where closedAfter[i] == nil {
                        if !socket.sendNow([byte]) || socket.isClosedByPeer() { closedAfter[i] = ContinuousClock.now - started }
                    }
                    if closedAfter.allSatisfy({ $0 != nil }) { break }
                    try await Task.sleep(for: .milliseconds(200))
                }
                return closedAfter
            }

            // Meanwhile: /livez stays fast and events keep flowing.
            let stream = "stream:" + TestEnvironment.uniqueName("abuse")
            try await db.transaction { tx in
                for n in 0..<200 { try await OutboxWriter.enqueue(.redisXAdd(stream: stream, fields: ["n": String(n)], key: "k\(n % 10)"), on: tx) }
            }
            var slowest: Duration = .zero
            for _ in 0..<30 {
                let t = ContinuousClock.now
                #expect(await relay.get("/livez")?.status == 200)
                slowest = max(slowest, ContinuousClock.now - t)
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(slowest < .milliseconds(500), "/livez took \(slowest) while abusers were connected")
            try await eventually("delivery during the abuse", timeout: .seconds(20)) {
                try await db.count("outbox.events") == 0
            }
            let redis = try await TestEnvironment.redis()
            #expect(try await redis.command("XLEN", stream) == .integer(200))

            // The abusers are cut off by the idle timeout (10 s), not kept for ever.
            let closedAfter = try await trickle.value
            #expect(closedAfter.allSatisfy { $0 != nil && $0! < .seconds(20) }, "slow clients still connected: \(closedAfter)")
            try await eventually("idle connections closed by the server", timeout: .seconds(20)) {
                idle.allSatisfy { $0.isClosedByPeer() }
            }
            #expect(await relay.get("/livez")?.status == 200)
            #expect(relay.process.isRunning)
            try await redis.command("DEL", stream)
        }
    }

    // MARK: Secrets

    /// The database password, the Qdrant api-key and the Redis password appear in no log line of
    /// the daemons at debug level (while delivering, failing, and failing to connect), no /status,
    /// /readyz or /metrics body, no stored error, no one-shot error and no --help output.
    @Test func secretsAppearInNoLogLineErrorStatusBodyOrHelp() async throws {
        let secrets = try Self.secrets()
        #expect(secrets.count == 3, "the test services must have all three secrets set")
        var outputs: [(String, String)] = []
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let collection = TestEnvironment.uniqueName("secrets")
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
            let redis = try await TestEnvironment.redis()
            let wrongType = TestEnvironment.uniqueName("secrets")
            try await redis.command("SET", wrongType, "not a stream")
            try await db.transaction { tx in
                try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection, id: .uuid(UUID()), vector: [1, 0, 0, 0]), on: tx)
                try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection, id: .uuid(UUID()), vector: [1, 0]), on: tx)  // 400
                try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection + "-missing", id: .uuid(UUID()), vector: [1]), on: tx)  // 404
                try await OutboxWriter.enqueue(.redisXAdd(stream: wrongType, fields: ["a": "b"], key: "w"), on: tx)  // WRONGTYPE
                try await OutboxWriter.enqueue(.redisSet(key: wrongType + ":ok", value: "v", key: "s"), on: tx)
            }
            let debug = ["OUTBOX_LOG_LEVEL": "debug"]
            // Healthy relay (secrets from the URLs and the *_file keys of the shipped config).
            let healthy = try DaemonProcess.relay(databaseURL: url, environment: debug)
            try await eventually("drain", timeout: .seconds(60)) {
                try await db.count("outbox.events") == 0
            }
            // Relays that cannot connect: wrong Qdrant key, Redis and Postgres unreachable, the
            // secrets passed through OUTBOX_*_PASSWORD / OUTBOX_QDRANT_API_KEY this time.
            var bare = try #require(URLParts(url))
            bare.password = nil
            let failing = try DaemonProcess.relay(databaseURL: "postgresql://\(bare.user ?? "")@\(bare.host):\(bare.port ?? 5432)\(bare.path)", environment: debug.merging([
                "OUTBOX_POSTGRES_PASSWORD": secrets[0], "OUTBOX_REDIS_URL": "redis://127.0.0.1:1/0", "OUTBOX_REDIS_PASSWORD": secrets[1],
                "OUTBOX_QDRANT_API_KEY": secrets[2] + "-wrong",
            ]) { $1 })
            try await db.query("SELECT outbox.enqueue('qdrant', 'upsert', 'x', $1::jsonb)", [
                .jsonb(#"{"collection": "\#(collection)", "id": 1, "vector": [1, 0, 0, 0]}"#)])
            let unreachable = try DaemonProcess.relay(
                databaseURL: "postgresql://outbox:\(secrets[0])@127.0.0.1:1/outbox", environment: debug.merging(["OUTBOX_RELAY_POLL_INTERVAL": "1s"]) { $1 })
            try await eventually("the failing relays report their failures", timeout: .seconds(30)) {
                let a = await failing.get("/readyz")?.body ?? "", b = await unreachable.get("/readyz")?.body ?? ""
                return a.contains("redis unreachable") && b.contains("postgres unreachable")
            }
            try await eventually("the wrong api key is refused", timeout: .seconds(30)) {
                if failing.log.contains("401") { return true }
                return (await failing.get("/status")?.body ?? "").contains("401")
            }
            let reconciler = try DaemonProcess.reconciler(databaseURL: url, environment: debug)
            try await Task.sleep(for: .seconds(3))
            for (name, process) in [("healthy", healthy), ("failing", failing), ("unreachable", unreachable)] {
                for path in ["/status", "/readyz", "/metrics", "/livez"] {
                    outputs.append(("\(name) relay \(path)", await process.get(path)?.body ?? ""))
                }
            }
            for path in ["/status", "/readyz", "/metrics"] {
                outputs.append(("reconciler \(path)", await reconciler.get(path)?.body ?? ""))
            }
            reconciler.signal(SIGKILL)
            for (name, process) in [("healthy", healthy), ("failing", failing), ("unreachable", unreachable)] {
                process.signal(SIGKILL)
                _ = await process.waitForExit(timeout: .seconds(5))
                outputs.append(("\(name) relay log", process.log))
                #expect(process.log.contains("debug"), "\(name) relay did not log at debug level")
            }
            outputs.append(("reconciler log", reconciler.log))
            let stored = try await db.query(
                "SELECT coalesce(string_agg(error, E'\\n'), '') AS e FROM outbox.dead_letters").first!.decode("e", as: String.self)
            let lastErrors = try await db.query(
                "SELECT coalesce(string_agg(last_error, E'\\n'), '') AS e FROM outbox.events").first!.decode("e", as: String.self)
            #expect(stored.contains("WRONGTYPE"), "the run produced no dead letters to look at: \(stored)")
            outputs.append(("dead letter errors", stored))
            outputs.append(("pending last_error", lastErrors))
            try await redis.command("DEL", wrongType, wrongType + ":ok")
            _ = try await qdrant.call(.DELETE, "/collections/\(collection)")
        }
        // One-shot commands failing to connect with the secrets in play.
        for (binary, arguments, env) in [
            ("outbox-relay", ["status"], ["OUTBOX_POSTGRES_URL": "postgresql://outbox:\(secrets[0])@127.0.0.1:1/outbox"]),
            ("outbox-relay", ["migrate"], ["OUTBOX_POSTGRES_PASSWORD": secrets[0] + "x"]),
            ("outbox-relay", ["check"], ["OUTBOX_REDIS_URL": "redis://:\(secrets[1])@127.0.0.1:1/0", "OUTBOX_QDRANT_URL": "http://127.0.0.1:1"]),
            ("outbox-reconciler", ["reconcile", "--dry-run"], ["OUTBOX_QDRANT_URL": "http://127.0.0.1:1"]),
            ("outbox-reconciler", ["check"], ["OUTBOX_QDRANT_API_KEY": secrets[2] + "-wrong"]),
        ] {
            let r = try await runProcess(try TestEnvironment.executable(binary), arguments + ["--config", "config/outbox.yaml"], environment: env)
            outputs.append(("\(binary) \(arguments.joined(separator: " "))", r.stdout + r.stderr))
        }
        // --help of every command.
        for (binary, commands) in [
            ("outbox-relay", [[], ["serve"], ["migrate"], ["status"], ["check"], ["dead-letters"], ["dead-letters", "list"],
                              ["dead-letters", "requeue"], ["dead-letters", "purge"]]),
            ("outbox-reconciler", [[], ["serve"], ["reconcile"], ["check"]]),
            ("outbox-demo", [[]]),
        ] {
            for command in commands {
                let r = try await runProcess(try TestEnvironment.executable(binary), command + ["--help"])
                #expect(r.status == 0, "\(binary) \(command) --help")
                #expect(r.stdout.contains("--config") || command == ["dead-letters"] || binary == "outbox-demo" || command.isEmpty, "\(binary) \(command)")
                outputs.append(("\(binary) \(command.joined(separator: " ")) --help", r.stdout + r.stderr))
            }
        }
        #expect(outputs.count >= 40)
        for (name, text) in outputs {
            #expect(!text.isEmpty || name.contains("last_error"), "\(name) produced no output to check")
            for (index, secret) in secrets.enumerated() {
                #expect(!text.contains(secret), "\(name) shows secret #\(index): \(Self.context(of: secret, in: text))")
            }
        }
    }

    // MARK: The heavy ones, last

    /// A few hundred seeded cases: a valid payload of every destination.operation in the contract
    /// table, mutated 0-3 times (fields dropped, retyped, added; hostile strings and numbers; deep
    /// nesting; SQL text as source.table), sometimes with a hostile key, destination or operation.
    /// Each is enqueued in a transaction next to a domain row. Rejected ones must fail with a clear
    /// error and leave neither row nor event; accepted ones must, once the relay has run, be
    /// delivered intact or dead-lettered with a reason — and the relay must stay up.
    @Test func randomAndMutatedEventsAreRejectedClearlyOrDeliveredIntactOrDeadLettered() async throws {
        // Fixed, so CI is reproducible; OUTBOX_FUZZ_SEED=N explores (and replays) other runs.
        let seed = ProcessInfo.processInfo.environment["OUTBOX_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x6_0B0C_5EED
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            let fuzz = EventFuzzer(namespace: TestEnvironment.uniqueName("fuzz"))
            #expect(try await qdrant.call(.PUT, "/collections/\(fuzz.collection)", ["vectors": ["size": 4, "distance": "Dot"]]).status == 200)
            #expect(try await qdrant.call(.PUT, "/collections/\(fuzz.collection)/points?wait=true", [
                "points": [["id": .string(EventFuzzer.existingPoint), "vector": [1, 0, 0, 0]]],
            ]).status == 200)

            var accepted: [FuzzCase] = []
            var rejected: [(FuzzCase, PostgresError)] = []
            for n in 0..<350 {
                let c = fuzz.makeCase(n, seed: seed)
                do {
                    let id = try await db.transaction { tx -> Int64 in
                        try await tx.query(
                            "INSERT INTO extractions (id, source_id, content) VALUES ($1, $2, 'fuzz')", [.uuid(c.rowID), .text("case-\(n)")])
                        return try await tx.query(
                            "SELECT outbox.enqueue($1, $2, $3, $4::jsonb, $5::jsonb) AS id",
                            [.text(c.destination), .text(c.operation), .text(c.key), .jsonb(c.payload), .jsonb(#"{"case": "\#(n)"}"#)]
                        ).first!.decode("id")
                    }
                    accepted.append(c.with(eventID: id))
                } catch let error as PostgresError {
                    rejected.append((c, error))
                }
            }

            // Rejections: a clear error, and nothing of the transaction left behind.
            for (c, error) in rejected {
                let clear: Bool = switch error.sqlState {
                case "22023": error.message.hasPrefix("outbox.enqueue:")
                    && ["payload", "destination", "operation", "key"].contains(where: error.message.contains)
                case "22P05": error.message.contains("Unicode escape")  // \u0000 in jsonb
                case "22021": error.message.contains("NUL byte")  // NUL in a text argument
                case "54000": error.message.contains("index row")  // a key too long to index
                default: false
                }
                #expect(clear, "case \(c.n) (seed \(seed)): \(c.destination).\(c.operation) \(c.payload.prefix(300)) -> \(error)")
            }
            let rejectedRows = try await db.count("extractions WHERE id = ANY($1::uuid[])", [.textArray(rejected.map { $0.0.rowID.uuidString })])
            #expect(rejectedRows == 0, "a rejected enqueue left its domain row")
            let rejectedEvents = try await db.count(
                "outbox.events WHERE headers->>'case' = ANY($1::text[])", [.textArray(rejected.map { String($0.0.n) })])
            #expect(rejectedEvents == 0, "a rejected enqueue left an event")

            // Acceptances: delivered intact or dead-lettered with a reason, by a relay that stays up.
            let relay = try DaemonProcess.relay(databaseURL: url, environment: [
                "OUTBOX_EMBEDDING_DIMENSIONS": "4", "OUTBOX_RELAY_MAX_ATTEMPTS": "2", "OUTBOX_RELAY_BACKOFF_INITIAL": "100ms",
                "OUTBOX_RELAY_BACKOFF_MAX": "300ms",
            ])
            try await eventually("drain (log: \(relay.log.suffix(1500)))", timeout: .seconds(120)) {
                try await db.count("outbox.events") == 0
            }
            #expect(relay.process.isRunning, "relay died: \(relay.log.suffix(3000))")
            #expect(await relay.get("/livez")?.status == 200)
            #expect(!relay.log.contains("Fatal error"), "\(relay.log.suffix(3000))")

            let dead = Dictionary(uniqueKeysWithValues: try await db.query("SELECT id, error FROM outbox.dead_letters").rows.map {
                (try $0.decode("id", as: Int64.self), try $0.decode("error", as: String.self))
            })
            let redis = try await TestEnvironment.redis()
            let instance = try await db.query("SELECT id FROM outbox.instance").first!.decode("id", as: String.self)
            var delivered = 0
            for c in accepted {
                let id = try #require(c.eventID)
                if let reason = dead[id] {
                    #expect(!reason.trimmingCharacters(in: .whitespaces).isEmpty, "case \(c.n) dead-lettered without a reason")
                    continue
                }
                delivered += 1
                let problem = try await fuzz.effectProblem(of: c, redis: redis, qdrant: qdrant, db: db, dedupeInstance: instance)
                #expect(problem == nil, "case \(c.n) (seed \(seed)) \(c.destination).\(c.operation) \(c.payload.prefix(300)): \(problem ?? "")")
            }
            let states = Dictionary(grouping: rejected, by: { $0.1.sqlState ?? "none" }).mapValues(\.count)
            print("fuzz (seed \(seed)): \(accepted.count) accepted (\(delivered) delivered, \(dead.count) dead-lettered), "
                + "\(rejected.count) rejected \(states.sorted { $0.key < $1.key })")
            // The run exercised every path: otherwise this test proves nothing.
            #expect(rejected.count >= 50, "only \(rejected.count) rejected")
            #expect(delivered >= 50, "only \(delivered) delivered")
            #expect(dead.count >= 10, "only \(dead.count) dead-lettered")
            for op in EventFuzzer.operations {
                #expect(accepted.contains { "\($0.destination).\($0.operation)" == op && dead[$0.eventID!] == nil }, "no \(op) delivered")
            }
            try await fuzz.cleanRedis(redis)
            _ = try await qdrant.call(.DELETE, "/collections/\(fuzz.collection)")
        }
    }

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
                // Beyond Qdrant's 32 MiB request limit: refused by Qdrant, dead-lettered with its words.
                try await tx.query(
                    """
                    SELECT outbox.enqueue('qdrant', 'upsert', $1, jsonb_build_object(
                      'collection', $2::text, 'id', $4::text, 'vector', '[1, 0, 0, 0]'::jsonb, 'payload', jsonb_build_object('big', repeat($3::text, 4))))
                    """, [.text(name + "-huge"), .text(collection), .text(big), .text(UUID().uuidString)])
            }
            let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_EMBEDDING_DIMENSIONS": "4"])
            try await eventually("drain", timeout: .seconds(120)) {
                try await db.count("outbox.events") == 0
            }
            #expect(relay.process.isRunning, "relay died: \(relay.log.suffix(3000))")
            let dead = try await db.query("SELECT key, error FROM outbox.dead_letters").rows
            #expect(dead.count == 1)
            #expect(try dead.first?.decode("key", as: String.self) == name + "-huge")
            #expect(try dead.first?.decode("error", as: String.self).contains("qdrant answered 400: JSON payload") == true, "\(dead)")

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

    static func secrets() throws -> [String] {
        [
            URLParts(try TestEnvironment.variable("OUTBOX_POSTGRES_URL"))?.password,
            URLParts(try TestEnvironment.variable("OUTBOX_REDIS_URL"))?.password,
            try TestEnvironment.qdrantAPIKey(),
        ].compactMap { $0 }
    }

    /// The line around a leaked secret, with the secret masked (the failure message must not leak it).
    static func context(of secret: String, in text: String) -> String {
        guard let range = text.range(of: secret) else { return "" }
        let line = text[..<range.lowerBound].split(separator: "\n", omittingEmptySubsequences: false).last ?? ""
        return String(line.suffix(200)) + "<secret>"
    }
}

/// Runs CPU-heavy test work (copying or parsing megabytes) on a Dispatch thread, so that it does
/// not hold a cooperative-pool thread that other tests in this process are timing.
func offPool<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in DispatchQueue.global().async { continuation.resume(returning: work()) } }
}

// MARK: - Fuzzing support

/// SplitMix64: a tiny seeded generator, so a failing case is replayed from its seed and number.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

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

// MARK: - Raw HTTP clients (non-blocking sockets polled from async code, never a blocked thread)

/// A TCP connection to 127.0.0.1 that never blocks: every call returns at once, and waiting is
/// done with `Task.sleep` between polls.
final class RawSocket: @unchecked Sendable {
    // @unchecked Sendable: the descriptor is only used by the task that owns this object (or, for
    // the trickle task, handed over once); closing happens in deinit.
    let fd: Int32

    init(port: Int) async throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestEnvironment.Missing(name: "a socket (errno \(errno))") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if result != 0 && errno != EINPROGRESS { throw TestEnvironment.Missing(name: "a connection to port \(port) (errno \(errno))") }
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            var fds = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&fds, 1, 0) == 1 {
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                guard error == 0 else { throw TestEnvironment.Missing(name: "a connection to port \(port) (error \(error))") }
                return
            }
            guard ContinuousClock.now < deadline else { throw TestEnvironment.Missing(name: "a connection to port \(port) (timeout)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    deinit { close(fd) }

    /// Sends what the socket takes right now; false when the peer is gone.
    func sendNow(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) } >= 0
            || errno == EAGAIN
    }

    func sendAll(_ bytes: [UInt8], timeout: Duration = .seconds(10)) async throws {
        var offset = 0
        let deadline = ContinuousClock.now + timeout
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
            if n > 0 {
                offset += n
            } else if n < 0 && errno != EAGAIN {
                return  // the server closed the connection (e.g. after refusing oversized headers)
            } else {
                guard ContinuousClock.now < deadline else { return }
                try await Task.sleep(for: .milliseconds(2))
            }
        }
    }

    /// Reads what has arrived; `nil` once the peer has closed (EOF or reset) and nothing is left.
    func receiveNow() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n > 0 { return Array(buffer[..<n]) }
        if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) { return nil }
        return []
    }

    /// True when the server has closed the connection (nothing more to read, EOF or reset).
    func isClosedByPeer() -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }
}

enum RawHTTP {
    struct Reply {
        let status: Int
        let head: String
        let body: [UInt8]
        /// The server closed the connection after replying.
        let closed: Bool

        func header(_ name: String) -> String? {
            for line in head.split(separator: "\r\n").dropFirst() {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2, parts[0].lowercased() == name { return parts[1].trimmingCharacters(in: .whitespaces) }
            }
            return nil
        }
    }

    /// Sends `request` as raw bytes on a new connection and reads one reply (head, and a
    /// Content-Length body unless `expectBody` is false), then watches briefly for a close.
    static func exchange(port: Int, _ request: String, expectBody: Bool = true, timeout: Duration = .seconds(5)) async throws -> Reply {
        let socket = try await RawSocket(port: port)
        try await socket.sendAll(Array(request.utf8))
        var data: [UInt8] = []
        var closed = false
        let deadline = ContinuousClock.now + timeout
        let separator = Array("\r\n\r\n".utf8)
        var headEnd: Int?
        var bodyLength = 0
        while ContinuousClock.now < deadline {
            guard let chunk = socket.receiveNow() else {
                closed = true
                break
            }
            data += chunk
            if headEnd == nil, let end = data.firstRange(of: separator)?.upperBound {
                headEnd = end
                let head = String(decoding: data[..<end], as: UTF8.self)
                bodyLength = expectBody ? Reply(status: 0, head: head, body: [], closed: false).header("content-length").flatMap(Int.init) ?? 0 : 0
            }
            if let end = headEnd, data.count >= end + bodyLength {
                // Give the server a moment to send anything more (a body after HEAD) or to close.
                try await Task.sleep(for: .milliseconds(150))
                if let more = socket.receiveNow() { data += more } else { closed = true }
                if !closed { closed = socket.isClosedByPeer() }
                break
            }
            if chunk.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
        }
        let end = headEnd ?? data.count
        let head = String(decoding: data[..<end], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n").first ?? ""
        let status = statusLine.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return Reply(status: status, head: head, body: Array(data[end...]), closed: closed)
    }
}
