import Foundation
import OutboxCore
import CoreMetrics
import Metrics
import Prometheus

/// What the relay knows about its own health: feeds `/readyz`, `/status` and the metrics.
public actor RelayHealth {
    public struct Failure: Sendable, Equatable {
        public let message: String
        public let since: Date
    }

    /// Connection failures by component (`listener`, `redis worker`, …), with the store that could
    /// not be reached: one component's success does not clear another's failure.
    private(set) var connectionFailures: [String: (store: String, failure: Failure)] = [:]
    /// Components that have not completed start-up yet.
    private(set) var starting: Set<String> = ["listener", "redis worker", "qdrant worker"]
    private(set) var destinationFailures: [OutboxEvent.Destination: Failure] = [:]
    /// Destinations whose last idle probe failed (see ``Deliverer/probe()``).
    private(set) var probeFailures: [OutboxEvent.Destination: Failure] = [:]
    private(set) var totals: [OutboxEvent.Destination: Settlement.Counts] = [:]
    private(set) var lastDelivery: [OutboxEvent.Destination: Date] = [:]
    public let startedAt = Date()

    public init() {}

    func postgresOK(_ component: String) {
        connectionFailures[component] = nil
        starting.remove(component)
    }

    /// `store` is the one `component` could not reach: Postgres, or at start-up its destination.
    func connectionFailed(_ component: String, _ message: String, store: String = "postgres") {
        if connectionFailures[component]?.store != store {
            connectionFailures[component] = (store, Failure(message: message, since: Date()))
        }
    }

    /// What a batch changed about its destination's progress, for the worker to log.
    enum Progress: Equatable {
        /// Nothing delivered, something to retry: the destination is failing from now on.
        case stopped
        /// Delivered again after failing since `since`.
        case resumed(since: Date)
    }

    /// A batch where nothing was delivered and something failed transiently marks the destination
    /// failing; any delivery clears it. Dead letters (bad events) say nothing about the destination.
    @discardableResult
    func record(_ ack: Settlement.Counts, destination: OutboxEvent.Destination, lastRetryReason: String?) -> Progress? {
        var total = totals[destination] ?? .init()
        total.delivered += ack.delivered
        total.retried += ack.retried
        total.deadLettered += ack.deadLettered
        totals[destination] = total
        if ack.delivered > 0 {
            let failedSince = destinationFailures[destination]?.since
            destinationFailures[destination] = nil
            probeFailures[destination] = nil
            lastDelivery[destination] = Date()
            return failedSince.map { .resumed(since: $0) }
        } else if ack.retried > 0, let reason = lastRetryReason, destinationFailures[destination] == nil {
            destinationFailures[destination] = Failure(message: reason, since: Date())
            return .stopped
        }
        return nil
    }

    /// Seconds since `destination` began failing (deliveries or probes), 0 when it is not.
    func failingSeconds(_ destination: OutboxEvent.Destination) -> Double {
        failingDestinations[destination].map { Date().timeIntervalSince($0.since) } ?? 0
    }

    /// The result of an idle probe: a failure marks the destination failing until a probe or a
    /// delivery succeeds.
    func probed(_ destination: OutboxEvent.Destination, failure: String?) {
        probeFailures[destination] = failure.map { Failure(message: $0, since: probeFailures[destination]?.since ?? Date()) }
    }

    /// Delivery and probe failures by destination, the older one where there are both.
    private var failingDestinations: [OutboxEvent.Destination: Failure] {
        destinationFailures.merging(probeFailures) { $0.since <= $1.since ? $0 : $1 }
    }

    /// Reasons the relay is not ready; empty when ready.
    public func notReadyReasons() -> [String] {
        var reasons: [String] = []
        for component in starting.sorted() { reasons.append("starting: \(component) not connected yet") }
        // The oldest failure per store: an unreachable Redis at start-up is not a Postgres outage.
        for store in Set(connectionFailures.values.map(\.store)).sorted() {
            if let oldest = connectionFailures.values.filter({ $0.store == store }).min(by: { $0.failure.since < $1.failure.since }) {
                reasons.append("\(store) unreachable: \(oldest.failure.message)")
            }
        }
        for (destination, failure) in failingDestinations.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            reasons.append("\(destination.rawValue) failing since \(ISO8601DateFormatter().string(from: failure.since)): \(failure.message)")
        }
        return reasons
    }

    /// Totals, failures and last deliveries by destination. A destination is failing when its
    /// deliveries fail or when it cannot be reached at all (its worker's connection), whichever began first.
    func snapshot() -> (totals: [OutboxEvent.Destination: Settlement.Counts], failures: [OutboxEvent.Destination: Failure],
                        lastDelivery: [OutboxEvent.Destination: Date])
    {
        var failures = failingDestinations
        for (store, failure) in connectionFailures.values {
            guard let destination = OutboxEvent.Destination(rawValue: store) else { continue }
            if let known = failures[destination], known.since <= failure.since { continue }
            failures[destination] = Failure(message: "unreachable: \(failure.message)", since: failure.since)
        }
        return (totals, failures, lastDelivery)
    }
}

/// The relay's Prometheus metrics. One registry per relay instance, so tests can run several.
public struct RelayMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5),
            .seconds(10), .seconds(30), .seconds(60), .seconds(300),
        ]
        self.factory = factory
        BuildInfo.register(in: factory)
    }

    func delivered(_ destination: OutboxEvent.Destination) -> Metrics.Counter {
        Metrics.Counter(label: "outbox_events_delivered_total", dimensions: [("destination", destination.rawValue)], factory: factory)
    }

    func failed(_ destination: OutboxEvent.Destination) -> Metrics.Counter {
        Metrics.Counter(label: "outbox_events_failed_total", dimensions: [("destination", destination.rawValue)], factory: factory)
    }

    func deadLettered(_ destination: OutboxEvent.Destination) -> Metrics.Counter {
        Metrics.Counter(label: "outbox_events_dead_lettered_total", dimensions: [("destination", destination.rawValue)], factory: factory)
    }

    /// Claims by whether they found events. Claims that find nothing are Postgres' work for no
    /// delivery: a lane passing over events that other lanes or relays hold, or waiting on a retry.
    func claims(_ destination: OutboxEvent.Destination, found: Bool) -> Metrics.Counter {
        Metrics.Counter(
            label: "outbox_relay_claims_total", dimensions: [("destination", destination.rawValue), ("result", found ? "events" : "empty")],
            factory: factory)
    }

    /// Commit (event `created_at`) → acknowledgement.
    func latency(_ destination: OutboxEvent.Destination) -> Metrics.Timer {
        Metrics.Timer(label: "outbox_delivery_latency_seconds", dimensions: [("destination", destination.rawValue)], factory: factory)
    }

    func backlog(_ destination: OutboxEvent.Destination) -> Metrics.Gauge {
        Metrics.Gauge(label: "outbox_backlog_events", dimensions: [("destination", destination.rawValue)], factory: factory)
    }

    /// How long the destination has been failing (nothing delivered, deliveries or probes failing);
    /// 0 while it works. The alert for a relay that makes no progress: `> 300` for five minutes.
    func failingSeconds(_ destination: OutboxEvent.Destination) -> Metrics.Gauge {
        Metrics.Gauge(label: "outbox_destination_failing_seconds", dimensions: [("destination", destination.rawValue)], factory: factory)
    }

    func oldestPending(_ destination: OutboxEvent.Destination) -> Metrics.Gauge {
        Metrics.Gauge(label: "outbox_oldest_pending_seconds", dimensions: [("destination", destination.rawValue)], factory: factory)
    }

    func deadLetters(_ destination: OutboxEvent.Destination) -> Metrics.Gauge {
        Metrics.Gauge(label: "outbox_dead_letters", dimensions: [("destination", destination.rawValue)], factory: factory)
    }

    /// Events whose `traceparent` is not a valid W3C trace context (counted once, at their first attempt).
    func invalidTraceContext(_ destination: OutboxEvent.Destination) -> Metrics.Counter {
        Metrics.Counter(label: "outbox_trace_context_invalid_total", dimensions: [("destination", destination.rawValue)], factory: factory)
    }

    /// For metrics made outside this type (span export's).
    public var metricsFactory: any MetricsFactory { factory }

    func ready() -> Metrics.Gauge {
        Metrics.Gauge(label: "outbox_relay_ready", dimensions: [], factory: factory)
    }
}
