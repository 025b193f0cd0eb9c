import ArgumentParser
import Foundation
import Logging
import OutboxCLI
import OutboxCore
import ServiceLifecycle
import Tracing
import Instrumentation
import UnixSignals

extension OutboxRelayCommand {
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the relay (the default command).",
            discussion: """
                Delivers outbox events to Qdrant and Redis and serves /livez, /readyz, /metrics and /status on \
                relay.http.host:relay.http.port (default 127.0.0.1:8470). SIGTERM or SIGINT: stop claiming, finish \
                the batch in hand (or release it after relay.shutdown_grace), exit 0.
                """)

        @OptionGroup var options: GlobalOptions

        func run() async throws {
            let logger = CommandSupport.bootstrapLogging(label: "outbox-relay")
            let config = await CommandSupport.loadConfiguration(path: options.config)
            CommandSupport.ensureCanListen(host: config.relay.httpHost, port: config.relay.httpPort, keyPrefix: "relay.http")
            let health = RelayHealth()
            let metrics = RelayMetrics()
            let tracing = TraceExport.bootstrapOrExit(config.tracing, serviceName: "outbox-relay", logger: logger, metrics: metrics.metricsFactory)
            let relay = RelayService(
                configuration: config, health: health, metrics: metrics, logger: logger, tracer: tracing.map { _ in InstrumentationSystem.tracer })
            let status = RelayStatusProvider(configuration: config, health: health, metrics: metrics, logger: logger)
            let server = HealthServer.service(
                host: config.relay.httpHost, port: config.relay.httpPort, handlers: status.handlers, logger: logger)
            // Stopped in reverse order: span export last (it flushes the relay's last spans), the
            // health server before it (it keeps answering while the relay drains).
            var groupConfiguration = ServiceGroupConfiguration(
                services: (tracing.map { [.init(service: $0)] } ?? []) + [
                    .init(service: server),
                    .init(service: relay, successTerminationBehavior: .gracefullyShutdownGroup,
                          failureTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger)
            groupConfiguration.maximumGracefulShutdownDuration = config.relay.shutdownGrace
            logger.info("Relay starting", metadata: [
                "postgres.url": "\(config.postgres.redactedURL)", "redis.url": "\(config.redis.redactedURL)",
                "qdrant.url": "\(config.qdrant.redactedURL)", "http.address": "\(config.relay.httpHost):\(config.relay.httpPort)",
            ])
            do {
                try await ServiceGroup(configuration: groupConfiguration).run()
            } catch {
                CommandSupport.fail("outbox-relay: \(error)", exitCode: 2)
            }
        }
    }
}
