import Foundation
import Logging

/// Connects to each store named in the configuration and reports what answered, and validates
/// what a daemon's start-up needs of Postgres: the outbox schema at this binary's version, and the
/// mapped tables and columns. Used by `outbox-relay check` and `outbox-reconciler check`.
public enum Connectivity {
    public struct Probe: Sendable {
        public let store: String
        /// The config key to change (`postgres.url`, `tables.extractions`, `schema.directory`, …).
        public let key: String
        /// The address with secrets removed.
        public let address: String
        /// nil when reachable and valid; otherwise the (secret-free) reason.
        public let problem: String?
        public let detail: String

        init(store: String, key: String? = nil, address: String, problem: String?, detail: String) {
            (self.store, self.key, self.address, self.problem, self.detail) = (store, key ?? store + ".url", address, problem, detail)
        }
    }

    /// Postgres and Qdrant, and Redis when `redis` (the relay; the reconciler when it publishes alerts there).
    public static func probe(_ config: OutboxConfiguration, redis: Bool = true, logger: Logger) async -> [Probe] {
        async let postgres = probePostgres(config, logger: logger)
        async let qdrant = probeQdrant(config, logger: logger)
        guard redis else { return await [postgres, qdrant] }
        async let redisProbe = probeRedis(config.redis, logger: logger)
        return await [postgres, redisProbe, qdrant]
    }

    static func probePostgres(_ configuration: OutboxConfiguration, logger: Logger) async -> Probe {
        var config = configuration.postgres
        config.applicationName = "outbox-check"
        let connection: PostgresConnection
        let version: String
        do {
            connection = try await PostgresConnection.connect(config, logger: logger)
            version = try await connection.query("SELECT current_setting('server_version') AS v").first!.decode("v")
        } catch {
            return Probe(store: "postgres", address: config.redactedURL, problem: "\(error)", detail: "")
        }
        defer { Task { await connection.close() } }
        func failed(_ key: String, _ problem: String) -> Probe {
            Probe(store: "postgres", key: key, address: config.redactedURL, problem: problem, detail: "")
        }
        // What serve needs: the schema at this binary's version, then the mapped tables and columns.
        do {
            let migrator = try Migrator(directory: configuration.schemaDirectory, logger: logger)
            if let problem = try await migrator.standing(of: connection).problem {
                return failed(problem.key, problem.problem)
            }
            _ = try await SourceColumnTypes.resolve(configuration.tables, on: connection)
        } catch let problem as SourceColumnTypes.Problem {
            return failed(problem.key, problem.message)
        } catch let error as Migrator.MigrationError {
            return failed("schema.directory", error.message)
        } catch {
            return failed("postgres.url", "\(error)")
        }
        return Probe(
            store: "postgres", address: config.redactedURL, problem: nil,
            detail: "server \(version), outbox schema up to date, \(configuration.tables.count) mapped table(s) found")
    }

    static func probeRedis(_ config: RedisConfiguration, logger: Logger) async -> Probe {
        do {
            let (connection, cluster) = try await RedisCluster.open(config, logger: logger)
            let info = try await connection.command("INFO", "server").string ?? ""
            let version = info.split(whereSeparator: \.isNewline)
                .first { $0.hasPrefix("redis_version:") }?.dropFirst("redis_version:".count) ?? "?"
            if let cluster {
                let (masters, unserved) = (await cluster.knownMasters.count, await cluster.unservedSlots)
                let slots = unserved == 0 ? "all \(RedisSlot.count) slots served" : "\(unserved) of \(RedisSlot.count) slots have no master"
                return Probe(
                    store: "redis", address: config.redactedURL, problem: unserved == 0 ? nil : slots,
                    detail: "server \(version), Redis Cluster of \(masters) masters, \(slots)")
            }
            return Probe(store: "redis", address: config.redactedURL, problem: nil, detail: "server \(version)")
        } catch let error as ConfigurationError {
            return Probe(store: "redis", key: error.key, address: config.redactedURL, problem: error.problem, detail: "")
        } catch {
            return Probe(store: "redis", address: config.redactedURL, problem: "\(error)", detail: "")
        }
    }

    static func probeQdrant(_ configuration: OutboxConfiguration, logger: Logger) async -> Probe {
        // The configured `qdrant.timeout`, as the daemons use it: `check` fails where they
        // would, not where a busy Qdrant is merely slower than a stricter bound of its own.
        let config = configuration.qdrant
        do {
            let client = QdrantClient(configuration: config, logger: logger)
            let reply = try await client.call(.listCollections)
            guard reply.status == 200 else {
                return Probe(store: "qdrant", address: config.redactedURL, problem: "GET /collections answered \(reply.status)", detail: "")
            }
            if let problem = try await client.collectionProblem(configuration.collections) {
                return Probe(store: "qdrant", key: problem.key, address: config.redactedURL, problem: problem.problem, detail: "")
            }
            let count = reply.result?["collections"]?.arrayValue?.count ?? 0
            return Probe(store: "qdrant", address: config.redactedURL, problem: nil, detail: "\(count) collection(s)")
        } catch {
            return Probe(store: "qdrant", address: config.redactedURL, problem: "\(error)", detail: "")
        }
    }
}
