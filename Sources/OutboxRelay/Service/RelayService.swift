import Foundation
import OutboxCore
import Logging
import ServiceLifecycle
import Tracing

/// `outbox-relay serve`: one worker per destination (each with its own Postgres connection, so a
/// dead Qdrant never slows Redis) and one listener that turns NOTIFY and a slow fallback poll
/// into wake-ups. On graceful shutdown the workers stop claiming, finish the batch in hand and
/// return; a batch still running when the process dies is rolled back by Postgres and released.
public final class RelayService: Service {
    let configuration: OutboxConfiguration
    public let health: RelayHealth
    public let metrics: RelayMetrics
    let logger: Logger
    /// The tracer of the events' spans (`TraceExport`); nil when span export is off.
    let tracer: (any Tracer)?
    private let wakeups: [OutboxEvent.Destination: Wakeup] = [.qdrant: Wakeup(), .redis: Wakeup()]

    public init(configuration: OutboxConfiguration, health: RelayHealth, metrics: RelayMetrics, logger: Logger, tracer: (any Tracer)? = nil) {
        self.configuration = configuration
        self.tracer = tracer
        self.health = health
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        // Every per-destination series from the start, at zero: a scrape, a dashboard and an alert
        // rule see the metric before its first event (a missing series reads as no data, not 0).
        for destination in [OutboxEvent.Destination.redis, .qdrant] {
            _ = (metrics.delivered(destination), metrics.failed(destination), metrics.deadLettered(destination))
            _ = (metrics.claims(destination, found: true), metrics.claims(destination, found: false))
            _ = metrics.invalidTraceContext(destination)
        }
        let stopping = StopFlag()
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                let listener = Task { await self.runListener(stopping: stopping) }
                for destination in [OutboxEvent.Destination.redis, .qdrant] {
                    group.addTask { try await self.runWorker(destination, stopping: stopping) }
                }
                defer { listener.cancel() }  // ends its LISTEN wait at once instead of at the next poll
                // Not waitForAll(), which rethrows a worker's error only once every worker has ended:
                // a configuration problem found by one worker must stop the relay, the other included.
                while try await group.next() != nil {}
            }
        } onGracefulShutdown: {
            stopping.set()
            Task { for wakeup in self.wakeups.values { await wakeup.signal() } }
        }
        logger.info("Relay stopped")
    }

    // MARK: Worker

    private func runWorker(_ destination: OutboxEvent.Destination, stopping: StopFlag) async throws {
        var logger = self.logger
        logger[metadataKey: "outbox.destination"] = "\(destination.rawValue)"
        let wakeup = wakeups[destination]!
        let component = "\(destination.rawValue) worker"
        var failures = 0
        while !stopping.isSet, !Task.isCancelled {
            do {
                let worker = try await DestinationWorker.start(
                    destination: destination, configuration: configuration, health: health, metrics: metrics, logger: logger,
                    tracer: tracer)
                failures = 0
                await health.postgresOK(component)
                logger.info("Worker started")
                try await worker.run(wakeup: wakeup, stopping: stopping, component: component)
                return
            } catch let error as SourceColumnTypes.Problem {
                throw error  // a configuration problem: retrying cannot fix it
            } catch let error as ConfigurationError {
                throw error
            } catch is CancellationError {
                return
            } catch {
                failures += 1
                // Start-up also connects to the destination: name the store that failed.
                await health.connectionFailed(component, "\(error)", store: error is PostgresError ? "postgres" : destination.rawValue)
                let delay = Backoff(initial: .milliseconds(250), maximum: .seconds(5)).delay(afterAttempt: failures)
                logger.warning("Worker failed; restarting", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
    }

    // MARK: Listener

    /// LISTENs on `outbox_events`; a notification wakes its destination's worker at once. Every
    /// `relay.poll_interval` (the safety net for a lost notification) one cheap indexed query
    /// looks for available events, and wakes the workers that have some.
    private func runListener(stopping: StopFlag) async {
        var failures = 0
        while !stopping.isSet, !Task.isCancelled {
            do {
                let db = try await PostgresConnection.connect(listenerConfiguration(), logger: logger)
                try await db.listen("outbox_events")
                failures = 0
                await health.postgresOK("listener")
                for wakeup in wakeups.values { await wakeup.signal() }  // catch up on anything missed
                var nextPoll = ContinuousClock.now + configuration.relay.pollInterval
                while !stopping.isSet, !Task.isCancelled {
                    let notes = try await db.waitForNotifications(timeout: max(.zero, nextPoll - .now))
                    for destination in Set(notes.compactMap { OutboxEvent.Destination(rawValue: $0.payload) }) {
                        await wakeups[destination]?.signal()
                    }
                    if ContinuousClock.now >= nextPoll {
                        let row = try await db.query(
                            """
                            SELECT EXISTS (SELECT FROM outbox.events WHERE destination = 'qdrant' AND available_at <= now()) AS qdrant,
                                   EXISTS (SELECT FROM outbox.events WHERE destination = 'redis' AND available_at <= now()) AS redis
                            """).first!
                        for destination in [OutboxEvent.Destination.qdrant, .redis] where row[destination.rawValue] == .bool(true) {
                            await wakeups[destination]?.signal()
                        }
                        nextPoll = .now + configuration.relay.pollInterval
                    }
                }
            } catch {
                if stopping.isSet || Task.isCancelled { return }
                failures += 1
                await health.connectionFailed("listener", "\(error)")
                let delay = Backoff(initial: .milliseconds(250), maximum: .seconds(5)).delay(afterAttempt: failures)
                logger.warning("Listener failed; reconnecting", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
    }

    private func listenerConfiguration() -> PostgresConfiguration {
        var postgres = configuration.postgres
        postgres.applicationName = "outbox-relay-listener"
        return postgres
    }
}
