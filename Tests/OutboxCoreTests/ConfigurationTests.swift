import Foundation
import Testing

@testable import OutboxCore

/// Config files are loaded as users write them: YAML on disk plus OUTBOX_* environment overrides.
@Suite struct ConfigurationTests {
    func load(_ yaml: String, environment: [String: String] = [:], files: [String: String] = [:]) async throws
        -> OutboxConfiguration
    {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for (name, contents) in files {
            try contents.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        let path = dir.appendingPathComponent("outbox.yaml").path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return try await OutboxConfiguration.load(path: path, environment: environment)
    }

    func problem(_ yaml: String, environment: [String: String] = [:]) async -> ConfigurationError? {
        do {
            _ = try await load(yaml, environment: environment)
            return nil
        } catch {
            return error as? ConfigurationError
        }
    }

    /// Embedding dimensions that contradict the collection a mapped table embeds into refuse to load
    /// (before: ready, and every text upsert dead-lettered); a collection no table embeds into may differ.
    @Test func embeddingDimensionsMustFitTheCollectionsTablesEmbedInto() async {
        let contradiction = await problem("""
            embedding: {dimensions: 128}
            qdrant:
              collections:
                extractions: {size: 384}
            """)
        #expect(contradiction?.key == "embedding.dimensions")
        #expect(contradiction?.problem == "is 128, but qdrant.collections.extractions.size is 384 (tables.extractions embeds its text into it): make them agree")
        let fromEnvironment = await problem("qdrant:\n  collections:\n    extractions: {size: 384}\n", environment: ["OUTBOX_EMBEDDING_DIMENSIONS": "4"])
        #expect(fromEnvironment?.key == "OUTBOX_EMBEDDING_DIMENSIONS (embedding.dimensions)")
        #expect(await problem("""
            embedding: {dimensions: 128}
            qdrant:
              collections:
                extractions: {size: 128}
                images: {size: 512}
            """) == nil)
    }

    /// `qdrant.ordering` and each collection's `ordering`, `shard_key` or `shard_key_field`.
    @Test func qdrantOrderingAndShardKeys() async throws {
        let config = try await load("""
            qdrant:
              ordering: medium
              collections:
                extractions: {size: 384}
                eu: {size: 4, ordering: strong, shard_key: eu}
                numbered: {size: 4, ordering: weak, shard_key: 7}
                tenants: {size: 4, shard_key_field: tenant}
            """)
        #expect(config.qdrant.ordering == .medium)
        let settings = { QdrantWriteSettings.of($0, in: config.collections, defaultOrdering: config.qdrant.ordering) }
        #expect(settings("extractions") == QdrantWriteSettings(ordering: .medium))
        #expect(settings("eu") == QdrantWriteSettings(ordering: .strong, shardKey: .fixed(.keyword("eu"))))
        #expect(settings("numbered") == QdrantWriteSettings(ordering: .weak, shardKey: .fixed(.number(7))))
        #expect(settings("tenants") == QdrantWriteSettings(ordering: .medium, shardKey: .field("tenant")))
        #expect(settings("unconfigured") == QdrantWriteSettings(ordering: .medium))
        #expect(config.collections["tenants"]?.createdByRelay == false)
        #expect(config.collections["extractions"]?.createdByRelay == true)
        // The default: strong, as every write was sent before the setting existed.
        #expect(try await load("{}").qdrant.ordering == .strong)
        #expect(try await load("{}", environment: ["OUTBOX_QDRANT_ORDERING": "weak"]).qdrant.ordering == .weak)
    }

    @Test(arguments: [
        ("qdrant: {ordering: fast}", "qdrant.ordering", #"must be weak, medium or strong, got "fast""#),
        ("qdrant:\n  collections:\n    c: {size: 4, ordering: Strong}\n", "qdrant.collections.c.ordering",
         #"must be weak, medium or strong, got "Strong""#),
        ("qdrant:\n  collections:\n    c: {size: 4, shard_key: eu, shard_key_field: tenant}\n", "qdrant.collections.c.shard_key_field",
         "set either shard_key (one key for every write) or shard_key_field (a field of each event), not both"),
        ("qdrant:\n  collections:\n    c: {size: 4, shard_key: -1}\n", "qdrant.collections.c.shard_key",
         #"must be a non-empty string or an unsigned integer, got "-1""#),
        ("qdrant:\n  collections:\n    c: {size: 4, shard_key: 1.5}\n", "qdrant.collections.c.shard_key",
         #"must be a non-empty string or an unsigned integer, got "1.5""#),
        ("qdrant:\n  collections:\n    c: {size: 4, shard_key: ''}\n", "qdrant.collections.c.shard_key",
         #"must be a non-empty string or an unsigned integer, got """#),
        ("qdrant:\n  collections:\n    c: {size: 4, shard_key_field: 3}\n", "qdrant.collections.c.shard_key_field",
         #"must be the name of a field of the events' payloads, got "3""#),
        ("qdrant:\n  collections:\n    c: {size: 4, shard_key: [a, b]}\n", "qdrant.collections.c.shard_key", "expected a single value, got a list"),
        ("qdrant:\n  collections:\n    c: {size: 4, shard_kee: a}\n", "qdrant.collections.c.shard_kee",
         "unknown key; did you mean qdrant.collections.c.shard_key?"),
        // The reconciler's repairs of a table carry the shard key in the point payload it rebuilds.
        ("qdrant:\n  collections:\n    extractions: {size: 384, shard_key_field: tenant}\n", "tables.extractions.payload_columns",
         "must include tenant, the shard key field of its collection (qdrant.collections.extractions.shard_key_field): "
            + "the reconciler's repairs carry the shard key in the point's payload"),
    ])
    func badQdrantWriteSettingsNameTheKey(yaml: String, key: String, message: String) async {
        let error = await problem(yaml)
        #expect(error?.key == key, "\(String(describing: error))")
        #expect(error?.problem == message, "\(String(describing: error))")
    }

    @Test func aBadOrderingFromTheEnvironmentNamesTheVariable() async {
        let error = await problem("{}", environment: ["OUTBOX_QDRANT_ORDERING": "strongest"])
        #expect(error?.key == "OUTBOX_QDRANT_ORDERING (qdrant.ordering)")
        #expect(error?.problem == #"must be weak, medium or strong, got "strongest""#)
    }

    @Test func aShardKeyFieldAmongTheTablesPayloadColumnsIsAccepted() async throws {
        let config = try await load("""
            qdrant:
              collections:
                extractions: {size: 384, shard_key_field: tenant}
            tables:
              extractions: {payload_columns: [source_id, tenant]}
            """)
        #expect(config.collections["extractions"]?.shardKey == .field("tenant"))
    }

    /// What an event's shard key field may hold, and the dead letter's reason when it does not.
    @Test func shardKeyFromAnEventsField() throws {
        let settings = QdrantWriteSettings(ordering: .strong, shardKey: .field("tenant"))
        func key(_ payload: JSONValue, _ operation: String = "delete") -> Result<ShardKey?, ShardKeyProblem> {
            settings.shardKey(for: payload, operation: operation, collection: "docs")
        }
        #expect(try key(["tenant": "acme", "ids": [1]]).get() == .keyword("acme"))
        #expect(try key(["tenant": 42]).get() == .number(42))
        // An upsert's point payload is searched when the top level has no such field; the top level wins.
        #expect(try key(["payload": ["tenant": "inner"]], "upsert").get() == .keyword("inner"))
        #expect(try key(["tenant": "outer", "payload": ["tenant": "inner"]], "upsert").get() == .keyword("outer"))
        func reason(_ payload: JSONValue, _ operation: String = "delete") -> String? {
            if case .failure(let problem) = key(payload, operation) { return problem.message }
            return nil
        }
        #expect(reason(["payload": ["tenant": "inner"]]) ==
            #"qdrant.delete to docs: the shard key field "tenant" (qdrant.collections.docs.shard_key_field) is not in the payload"#)
        #expect(reason(["id": 1], "upsert") ==
            #"qdrant.upsert to docs: the shard key field "tenant" (qdrant.collections.docs.shard_key_field) is neither in the payload nor in its "payload""#)
        for bad: JSONValue in [1.5, -1, "", true, .null, ["a"], ["k": "v"]] {
            #expect(reason(["tenant": bad]) ==
                "qdrant.delete to docs: the shard key field \"tenant\" (qdrant.collections.docs.shard_key_field) must be a non-empty string "
                    + "or an unsigned integer, got \(bad.jsonText)")
        }
        #expect(try QdrantWriteSettings(ordering: .weak, shardKey: .fixed(.number(3))).shardKey(for: [:], operation: "delete", collection: "c").get() == .number(3))
        #expect(try QdrantWriteSettings(ordering: .weak).shardKey(for: ["tenant": 1], operation: "delete", collection: "c").get() == nil)
    }

    @Test func defaultsMatchTheLocalServices() async throws {
        let config = try await load("{}")
        #expect(config.postgres.url == "postgresql://outbox@127.0.0.1:55432/outbox")
        #expect(config.redis.url == "redis://127.0.0.1:56379/0")
        #expect(config.qdrant.url == "http://127.0.0.1:56333")
        #expect(config.postgres.connectTimeout == .seconds(5))
    }

    @Test func readsNestedKeysAndSecretFilesRelativeToTheConfig() async throws {
        let config = try await load(
            """
            postgres:
              url: postgresql://app@db.internal/app
              password_file: pg-password
              connect_timeout: 1500ms
            qdrant:
              api_key_file: qdrant-key
            """, files: ["pg-password": "s3cret\n", "qdrant-key": "k-123"])
        #expect(config.postgres.url == "postgresql://app@db.internal/app")
        #expect(config.postgres.password == "s3cret")
        #expect(config.postgres.connectTimeout == .milliseconds(1500))
        #expect(config.qdrant.apiKey == "k-123")
    }

    @Test func environmentOverridesTheFile() async throws {
        let config = try await load(
            "postgres:\n  url: postgresql://file@h/db\n",
            environment: ["OUTBOX_POSTGRES_URL": "postgresql://env@h/db", "OUTBOX_QDRANT_API_KEY": "from-env",
                          "OUTBOX_REDIS_COMMAND_TIMEOUT": "3s"])
        #expect(config.postgres.url == "postgresql://env@h/db")
        #expect(config.qdrant.apiKey == "from-env")
        #expect(config.redis.commandTimeout == .seconds(3))
    }

    /// `tracing.*`: off until an endpoint is set; the trace field of stream entries on by default,
    /// an empty value turns a field off; a wrong value names its key and what it accepts.
    @Test func tracingSettingsAndTheirErrors() async throws {
        let defaults = try await load("{}").tracing
        #expect(defaults.endpoint == nil && defaults.tracesURL == nil)
        #expect(defaults.streamField == "traceparent" && defaults.pointPayloadKey == nil)
        #expect(defaults.sampler == .parentBasedAlwaysOn)
        let set = try await load(
            "tracing: {endpoint: 'http://collector:4318/', sampler: TraceIDRatio, sampler_ratio: 0.25, stream_field: '', point_payload_key: trace}\n",
            environment: ["OUTBOX_TRACING_SERVICE_NAME": "relay-eu"]).tracing
        #expect(set.tracesURL == "http://collector:4318/v1/traces")
        #expect(set.sampler == .traceIDRatio && set.samplerRatio == 0.25)
        #expect(set.streamField == nil && set.pointPayloadKey == "trace")
        #expect(set.serviceName == "relay-eu")
        let sampler = await problem("tracing: {sampler: sometimes}\n")
        #expect(sampler?.key == "tracing.sampler")
        #expect(sampler?.problem.contains("one of always_on, always_off, traceidratio, parentbased_always_on") == true)
        #expect(await problem("tracing: {sampler_ratio: 2}\n")?.key == "tracing.sampler_ratio")
        #expect(await problem("tracing: {endpoint: 'collector:4318'}\n")?.key == "tracing.endpoint")
        #expect(await problem("tracing: {queue_size: 0}\n")?.key == "tracing.queue_size")
        #expect(await problem("tracing: {export_interval: never}\n")?.key == "tracing.export_interval")
    }

    @Test func negativeDurationNamesTheKey() async {
        let error = await problem("postgres:\n  connect_timeout: -5s\n")
        #expect(error?.key == "postgres.connect_timeout")
        #expect(error?.description == #"config: postgres.connect_timeout: must be positive, got "-5s""#)
    }

    @Test func wrongTypeNamesTheKey() async {
        let error = await problem("redis:\n  command_timeout: soon\n")
        #expect(error?.key == "redis.command_timeout")
        #expect(error?.problem.contains("expected a duration") == true)
    }

    @Test func badRedisURLNamesTheKey() async {
        let error = await problem("redis:\n  url: http://127.0.0.1:6379\n")
        #expect(error?.key == "redis.url")
    }

    /// `rediss://` turns TLS on; the TLS keys name files relative to the config file, and
    /// contradictions are refused naming the key (or the variable that set it).
    @Test func redisTLSKeysAndTheirContradictions() async throws {
        let files = ["ca.crt": "ca", "client.crt": "cert", "client.key": "key"]
        let config = try await load("""
            redis:
              url: rediss://cache.example:6380/2
              ca_file: ca.crt
              tls_server_name: redis.internal
              client_cert_file: client.crt
              client_key_file: client.key
            """, files: files)
        let endpoint = try config.redis.endpoint()
        #expect(endpoint.tls && endpoint.host == "cache.example" && endpoint.port == 6380 && endpoint.database == 2)
        #expect(config.redis.tls.caFile?.hasSuffix("/ca.crt") == true)
        #expect(config.redis.tls.clientCertificateFile?.hasSuffix("/client.crt") == true)
        #expect(config.redis.tls.clientKeyFile?.hasSuffix("/client.key") == true)
        #expect(config.redis.tls.serverName(forHost: "10.0.0.7") == "redis.internal")
        let plain = try await load("redis:\n  url: rediss://cache.example/0\n")
        #expect(plain.redis.tls == RedisTLSOptions())
        #expect(plain.redis.tls.serverName(forHost: "10.0.0.7") == "10.0.0.7", "a node's own host without tls_server_name")
        #expect(try await load("{}").redis.endpoint().tls == false)

        func problem(_ yaml: String, environment: [String: String] = [:]) async -> ConfigurationError? {
            do {
                _ = try await load(yaml, environment: environment, files: files)
                return nil
            } catch { return error as? ConfigurationError }
        }
        let notTLS = await problem("redis:\n  url: redis://cache.example/0\n  ca_file: ca.crt\n")
        #expect(notTLS?.description == "config: redis.ca_file: applies only to a rediss:// redis.url (TLS); redis.url is redis://, which is plain TCP")
        let fromEnvironment = await problem("{}", environment: ["OUTBOX_REDIS_TLS_SERVER_NAME": "redis.internal"])
        #expect(fromEnvironment?.key == "OUTBOX_REDIS_TLS_SERVER_NAME (redis.tls_server_name)", "\(String(describing: fromEnvironment))")
        let certAlone = await problem("redis:\n  url: rediss://h/0\n  client_cert_file: client.crt\n")
        #expect(certAlone?.description == "config: redis.client_key_file: redis.client_cert_file and redis.client_key_file go together")
        let keyAlone = await problem("redis:\n  url: rediss://h/0\n  client_key_file: client.key\n")
        #expect(keyAlone?.key == "redis.client_cert_file")
        let unreadable = await problem("redis:\n  url: rediss://h/0\n  ca_file: missing.crt\n")
        #expect(unreadable?.key == "redis.ca_file" && unreadable?.problem.hasPrefix("cannot read ") == true)
        let badName = await problem("redis:\n  url: rediss://h/0\n  tls_server_name: 'not a name'\n")
        #expect(badName?.key == "redis.tls_server_name")
        let badScheme = await problem("redis:\n  url: redis+tls://h/0\n")
        #expect(badScheme?.description == "config: redis.url: redis url must look like redis://[:password@]host[:port][/db] (rediss:// for TLS)")
    }

    @Test func unreadableSecretFileNamesTheKeyNotTheSecret() async {
        let error = await problem("postgres:\n  password_file: /nonexistent/pw\n")
        #expect(error?.key == "postgres.password_file")
    }

    @Test func missingFileIsAClearError() async {
        await #expect(throws: ConfigurationError.self) {
            try await OutboxConfiguration.load(path: "/nonexistent/outbox.yaml", environment: [:])
        }
    }

    @Test func invalidYAMLIsAClearError() async {
        let error = await problem("postgres: [unclosed\n")
        #expect(error?.problem.contains("not valid YAML") == true)
    }

    // MARK: Unknown keys and wrong shapes

    @Test(arguments: [
        ("relay:\n  batch_sise: 5\n", "relay.batch_sise", "unknown key; did you mean relay.batch_size?"),
        ("relay.batch_sise: 5\n", "relay.batch_sise", "unknown key; did you mean relay.batch_size?"),
        ("postgress:\n  url: postgresql://h/db\n", "postgress", "unknown key; did you mean postgres?"),
        ("relay:\n  http: {host: 127.0.0.1, prot: 1}\n", "relay.http.prot", "unknown key; did you mean relay.http.port?"),
        // The right name in the wrong section.
        ("relay:\n  dedupe_ttl: 1d\n", "relay.dedupe_ttl", "unknown key; did you mean redis.dedupe_ttl?"),
        ("kafka:\n  brokers: localhost\n", "kafka",
         "unknown key (known here: embedding, postgres, qdrant, reconciler, redis, relay, schema, tables, tracing)"),
        ("tables:\n  extractions:\n    table: public.extractions\n    embeding_column: e\n", "tables.extractions.embeding_column",
         "unknown key; did you mean tables.extractions.embedding_column?"),
        ("tables:\n  docs:\n    owner: me\n", "tables.docs.owner",
         "unknown key (known here: collection, created_at_column, embedding_column, id_column, payload_columns, table, text_column, vector_column)"),
        ("qdrant:\n  collections:\n    c: {size: 4, distanse: Dot}\n", "qdrant.collections.c.distanse",
         "unknown key; did you mean qdrant.collections.c.distance?"),
        ("qdrant:\n  colections:\n    c: {size: 4}\n", "qdrant.colections", "unknown key; did you mean qdrant.collections?"),
    ])
    func unknownKeyIsRejectedNamingItWithASuggestion(yaml: String, key: String, message: String) async {
        let error = await problem(yaml)
        #expect(error?.key == key, "\(String(describing: error))")
        #expect(error?.problem == message)
        #expect(error?.description.contains("\n") == false)
    }

    @Test func severalUnknownKeysReportTheFirstAndCountTheRest() async {
        let error = await problem("relay:\n  batch_sise: 5\n  max_atempts: 3\nzzz: 1\n")
        #expect(error?.description == "config: relay.batch_sise: unknown key; did you mean relay.batch_size? (and 2 more problem(s))")
    }

    @Test func anUnknownSecretKeyIsNamedButItsValueIsNotShown() async {
        let error = await problem("postgres:\n  pasword: hunter2-secret\n")
        #expect(error?.key == "postgres.pasword")
        #expect(error?.problem == "unknown key; did you mean postgres.password?")
        #expect(error?.description.contains("hunter2") == false)
    }

    @Test(arguments: [
        ("relay:\n  batch_size: [1, 2]\n", "relay.batch_size", "expected a single value, got a list"),
        ("postgres:\n  url: {host: h}\n", "postgres.url", "expected a single value, got a map"),
        ("postgres: localhost\n", "postgres", "must be a map (connect_timeout, password, password_file, url)"),
        ("relay:\n  http: 8470\n", "relay.http", "must be a map (host, port)"),
        ("tables: [extractions]\n", "tables",
         "must be a map of name: {collection, created_at_column, embedding_column, id_column, payload_columns, table, text_column, vector_column}"),
        ("tables:\n  extractions: public.extractions\n", "tables.extractions",
         "must be a map with collection, created_at_column, embedding_column, id_column, payload_columns, table, text_column, vector_column"),
        ("qdrant:\n  collections:\n    c: {size: [4]}\n", "qdrant.collections.c.size", "expected a single value, got a list"),
        ("tables.extractions.table: public.x\n", "tables.extractions.table", "write tables as nested maps; dotted keys work for settings only"),
    ])
    func wrongShapeNamesTheKey(yaml: String, key: String, message: String) async {
        let error = await problem(yaml)
        #expect(error?.key == key, "\(String(describing: error))")
        #expect(error?.problem == message)
    }

    @Test(arguments: [
        ("relay:\n  batch_size: many\n", "relay.batch_size", #"expected an integer, got "many""#),
        ("relay:\n  batch_size: 1.5\n", "relay.batch_size", #"expected an integer, got "1.5""#),
        ("relay:\n  batch_size: -3\n", "relay.batch_size", "must be between 1 and 10000, got -3"),
        ("relay:\n  http: {port: 70000}\n", "relay.http.port", "must be between 0 and 65535, got 70000"),
        ("reconciler:\n  repair: maybe\n", "reconciler.repair", #"expected true or false, got "maybe""#),
        ("embedding:\n  provider: magic\n", "embedding.provider", #"must be hashing or openai, got "magic""#),
        ("qdrant:\n  url: 127.0.0.1:6333\n", "qdrant.url", "must start with http:// or https://"),
        ("postgres:\n  url: ''\n", "postgres.url", "must not be empty"),
        ("redis:\n  cluster: maybe\n", "redis.cluster", #"expected true or false, got "maybe""#),
        ("redis:\n  cluster: true\n  url: redis://127.0.0.1:7000/2\n", "redis.url", "a Redis Cluster has only database 0, the url names database 2"),
        ("redis:\n  wait_replicas: -1\n", "redis.wait_replicas", "must be between 0 and 64, got -1"),
    ])
    func wrongTypeOrValueNamesTheKey(yaml: String, key: String, message: String) async {
        let error = await problem(yaml)
        #expect(error?.key == key, "\(String(describing: error))")
        #expect(error?.problem == message)
    }

    static let durationKeys = ConfigKeys.settings.filter {
        ["timeout", "interval", "_ttl", "_age", "backoff_", "grace", "_period", "stuck_after"].contains(where: $0.contains)
    }.sorted()

    @Test func everyDurationKeyIsCovered() {
        #expect(Self.durationKeys.count == 19, "\(Self.durationKeys)")
    }

    @Test(arguments: durationKeys)
    func negativeZeroHugeAndNonsenseDurationsNameTheKey(key: String) async {
        // In the file (dotted form) and in the environment: same checks, same message; a value from
        // the environment is named by its variable, where it must be fixed.
        let env = "OUTBOX_" + key.uppercased().replacingOccurrences(of: ".", with: "_")
        for (value, message) in [
            ("-1s", #"must be positive, got "-1s""#), ("0ms", #"must be positive, got "0ms""#),
            ("1e300s", #"must be at most 36500d, got "1e300s""#),
            ("soon", #"expected a duration like 250ms, 5s, 2m or 1h, got "soon""#),
            ("nan", #"expected a duration like 250ms, 5s, 2m or 1h, got "nan""#),
        ] {
            let fromFile = await problem("\(key): \(value)\n")
            #expect(fromFile?.key == key, "\(key) = \(value): \(String(describing: fromFile))")
            #expect(fromFile?.problem == message, "\(key) = \(value)")
            let fromEnvironment = await problem("{}", environment: [env: value])
            #expect(fromEnvironment?.key == "\(env) (\(key))", "\(env) = \(value): \(String(describing: fromEnvironment))")
            #expect(fromEnvironment?.problem == message, "\(env) = \(value)")
        }
    }

    @Test func claimIdleTimeoutBeyondPostgresLimitIsRefusedAtLoad() async {
        let error = await problem("relay:\n  claim_idle_timeout: 30d\n")
        #expect(error?.key == "relay.claim_idle_timeout")
        #expect(error?.problem == "must be at most 2147483647ms (about 24.8 days), Postgres' limit")
        #expect(await problem("relay:\n  claim_idle_timeout: 24d\n") == nil)
    }

    @Test func everyKeyTheCodeReadsIsDeclaredAndEveryDeclaredKeyIsRead() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("outbox.yaml").path
        try "{}".write(toFile: path, atomically: true, encoding: .utf8)
        let recorder = ConfigKeyRecorder()
        _ = try await OutboxConfiguration.load(path: path, environment: [:], recorder: recorder)
        #expect(recorder.recorded.subtracting(ConfigKeys.settings).isEmpty, "read but not declared: \(recorder.recorded.subtracting(ConfigKeys.settings))")
        #expect(ConfigKeys.settings.subtracting(recorder.recorded).isEmpty, "declared but never read: \(ConfigKeys.settings.subtracting(recorder.recorded))")
    }

    @Test func theShippedConfigurationHasOnlyKnownKeys() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let config = try await OutboxConfiguration.load(path: root.appendingPathComponent("config/outbox.yaml").path, environment: [:])
        #expect(config.tables["extractions"] != nil)
        #expect(config.collections["extractions"]?.size == 384)
    }

    @Test func dottedKeysAndNullSectionsAreAccepted() async throws {
        let config = try await load("relay.batch_size: 7\nreconciler:\nrelay.http.port: 9999\n")
        #expect(config.relay.batchSize == 7)
        #expect(config.relay.httpPort == 9999)
    }

    /// The environment is shared with other tools (OUTBOX_LOG_LEVEL, scripts' variables), so unknown
    /// OUTBOX_* variables are not errors; known ones still override, and cannot hide a file typo.
    @Test func environmentOverridesKeepWorkingAndUnknownVariablesAreIgnored() async throws {
        let config = try await load(
            "relay:\n  batch_size: 5\n",
            environment: ["OUTBOX_RELAY_BATCH_SIZE": "7", "OUTBOX_RELAY_BATCH_SISE": "9", "OUTBOX_LOG_LEVEL": "debug",
                          "OUTBOX_VENV": "/opt/venv"])
        #expect(config.relay.batchSize == 7)
        let typo = await problem("relay:\n  batch_sise: 5\n", environment: ["OUTBOX_RELAY_BATCH_SIZE": "7"])
        #expect(typo?.key == "relay.batch_sise")
    }

    @Test func suggestionsNeedACloseMatch() {
        #expect(ConfigKeys.suggestion(for: "relay.batch_sise", among: Array(ConfigKeys.settings)) == "relay.batch_size")
        #expect(ConfigKeys.suggestion(for: "relay.zebra", among: Array(ConfigKeys.settings)) == nil)
        #expect(ConfigKeys.editDistance("kitten", "sitting") == 3)
    }
}
