import Configuration
import Foundation
import Synchronization
import SystemPackage
import Yams

/// A configuration problem, reported as one line naming the key (DESIGN §5: exit 2).
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public let key: String
    public let problem: String

    public init(key: String, problem: String) {
        self.key = key
        self.problem = problem
    }

    public var description: String { key.isEmpty ? "config: \(problem)" : "config: \(key): \(problem)" }

    /// The environment variable that overrides `key`: `relay.batch_size` → `OUTBOX_RELAY_BATCH_SIZE`.
    public static func environmentVariable(for key: String) -> String {
        "OUTBOX_" + key.uppercased().replacingOccurrences(of: ".", with: "_")
    }
}

/// Qdrant's HTTP endpoint. `apiKey` is a secret.
public struct QdrantConfiguration: Sendable {
    public var url: String
    public var apiKey: String?
    public var timeout: Duration
    /// The largest request body Qdrant accepts (its `service.max_request_size_mb`, 32 MiB unless
    /// raised): a point larger than this is dead-lettered instead of sent.
    public var maxRequestBytes = 32 * 1024 * 1024
    /// For an `https://` url: a CA to verify Qdrant with, a client certificate and key.
    public var tls = HTTPConnection.TLSFiles()
    /// `ordering` of every point write to a collection without its own (`qdrant.ordering`).
    public var ordering: WriteOrdering = .strong

    public init(url: String, apiKey: String? = nil, timeout: Duration = .seconds(30)) {
        self.url = url
        self.apiKey = apiKey
        self.timeout = timeout
    }

    /// The URL with any userinfo password or secret query value replaced by `***`.
    public var redactedURL: String { SecretAddress.redacted(url) }

    /// What must never be shown: the api-key and any secret in the URL.
    public var secrets: [String] { [apiKey].compactMap { $0 } + SecretAddress.secrets(in: url) }
}

/// Everything both daemons read from `config/outbox.yaml`, with environment overrides.
///
/// Keys (YAML path → environment variable; relative paths resolve against the config file's folder):
///
/// | key | type | default | secret |
/// |---|---|---|---|
/// | `postgres.url` (`OUTBOX_POSTGRES_URL`) | URL or conninfo | `postgresql://outbox@127.0.0.1:55432/outbox` | password part |
/// | `postgres.password` (`OUTBOX_POSTGRES_PASSWORD`) | string | none | yes |
/// | `postgres.password_file` (`OUTBOX_POSTGRES_PASSWORD_FILE`) | path | none | contents |
/// | `postgres.connect_timeout` | duration | `5s` | |
/// | `redis.url` (`OUTBOX_REDIS_URL`) | `redis://[:password@]host:port/db` (`rediss://` for TLS) | `redis://127.0.0.1:56379/0` | password part |
/// | `redis.password` / `redis.password_file` | string / path | none | yes |
/// | `redis.connect_timeout`, `redis.command_timeout` | duration | `5s`, `10s` | |
/// | `redis.cluster` (`OUTBOX_REDIS_CLUSTER`) | bool: `url` names a node of a Redis Cluster | `false` | |
/// | `redis.ca_file`, `redis.tls_server_name`, `redis.client_cert_file` / `redis.client_key_file` | path / name | none | |
/// | `qdrant.url` (`OUTBOX_QDRANT_URL`) | URL | `http://127.0.0.1:56333` | |
/// | `qdrant.api_key` / `qdrant.api_key_file` | string / path | none | yes |
/// | `qdrant.timeout` | duration | `30s` | |
/// | `qdrant.max_request_bytes` | int | `33554432` | |
/// | `qdrant.ordering` | `weak` \| `medium` \| `strong` | `strong` | |
/// | `schema.directory` | path | `../schema` | |
///
/// Durations are a number with a unit: `250ms`, `5s`, `2m`, `1h`, `7d` (a bare number means seconds).
public struct OutboxConfiguration: Sendable {
    public var postgres: PostgresConfiguration
    public var redis: RedisConfiguration
    public var qdrant: QdrantConfiguration
    public var schemaDirectory: String
    public var relay: RelaySettings
    public var reconciler: ReconcilerSettings
    public var embedding: EmbeddingSettings
    public var tracing: TracingSettings
    /// Domain tables that upserts' `source.table` may name, by that name. Default: `extractions`.
    public var tables: [String: TableMapping]
    /// Collections the relay creates when missing.
    public var collections: [String: CollectionSpec]

    /// Reads `path` (YAML) with `OUTBOX_*` environment overrides.
    public static func load(path: String, environment: [String: String] = ProcessInfo.processInfo.environment)
        async throws -> OutboxConfiguration
    {
        try await load(path: path, environment: environment, recorder: nil)
    }

    /// `recorder` collects every key the code reads (tests check them against ``ConfigKeys``).
    static func load(path: String, environment: [String: String], recorder: ConfigKeyRecorder?) async throws
        -> OutboxConfiguration
    {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ConfigurationError(key: "", problem: "config file \(path) not found (pass --config PATH)")
        }
        let file: FileProvider<YAMLSnapshot>
        do {
            file = try await FileProvider<YAMLSnapshot>(filePath: FilePath(path))
        } catch {
            throw ConfigurationError(key: "", problem: "\(path) is not valid YAML: \(error)")
        }
        let env = EnvironmentVariablesProvider(
            environmentVariables: environment.filter { $0.key.hasPrefix("OUTBOX_") },
            secretsSpecifier: .dynamic { key, _ in
                key.hasSuffix("PASSWORD") || key.hasSuffix("API_KEY") || key.hasSuffix("_URL")
            }
        ).prefixKeys(with: "outbox")
        // The file's shape (unknown keys, sections that are not maps) is checked before any value
        // is read: a misspelt key would otherwise leave its default in place without a word.
        let document = try? Yams.load(yaml: (try? String(contentsOfFile: path, encoding: .utf8)) ?? "")
        try ConfigKeys.check(document)
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let maps = try ConfigMaps.load(document: document)
        do {
            return try OutboxConfiguration(
                reader: ConfigValues(ConfigReader(providers: [env, file]), baseDirectory: base, recorder: recorder),
                tables: maps.tables, collections: maps.collections)
        } catch let error as ConfigurationError {
            // A value set in the environment is fixed there, not in the file: name the variable.
            let variable = ConfigurationError.environmentVariable(for: error.key)
            guard !error.key.isEmpty, environment[variable] != nil else { throw error }
            throw ConfigurationError(key: "\(variable) (\(error.key))", problem: error.problem)
        }
    }

    init(reader c: ConfigValues, tables: [String: TableMapping], collections: [String: CollectionSpec]) throws {
        self.tables = tables
        self.collections = collections
        var postgres = PostgresConfiguration(
            url: try c.string("postgres.url", default: "postgresql://outbox@127.0.0.1:55432/outbox", secret: true))
        postgres.password = try c.secret("postgres.password")
        postgres.connectTimeout = try c.duration("postgres.connect_timeout", default: .seconds(5))
        self.postgres = postgres

        var redis = RedisConfiguration(url: try c.string("redis.url", default: "redis://127.0.0.1:56379/0", secret: true))
        redis.password = try c.secret("redis.password")
        redis.connectTimeout = try c.duration("redis.connect_timeout", default: .seconds(5))
        redis.commandTimeout = try c.duration("redis.command_timeout", default: .seconds(10))
        redis.cluster = try c.bool("redis.cluster", default: false)
        redis.tls = RedisTLSOptions(
            caFile: try c.file("redis.ca_file"), serverName: c.raw("redis.tls_server_name"),
            clientCertificateFile: try c.file("redis.client_cert_file"), clientKeyFile: try c.file("redis.client_key_file"))
        do {
            let endpoint = try redis.endpoint()
            if redis.cluster, endpoint.database != 0 {
                throw ConfigurationError(
                    key: "redis.url", problem: "a Redis Cluster has only database 0, the url names database \(endpoint.database)")
            }
        } catch let error as RedisError {
            throw ConfigurationError(key: "redis.url", problem: error.message)
        }
        if let (key, problem) = redis.tlsProblem() { throw ConfigurationError(key: key, problem: problem) }
        self.redis = redis

        qdrant = QdrantConfiguration(
            url: try c.string("qdrant.url", default: "http://127.0.0.1:56333", secret: true),
            apiKey: try c.secret("qdrant.api_key"),
            timeout: try c.duration("qdrant.timeout", default: .seconds(30)))
        qdrant.maxRequestBytes = try c.int("qdrant.max_request_bytes", default: qdrant.maxRequestBytes, range: 65_536...(1 << 40))
        guard qdrant.url.hasPrefix("http://") || qdrant.url.hasPrefix("https://") else {
            throw ConfigurationError(key: "qdrant.url", problem: "must start with http:// or https://")
        }
        let ordering = try c.string("qdrant.ordering", default: qdrant.ordering.rawValue)
        guard let ordering = WriteOrdering(rawValue: ordering) else {
            throw ConfigurationError(key: "qdrant.ordering", problem: "must be weak, medium or strong, got \"\(ordering)\"")
        }
        qdrant.ordering = ordering
        qdrant.tls = HTTPConnection.TLSFiles(
            caFile: try c.file("qdrant.ca_file"), clientCertificateFile: try c.file("qdrant.client_cert_file"),
            clientKeyFile: try c.file("qdrant.client_key_file"))
        guard (qdrant.tls.clientCertificateFile == nil) == (qdrant.tls.clientKeyFile == nil) else {
            throw ConfigurationError(key: "qdrant.client_key_file", problem: "qdrant.client_cert_file and qdrant.client_key_file go together")
        }
        schemaDirectory = c.path(try c.string("schema.directory", default: "../schema"))
        relay = try RelaySettings(c)
        reconciler = try ReconcilerSettings(c)
        embedding = try EmbeddingSettings(c)
        tracing = try TracingSettings(c)
        // A mapped table's repairs send its text to be embedded into its collection: a collection
        // configured with another size would refuse every one of them.
        for mapping in tables.values.sorted(by: { $0.name < $1.name }) {
            if let spec = collections[mapping.collection], spec.size != embedding.dimensions {
                throw ConfigurationError(
                    key: "embedding.dimensions",
                    problem: "is \(embedding.dimensions), but qdrant.collections.\(spec.name).size is \(spec.size) "
                        + "(tables.\(mapping.name) embeds its text into it): make them agree")
            }
            // The reconciler's repairs are upserts whose point payload is the row's payload_columns:
            // without the shard key field among them, every repair would be dead-lettered.
            if case .field(let field)? = collections[mapping.collection]?.shardKey,
                !mapping.payloadColumns.contains(where: { $0.name == field })
            {
                throw ConfigurationError(
                    key: "tables.\(mapping.name).payload_columns",
                    problem: "must include \(field), the shard key field of its collection (qdrant.collections.\(mapping.collection).shard_key_field): "
                        + "the reconciler's repairs carry the shard key in the point's payload")
            }
        }
    }
}

/// Typed, key-naming access to a `ConfigReader`.
///
/// swift-configuration's optional getters return the default when a value does not convert;
/// this wrapper turns that case into a ``ConfigurationError`` naming the key instead.
struct ConfigValues {
    let reader: ConfigReader
    let baseDirectory: String
    let recorder: ConfigKeyRecorder?

    init(_ reader: ConfigReader, baseDirectory: String, recorder: ConfigKeyRecorder? = nil) {
        self.reader = reader
        self.baseDirectory = baseDirectory
        self.recorder = recorder
    }

    func raw(_ key: String, secret: Bool = false) -> String? {
        recorder?.record(key)
        return reader.string(forKey: ConfigKey(key), isSecret: secret)
    }

    func string(_ key: String, default value: String, secret: Bool = false) throws -> String {
        guard let text = raw(key, secret: secret) else { return value }
        guard !text.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw ConfigurationError(key: key, problem: "must not be empty")
        }
        return text
    }

    func int(_ key: String, default value: Int, range: ClosedRange<Int> = Int.min...Int.max) throws -> Int {
        guard let text = raw(key) else { return value }
        guard let number = Int(text.trimmingCharacters(in: .whitespaces)) else {
            throw ConfigurationError(key: key, problem: "expected an integer, got \"\(text)\"")
        }
        guard range.contains(number) else {
            throw ConfigurationError(key: key, problem: "must be between \(range.lowerBound) and \(range.upperBound), got \(number)")
        }
        return number
    }

    func bool(_ key: String, default value: Bool) throws -> Bool {
        guard let text = raw(key) else { return value }
        switch text.trimmingCharacters(in: .whitespaces).lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw ConfigurationError(key: key, problem: "expected true or false, got \"\(text)\"")
        }
    }

    func duration(_ key: String, default value: Duration) throws -> Duration {
        guard let text = raw(key) else { return value }
        guard let duration = parseDuration(text) else {
            throw ConfigurationError(key: key, problem: "expected a duration like 250ms, 5s, 2m or 1h, got \"\(text)\"")
        }
        guard duration > .zero else {
            throw ConfigurationError(key: key, problem: "must be positive, got \"\(text)\"")
        }
        guard duration <= maximumDuration else {
            throw ConfigurationError(key: key, problem: "must be at most 36500d, got \"\(text)\"")
        }
        return duration
    }

    /// A secret given inline (`key`) or in a file (`key_file`); never echoed in errors.
    func secret(_ key: String) throws -> String? {
        if let inline = raw(key, secret: true) { return inline }
        guard let file = raw(key + "_file") else { return nil }
        let path = self.path(file)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(key: key + "_file", problem: "cannot read \(path)")
        }
        let value = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !value.isEmpty else { throw ConfigurationError(key: key + "_file", problem: "\(path) is empty") }
        return value
    }

    /// A file the configuration names (relative to the config file's folder), which must be readable.
    func file(_ key: String) throws -> String? {
        guard let text = raw(key) else { return nil }
        let path = self.path(text)
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw ConfigurationError(key: key, problem: "cannot read \(path)")
        }
        return path
    }

    func path(_ text: String) -> String {
        text.hasPrefix("/") ? text : URL(fileURLWithPath: baseDirectory).appendingPathComponent(text).standardized.path
    }
}

/// The longest duration any key accepts (100 years): longer values are typos, and would overflow
/// the arithmetic that backoff and timeouts do with them.
let maximumDuration: Duration = .seconds(36_500 * 86_400)

/// A recorder of the keys the configuration code reads.
final class ConfigKeyRecorder: Sendable {
    private let keys = Mutex<Set<String>>([])
    func record(_ key: String) { keys.withLock { _ = $0.insert(key) } }
    var recorded: Set<String> { keys.withLock { $0 } }
}

/// Parses `250ms`, `5s`, `1.5s`, `2m`, `1h`, or a bare number of seconds. Negative values parse
/// (so the caller can say "must be positive"); huge ones are clamped past ``maximumDuration`` (so
/// the caller can say "must be at most") instead of overflowing.
func parseDuration(_ text: String) -> Duration? {
    let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
    func milliseconds(_ number: Double, _ scale: Double) -> Duration {
        let ms = min(max(number * scale * 1000, -1e15), 1e15)
        return .milliseconds(Int64(ms.rounded()))
    }
    for (suffix, scale) in units where trimmed.hasSuffix(suffix) {
        guard let number = Double(trimmed.dropLast(suffix.count)), number.isFinite else { return nil }
        return milliseconds(number, scale)
    }
    guard let seconds = Double(trimmed), seconds.isFinite else { return nil }
    return milliseconds(seconds, 1)
}
