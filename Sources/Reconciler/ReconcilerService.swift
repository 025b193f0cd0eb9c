import CoreMetrics
import Foundation
import OutboxCore
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import Tracing

/// `outbox-reconciler serve`: a scan every `reconciler.interval`, repairs (unless
/// `reconciler.repair: false`), alerts on change, metrics and health endpoints.
public actor ReconcilerService: Service {
    let configuration: OutboxConfiguration
    let logger: Logger
    let alerts: AlertManager
    public let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    private var lastReport: ReconcileReport?
    private var lastError: String?
    private var lastScanAt: Date?
    private var db: PostgresConnection?

    public init(configuration: OutboxConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.alerts = AlertManager(settings: configuration.reconciler, redis: configuration.redis, logger: logger)
        self.factory = PrometheusMetricsFactory(registry: registry)
        BuildInfo.register(in: factory)
        // The counters an alert rule takes increase() of are there from start-up, at 0: a series
        // that appears with its first increment, at 1, shows no increase for that first event.
        for category in ReconcileReport.Category.allCases {
            for state in ["firing", "resolved"] {
                _ = Metrics.Counter(label: "reconciler_alerts_total", dimensions: [("category", category.rawValue), ("state", state)], factory: factory)
            }
        }
        _ = Metrics.Counter(label: "reconciler_scan_errors_total", dimensions: [], factory: factory)
    }

    /// For metrics made outside this type (span export's).
    public nonisolated var metricsFactory: any MetricsFactory { factory }

    /// Scans until SIGTERM/SIGINT: graceful shutdown cancels the loop, which ends the sleep at
    /// once and a scan at its next statement (repairs are enqueued in transactions, so a cancelled
    /// scan leaves nothing half-done).
    public func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.scanOnce()
                // Until the next scan, undelivered alert notifications are tried as they come due.
                let nextScan = ContinuousClock.now + self.configuration.reconciler.interval
                while ContinuousClock.now < nextScan {
                    try await Task.sleep(until: min(nextScan, await self.alerts.nextDue ?? nextScan), clock: .continuous)
                    await self.alerts.deliverDue()
                }
            }
        }
        logger.info("Reconciler stopped")
    }

    func scanOnce() async {
        var options = Reconciler.Options()
        options.dryRun = !configuration.reconciler.repair
        do {
            if db == nil {
                var postgres = configuration.postgres
                postgres.applicationName = "outbox-reconciler"
                db = try await PostgresConnection.connect(postgres, logger: logger)
            }
            // A span per scan (with span export on): its Qdrant requests carry its traceparent.
            let report = try await withSpan("reconciler scan") { span in
                let report = try await Reconciler(configuration: configuration, settings: configuration.reconciler, logger: logger)
                    .run(db!, options: options)
                span.attributes["reconciler.rows_scanned"] = report.rowsScanned
                span.attributes["reconciler.consistent"] = report.isConsistent
                return report
            }
            lastReport = report
            lastError = nil
            lastScanAt = Date()
            record(report)
            let raised = await alerts.process(report)
            for alert in raised {
                Metrics.Counter(label: "reconciler_alerts_total", dimensions: [("category", alert.category), ("state", alert.state)],
                                factory: factory).increment()
            }
            logger.info("Scan finished", metadata: [
                "reconciler.consistent": "\(report.isConsistent)", "reconciler.rows_scanned": "\(report.rowsScanned)",
                "reconciler.duration_ms": "\(Int(report.duration.seconds * 1000))",
            ])
        } catch {
            lastError = "\(error)"
            if error is PostgresError { db = nil }
            Metrics.Counter(label: "reconciler_scan_errors_total", dimensions: [], factory: factory).increment()
            logger.error("Scan failed", metadata: ["error": "\(error)"])
        }
    }

    private func record(_ report: ReconcileReport) {
        for (table, categories) in report.findings {
            for (category, finding) in categories {
                let dimensions = [("table", table), ("category", category.rawValue)]
                Metrics.Gauge(label: "reconciler_findings", dimensions: dimensions, factory: factory).record(finding.count)
                Metrics.Counter(label: "reconciler_repairs_total", dimensions: dimensions, factory: factory).increment(by: finding.repaired)
            }
        }
        Metrics.Counter(label: "reconciler_rows_scanned_total", dimensions: [], factory: factory).increment(by: report.rowsScanned)
        Metrics.Timer(label: "reconciler_scan_duration_seconds", dimensions: [], factory: factory)
            .recordNanoseconds(Int64(report.duration.seconds * 1e9))
    }

    public nonisolated var handlers: HealthServer.Handlers {
        HealthServer.Handlers(
            notReady: { await self.notReady() },
            metrics: { MetricHelp.annotate(await self.registry.emitToString()) },
            status: { await self.status() })
    }

    func notReady() -> [String] {
        if let lastError { return ["last scan failed: \(lastError)"] }
        if lastScanAt == nil { return ["starting: first scan not finished"] }
        return []
    }

    func status() async -> JSONValue {
        [
            "service": "outbox-reconciler",
            "last_scan_at": lastScanAt.map { .string(ISO8601DateFormatter().string(from: $0)) } ?? .null,
            "last_error": lastError.map(JSONValue.string) ?? .null,
            "last_report": lastReport?.json ?? .null,
            "pending_alerts": await alerts.pendingStatus,
            "postgres": ["url": .string(configuration.postgres.redactedURL)],
            "qdrant": ["url": .string(configuration.qdrant.redactedURL)],
        ]
    }
}
