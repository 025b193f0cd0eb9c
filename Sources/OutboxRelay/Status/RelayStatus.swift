import Foundation
import OutboxCore
import CoreMetrics
import Logging
import Prometheus

/// Backlog figures read from the database: for `/status`, `/metrics` and `outbox-relay status`.
public struct BacklogStats: Sendable {
    public struct Destination: Sendable {
        public let pending: Int
        public let available: Int
        public let oldestPendingSeconds: Double
        public let deadLetters: Int
    }

    public let destinations: [OutboxEvent.Destination: Destination]

    public static func read(_ db: PostgresConnection) async throws -> BacklogStats {
        let rows = try await db.query(
            """
            SELECT d.destination,
                   (SELECT count(*) FROM outbox.events e WHERE e.destination = d.destination) AS pending,
                   (SELECT count(*) FROM outbox.events e WHERE e.destination = d.destination AND e.available_at <= now()) AS available,
                   coalesce((SELECT extract(epoch FROM now() - min(e.created_at))::float8
                             FROM outbox.events e WHERE e.destination = d.destination), 0) AS oldest,
                   (SELECT count(*) FROM outbox.dead_letters x WHERE x.destination = d.destination) AS dead
            FROM (VALUES ('qdrant'), ('redis')) AS d(destination)
            """)
        var destinations: [OutboxEvent.Destination: Destination] = [:]
        for row in rows.rows {
            guard let destination = OutboxEvent.Destination(rawValue: try row.decode("destination")) else { continue }
            destinations[destination] = Destination(
                pending: try row.decode("pending"), available: try row.decode("available"),
                oldestPendingSeconds: try row.decode("oldest"), deadLetters: try row.decode("dead"))
        }
        return BacklogStats(destinations: destinations)
    }
}

/// Serves the relay's health endpoints from its health state, its metrics and a stats connection
/// opened on first use (an idle relay that nobody scrapes costs no query).
///
/// The backlog figures count `outbox.events`, which costs time in proportion to the backlog
/// (~35 ms for 100,000 events, ~80 ms for 200,000 while the relay drains them), so they are reused
/// for a second, or for 20 times as long as the last count took: however often `/metrics` and
/// `/status` are scraped, counting costs the database at most one query a second and at most
/// 5 % of a core.
public actor RelayStatusProvider {
    let configuration: OutboxConfiguration
    let health: RelayHealth
    let metrics: RelayMetrics
    let logger: Logger
    private var db: PostgresConnection?
    private var lastStats: (read: ContinuousClock.Instant, fresh: Duration, stats: BacklogStats)?

    public init(configuration: OutboxConfiguration, health: RelayHealth, metrics: RelayMetrics, logger: Logger) {
        self.configuration = configuration
        self.health = health
        self.metrics = metrics
        self.logger = logger
    }

    private func stats() async -> Result<BacklogStats, any Error> {
        if let lastStats, ContinuousClock.now - lastStats.read < lastStats.fresh { return .success(lastStats.stats) }
        do {
            if db == nil {
                var postgres = configuration.postgres
                postgres.applicationName = "outbox-relay-status"
                postgres.connectTimeout = .seconds(2)
                db = try await PostgresConnection.connect(postgres, logger: logger)
            }
            let started = ContinuousClock.now
            let stats = try await BacklogStats.read(db!)
            lastStats = (.now, max(.seconds(1), (ContinuousClock.now - started) * 20), stats)
            return .success(stats)
        } catch {
            db = nil
            return .failure(error)
        }
    }

    public nonisolated var handlers: HealthServer.Handlers {
        HealthServer.Handlers(
            notReady: { await self.health.notReadyReasons() },
            metrics: { await self.renderMetrics() },
            status: { await self.renderStatus() })
    }

    func renderMetrics() async -> String {
        if case .success(let stats) = await stats() {
            for (destination, figures) in stats.destinations {
                metrics.backlog(destination).record(figures.pending)
                metrics.oldestPending(destination).record(figures.oldestPendingSeconds)
                metrics.deadLetters(destination).record(figures.deadLetters)
            }
        }
        for destination in OutboxEvent.Destination.allCases {
            metrics.failingSeconds(destination).record(await health.failingSeconds(destination))
        }
        metrics.ready().record(await health.notReadyReasons().isEmpty ? 1 : 0)
        return MetricHelp.annotate(metrics.registry.emitToString())
    }

    func renderStatus() async -> JSONValue {
        let snapshot = await health.snapshot()
        let reasons = await health.notReadyReasons()
        let statsResult = await stats()
        let formatter = ISO8601DateFormatter()
        var destinations: [String: JSONValue] = [:]
        for destination in [OutboxEvent.Destination.qdrant, .redis] {
            let totals = snapshot.totals[destination] ?? .init()
            var entry: [String: JSONValue] = [
                "delivered": .number(Double(totals.delivered)),
                "retried": .number(Double(totals.retried)),
                "dead_lettered": .number(Double(totals.deadLettered)),
                "last_delivery_at": snapshot.lastDelivery[destination].map { .string(formatter.string(from: $0)) } ?? .null,
                "failing": snapshot.failures[destination].map {
                    ["since": .string(formatter.string(from: $0.since)), "error": .string($0.message)]
                } ?? .null,
            ]
            if case .success(let stats) = statsResult, let figures = stats.destinations[destination] {
                entry["pending"] = .number(Double(figures.pending))
                entry["available"] = .number(Double(figures.available))
                entry["oldest_pending_seconds"] = .number((figures.oldestPendingSeconds * 1000).rounded() / 1000)
                entry["dead_letters"] = .number(Double(figures.deadLetters))
            }
            destinations[destination.rawValue] = .object(entry)
        }
        return [
            "service": "outbox-relay",
            "started_at": .string(formatter.string(from: await health.startedAt)),
            "ready": .bool(reasons.isEmpty),
            "not_ready_reasons": .array(reasons.map(JSONValue.string)),
            "postgres": ["url": .string(configuration.postgres.redactedURL)],
            "redis": ["url": .string(configuration.redis.redactedURL)],
            "qdrant": ["url": .string(configuration.qdrant.redactedURL)],
            "destinations": .object(destinations),
        ]
    }
}
