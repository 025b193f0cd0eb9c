import Foundation
import Yams

/// How the relay claims, retries and serves health.
///
/// | key | type | default |
/// |---|---|---|
/// | `relay.http.host` / `relay.http.port` | string / int | `127.0.0.1` / `8470` |
/// | `relay.batch_size` | int, keys per claim | `500` |
/// | `relay.batch_events` | int, events per claim | `5000` |
/// | `relay.max_per_key` | int, events of one key per claim | `100` |
/// | `relay.batch_bytes` | int, payload bytes the relay's claims hold at once | `67108864` |
/// | `relay.poll_interval` | duration, fallback poll | `5s` |
/// | `relay.claim_idle_timeout` | duration | `2m` |
/// | `relay.max_attempts` | int | `25` |
/// | `relay.max_age` | duration | `24h` |
/// | `relay.backoff_initial` / `relay.backoff_max` | duration | `500ms` / `5m` |
/// | `relay.shutdown_grace` | duration | `15s` |
/// | `relay.qdrant_max_batch_bytes` | int | `8388608` |
/// | `redis.dedupe_ttl` | duration | `7d` |
/// | `redis.dedupe_prefix` | string | `outbox:dedupe` |
/// | `redis.wait_replicas` | int, replicas that must acknowledge a delivery (`WAIT`); 0: off | `0` |
/// | `redis.wait_timeout` | duration, how long `WAIT` waits for them | `1s` |
public struct RelaySettings: Sendable {
    public var httpHost = "127.0.0.1"
    public var httpPort = 8470
    public var batchSize = 500
    public var batchEvents = 5000
    public var maxPerKey = 100
    /// Payload bytes (as written, before TOAST compression) that the relay's open claims hold at
    /// once, all lanes of both destinations together: each lane claims at most its share
    /// (``claimBytes(lanes:)``). An event larger than a share is still claimed, alone.
    public var batchBytes = 64 * 1024 * 1024
    public var pollInterval: Duration = .seconds(5)
    /// Postgres ends a relay session idle this long inside a claim (e.g. a process frozen by
    /// SIGSTOP), releasing its claims to other relays.
    public var claimIdleTimeout: Duration = .seconds(120)
    public var maxAttempts = 25
    public var maxAge: Duration = .seconds(86_400)
    public var backoff = Backoff()
    public var shutdownGrace: Duration = .seconds(15)
    public var qdrantMaxBatchBytes = 8 * 1024 * 1024
    public var dedupeTTL: Duration = .seconds(7 * 86_400)
    public var dedupePrefix = "outbox:dedupe"
    /// Replicas of the Redis master that must hold a delivery (`WAIT`) before its events count as
    /// delivered; 0: none (Redis' asynchronous replication alone). docs/RELIABILITY.md.
    public var waitReplicas = 0
    public var waitTimeout: Duration = .seconds(1)

    public init() {}

    /// The payload bytes one claim may take when `lanes` lanes claim at once.
    public func claimBytes(lanes: Int) -> Int { max(1, batchBytes / max(1, lanes)) }

    init(_ c: ConfigValues) throws {
        httpHost = try c.string("relay.http.host", default: httpHost)
        httpPort = try c.int("relay.http.port", default: httpPort, range: 0...65535)
        batchSize = try c.int("relay.batch_size", default: batchSize, range: 1...10_000)
        batchEvents = try c.int("relay.batch_events", default: batchEvents, range: 1...100_000)
        maxPerKey = try c.int("relay.max_per_key", default: maxPerKey, range: 1...10_000)
        batchBytes = try c.int("relay.batch_bytes", default: batchBytes, range: (1024 * 1024)...(1 << 40))
        pollInterval = try c.duration("relay.poll_interval", default: pollInterval)
        claimIdleTimeout = try c.duration("relay.claim_idle_timeout", default: claimIdleTimeout)
        // Postgres' idle_in_transaction_session_timeout is an int of milliseconds: a longer value
        // would be refused by every relay session, at run time, over and over.
        guard claimIdleTimeout <= .milliseconds(Int64(Int32.max)) else {
            throw ConfigurationError(
                key: "relay.claim_idle_timeout", problem: "must be at most 2147483647ms (about 24.8 days), Postgres' limit")
        }
        maxAttempts = try c.int("relay.max_attempts", default: maxAttempts, range: 1...1_000_000)
        maxAge = try c.duration("relay.max_age", default: maxAge)
        backoff.initial = try c.duration("relay.backoff_initial", default: backoff.initial)
        backoff.maximum = try c.duration("relay.backoff_max", default: backoff.maximum)
        guard backoff.maximum >= backoff.initial else {
            throw ConfigurationError(key: "relay.backoff_max", problem: "must not be below relay.backoff_initial")
        }
        shutdownGrace = try c.duration("relay.shutdown_grace", default: shutdownGrace)
        qdrantMaxBatchBytes = try c.int(
            "relay.qdrant_max_batch_bytes", default: qdrantMaxBatchBytes, range: 65_536...(30 * 1024 * 1024))
        dedupeTTL = try c.duration("redis.dedupe_ttl", default: dedupeTTL)
        dedupePrefix = try c.string("redis.dedupe_prefix", default: dedupePrefix)
        waitReplicas = try c.int("redis.wait_replicas", default: waitReplicas, range: 0...64)
        waitTimeout = try c.duration("redis.wait_timeout", default: waitTimeout)
    }
}

/// Exponential backoff with full jitter, capped.
public struct Backoff: Sendable, Equatable {
    package init(initial: Duration = .milliseconds(500), maximum: Duration = .seconds(300)) {
        (self.initial, self.maximum) = (initial, maximum)
    }

    public var initial: Duration
    public var maximum: Duration

    /// The delay before attempt `attempt + 1` (attempt counts from 1), in
    /// `[ceiling/2, ceiling]` where ceiling = min(maximum, initial × 2^(attempt-1)).
    public func delay(afterAttempt attempt: Int, random: Double = Double.random(in: 0...1)) -> Duration {
        let exponent = Double(min(max(attempt - 1, 0), 40))
        let ceiling = min(maximum.seconds, initial.seconds * pow(2, exponent))
        return .milliseconds(Int64((ceiling * (0.5 + 0.5 * random)) * 1000))
    }
}

/// A domain table whose rows an upsert's `source` may name (`tables:` in config).
public struct TableMapping: Sendable, Hashable {
    /// The name events use in `source.table`.
    public var name: String
    public var table: SQLTableName
    public var idColumn: SQLIdentifier
    public var textColumn: SQLIdentifier
    public var embeddingColumn: SQLIdentifier
    public var createdAtColumn: SQLIdentifier
    /// The Qdrant collection holding this table's points (used by the reconciler).
    public var collection: String
    /// Columns whose values a repaired point's payload carries (`payload_columns`), keyed by
    /// column name, so a repair rebuilds the point as the writer made it rather than with `{}`.
    public var payloadColumns: [SQLIdentifier] = []
    /// A column holding the row's vector (`vector_column`: `real[]`, `double precision[]` or
    /// pgvector's `vector`), for tables whose writers bring their own vectors: a repair sends it
    /// instead of the text (which the relay would embed), or the text where the row has none.
    public var vectorColumn: SQLIdentifier?

    public static let extractions = try! TableMapping(
        name: "extractions", table: "public.extractions", idColumn: "id", textColumn: "content",
        embeddingColumn: "embedding_id", createdAtColumn: "created_at", collection: "extractions")

    init(name: String, table: String, idColumn: String, textColumn: String, embeddingColumn: String,
         createdAtColumn: String, collection: String) throws {
        self.name = name
        self.table = try SQLTableName(table)
        self.idColumn = try SQLIdentifier(idColumn)
        self.textColumn = try SQLIdentifier(textColumn)
        self.embeddingColumn = try SQLIdentifier(embeddingColumn)
        self.createdAtColumn = try SQLIdentifier(createdAtColumn)
        self.collection = collection
    }
}

/// A Qdrant collection the relay creates when missing (`qdrant.collections:` in config), and how
/// writes to it are sent.
public struct CollectionSpec: Sendable, Hashable {
    public var name: String
    public var size: Int
    public var distance: String
    /// `ordering`: nil takes `qdrant.ordering`.
    public var ordering: WriteOrdering? = nil
    /// `shard_key` or `shard_key_field`. A collection with a shard key uses custom sharding, which
    /// the relay does not set up: it is never created by the relay.
    public var shardKey: ShardKeySource? = nil

    /// Whether the relay creates it when missing (at start, and on a 404).
    public var createdByRelay: Bool { shardKey == nil }
}

/// How `qdrant.upsert` events with `text` and no `vector` get their vector.
public struct EmbeddingSettings: Sendable {
    public enum Provider: String, Sendable { case hashing, openai }
    public var provider: Provider = .hashing
    public var dimensions = 384
    public var baseURL = "https://api.openai.com"
    public var model = "text-embedding-3-small"
    public var apiKey: String?
    public var batchSize = 64
    public var timeout: Duration = .seconds(30)

    public init() {}

    init(_ c: ConfigValues) throws {
        let providerText = try c.string("embedding.provider", default: provider.rawValue)
        guard let provider = Provider(rawValue: providerText) else {
            throw ConfigurationError(key: "embedding.provider", problem: "must be hashing or openai, got \"\(providerText)\"")
        }
        self.provider = provider
        dimensions = try c.int("embedding.dimensions", default: dimensions, range: 1...65_536)
        baseURL = try c.string("embedding.base_url", default: baseURL, secret: true)
        model = try c.string("embedding.model", default: model)
        apiKey = try c.secret("embedding.api_key")
        batchSize = try c.int("embedding.batch_size", default: batchSize, range: 1...2048)
        timeout = try c.duration("embedding.timeout", default: timeout)
        if provider == .openai, apiKey == nil {
            throw ConfigurationError(
                key: "embedding.api_key", problem: "required for provider openai (set OUTBOX_EMBEDDING_API_KEY or embedding.api_key_file)")
        }
    }
}

/// Reads the map-valued sections (`tables:`, `qdrant.collections:`) that a key/value reader cannot
/// enumerate.
enum ConfigMaps {
    static func load(document: Any?) throws -> (tables: [String: TableMapping], collections: [String: CollectionSpec]) {
        let root = Dictionary(document.flatMap(ConfigKeys.mapping) ?? [], uniquingKeysWith: { _, last in last })
        var tables: [String: TableMapping] = [:]
        if let section = root["tables"] {
            guard let map = section as? [String: Any] else {
                throw ConfigurationError(key: "tables", problem: "must be a map of name: {table, id_column, ...}")
            }
            for (name, value) in map {
                guard let fields = value as? [String: Any] else {
                    throw ConfigurationError(key: "tables.\(name)", problem: "must be a map")
                }
                func field(_ key: String, _ fallback: String) throws -> String {
                    guard let raw = fields[key] else { return fallback }
                    guard let text = raw as? String, !text.isEmpty else {
                        throw ConfigurationError(key: "tables.\(name).\(key)", problem: "must be a non-empty string")
                    }
                    return text
                }
                do {
                    var mapping = try TableMapping(
                        name: name, table: try field("table", "public.\(name)"), idColumn: try field("id_column", "id"),
                        textColumn: try field("text_column", "content"),
                        embeddingColumn: try field("embedding_column", "embedding_id"),
                        createdAtColumn: try field("created_at_column", "created_at"),
                        collection: try field("collection", name))
                    if let raw = fields["payload_columns"] {
                        guard let columns = raw as? [Any], columns.allSatisfy({ $0 is String }) else {
                            throw ConfigurationError(key: "tables.\(name).payload_columns", problem: "must be a list of column names")
                        }
                        do {
                            mapping.payloadColumns = try columns.map { try SQLIdentifier($0 as! String) }
                        } catch let error as SQLIdentifier.Invalid {
                            throw ConfigurationError(key: "tables.\(name).payload_columns", problem: error.description)
                        }
                    }
                    if fields["vector_column"] != nil {
                        do {
                            mapping.vectorColumn = try SQLIdentifier(try field("vector_column", ""))
                        } catch let error as SQLIdentifier.Invalid {
                            throw ConfigurationError(key: "tables.\(name).vector_column", problem: error.description)
                        }
                    }
                    tables[name] = mapping
                } catch let error as SQLIdentifier.Invalid {
                    throw ConfigurationError(key: "tables.\(name)", problem: error.description)
                }
            }
        } else {
            tables["extractions"] = .extractions
        }
        var collections: [String: CollectionSpec] = [:]
        if let section = (root["qdrant"] as? [String: Any])?["collections"] {
            guard let map = section as? [String: Any] else {
                throw ConfigurationError(key: "qdrant.collections", problem: "must be a map of name: {size, distance}")
            }
            for (name, value) in map {
                let fields = value as? [String: Any] ?? [:]
                guard let size = fields["size"] as? Int, size > 0 else {
                    throw ConfigurationError(key: "qdrant.collections.\(name).size", problem: "must be a positive integer")
                }
                let distance = fields["distance"] as? String ?? "Cosine"
                guard ["Cosine", "Dot", "Euclid", "Manhattan"].contains(distance) else {
                    throw ConfigurationError(
                        key: "qdrant.collections.\(name).distance", problem: "must be Cosine, Dot, Euclid or Manhattan, got \"\(distance)\"")
                }
                var spec = CollectionSpec(name: name, size: size, distance: distance)
                if let raw = fields["ordering"] {
                    guard let text = raw as? String, let ordering = WriteOrdering(rawValue: text) else {
                        throw ConfigurationError(
                            key: "qdrant.collections.\(name).ordering", problem: "must be weak, medium or strong, got \"\(raw)\"")
                    }
                    spec.ordering = ordering
                }
                if fields["shard_key"] != nil, fields["shard_key_field"] != nil {
                    throw ConfigurationError(
                        key: "qdrant.collections.\(name).shard_key_field",
                        problem: "set either shard_key (one key for every write) or shard_key_field (a field of each event), not both")
                }
                if let raw = fields["shard_key"] {
                    // YAML gives an Int for 7, a String for "eu" or '7'.
                    let json: JSONValue? = switch raw {
                    case let text as String: .string(text)
                    case let number as Int: number >= 0 ? .number(Double(number)) : nil
                    default: nil
                    }
                    guard let json, let key = ShardKey(json: json) else {
                        throw ConfigurationError(
                            key: "qdrant.collections.\(name).shard_key", problem: "must be a non-empty string or an unsigned integer, got \"\(raw)\"")
                    }
                    spec.shardKey = .fixed(key)
                }
                if let raw = fields["shard_key_field"] {
                    guard let field = raw as? String, !field.isEmpty else {
                        throw ConfigurationError(
                            key: "qdrant.collections.\(name).shard_key_field", problem: "must be the name of a field of the events' payloads, got \"\(raw)\"")
                    }
                    spec.shardKey = .field(field)
                }
                collections[name] = spec
            }
        }
        return (tables, collections)
    }
}
