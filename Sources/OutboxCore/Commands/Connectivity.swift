import Foundation
import Logging

/// Connects to each store named in the configuration and reports what answered.
/// Used by `outbox-relay check` and `outbox-reconciler check`.
public enum Connectivity {
    public struct Probe: Sendable {
        public let store: String
        /// The config key naming the store's address (`postgres.url`, …).
        public var key: String { store + ".url" }
        /// The address with secrets removed.
        public let address: String
        /// nil when reachable; otherwise the (secret-free) reason.
        public let problem: String?
        public let detail: String
    }

    public static func probe(_ config: OutboxConfiguration, logger: Logger) async -> [Probe] {
        async let postgres = probePostgres(config.postgres, logger: logger)
        async let redis = probeRedis(config.redis, logger: logger)
        async let qdrant = probeQdrant(config.qdrant, logger: logger)
        return await [postgres, redis, qdrant]
    }

    static func probePostgres(_ config: PostgresConfiguration, logger: Logger) async -> Probe {
        do {
            var config = config
            config.applicationName = "outbox-check"
            let connection = try await PostgresConnection.connect(config, logger: logger)
            let row = try await connection.query("""
                SELECT current_setting('server_version') AS version,
                       to_regclass('outbox.events') IS NOT NULL AS migrated
                """).first!
            let migrated: Bool = try row.decode("migrated")
            return Probe(
                store: "postgres", address: config.redactedURL, problem: nil,
                detail: "server \(try row.decode("version", as: String.self)), "
                    + (migrated ? "outbox schema present" : "outbox schema missing: run `outbox-relay migrate`"))
        } catch {
            return Probe(store: "postgres", address: config.redactedURL, problem: "\(error)", detail: "")
        }
    }

    static func probeRedis(_ config: RedisConfiguration, logger: Logger) async -> Probe {
        do {
            let connection = try await RedisConnection.connect(config, logger: logger)
            let info = try await connection.command("INFO", "server").string ?? ""
            let version = info.split(whereSeparator: \.isNewline)
                .first { $0.hasPrefix("redis_version:") }?.dropFirst("redis_version:".count) ?? "?"
            return Probe(store: "redis", address: config.redactedURL, problem: nil, detail: "server \(version)")
        } catch {
            return Probe(store: "redis", address: config.redactedURL, problem: "\(error)", detail: "")
        }
    }

    static func probeQdrant(_ config: QdrantConfiguration, logger: Logger) async -> Probe {
        var quick = config
        quick.timeout = .seconds(5)
        do {
            let reply = try await QdrantClient(configuration: quick, logger: logger).call(.listCollections)
            guard reply.status == 200 else {
                return Probe(store: "qdrant", address: config.url, problem: "GET /collections answered \(reply.status)", detail: "")
            }
            let count = reply.result?["collections"]?.arrayValue?.count ?? 0
            return Probe(store: "qdrant", address: config.url, problem: nil, detail: "\(count) collection(s)")
        } catch {
            return Probe(store: "qdrant", address: config.url, problem: "\(error)", detail: "")
        }
    }
}
