import CoreMetrics
import Instrumentation
import Logging
import OTel
import OutboxCore
import ServiceLifecycle
import Tracing

/// Span export over OTLP/HTTP (protobuf), by swift-otel, when `tracing.endpoint` is set.
///
/// The tracer is the process' (`InstrumentationSystem`): the relay's spans, the trace context its
/// HTTP requests carry and the `trace_id` of log lines all come from it. Finished spans wait in a
/// bounded queue (`tracing.queue_size`) and go out in batches every `tracing.export_interval`, and
/// at shutdown; delivery never waits for the collector. Spans that do not fit the queue, or whose export fails
/// or times out (`tracing.export_timeout`), are dropped and counted in
/// `outbox_tracing_spans_dropped_total{reason}`.
public enum TraceExport {
    /// Bootstraps the process' tracer and returns the service that exports its spans (run it in the
    /// daemon's service group: it flushes on graceful shutdown), or nil when export is off.
    /// OpenTelemetry's own `OTEL_*` environment variables still apply on top of `settings`.
    public static func bootstrap(_ settings: TracingSettings, serviceName: String, logger: Logger, metrics: any MetricsFactory)
        throws -> (any Service)?
    {
        guard let url = settings.tracesURL else { return nil }
        var configuration = OTel.Configuration.default
        configuration.serviceName = settings.serviceName ?? serviceName
        configuration.resourceAttributes = ["service.version": BuildInfo.version]
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        configuration.propagators = [.traceContext]
        configuration.traces.sampler = sampler(settings)
        configuration.traces.otlpExporter.endpoint = url
        configuration.traces.otlpExporter.protocol = .httpProtobuf
        configuration.traces.otlpExporter.timeout = settings.exportTimeout
        configuration.traces.batchSpanProcessor.maxQueueSize = settings.queueSize
        // swift-otel's processor sends one batch per interval (and one whenever the queue fills):
        // batches as large as the queue (up to ~2.5 MB of protobuf) let an interval empty it.
        configuration.traces.batchSpanProcessor.maxExportBatchSize = min(settings.queueSize, 8192)
        configuration.traces.batchSpanProcessor.scheduleDelay = settings.exportInterval
        configuration.traces.batchSpanProcessor.exportTimeout = settings.exportTimeout
        let dropped = Dictionary(uniqueKeysWithValues: Diagnostics.Reason.allCases.map { reason in
            (reason, CoreMetrics.Counter(label: "outbox_tracing_spans_dropped_total", dimensions: [("reason", reason.rawValue)], factory: metrics))
        })
        let redactor = Redactor(secrets: SecretAddress.secrets(in: url))
        configuration.diagnosticLogger = .custom(Logger(label: "otel") { _ in Diagnostics(logger: logger, dropped: dropped, redactor: redactor) })
        configuration.diagnosticLogLevel = .warning
        let backend = try OTel.makeTracingBackend(configuration: configuration)
        InstrumentationSystem.bootstrap(backend.factory)
        logger.info("Exporting spans", metadata: [
            "tracing.endpoint": "\(SecretAddress.redacted(url))", "tracing.sampler": "\(settings.sampler.rawValue)",
        ])
        return backend.service
    }

    /// `bootstrap` for a daemon's `serve`: a problem exits 2 naming the tracing section; returns the
    /// service to run first in the daemon's group (stopped last, it flushes the daemon's last spans).
    public static func bootstrapOrExit(_ settings: TracingSettings, serviceName: String, logger: Logger, metrics: any MetricsFactory)
        -> (any Service)?
    {
        do {
            return try bootstrap(settings, serviceName: serviceName, logger: logger, metrics: metrics)
        } catch {
            CommandSupport.fail("config: tracing: \(error)", exitCode: 2)
        }
    }

    /// Adds `trace_id` and `span_id` to a line logged inside a span.
    public static let logMetadata = Logger.MetadataProvider {
        var metadata = OTel.makeLoggingMetadataProvider().get()
        metadata.removeValue(forKey: "trace_flags")
        return metadata
    }

    static func sampler(_ settings: TracingSettings) -> OTel.Configuration.TracesConfiguration.SamplerConfiguration {
        switch settings.sampler {
        case .alwaysOn: .alwaysOn
        case .alwaysOff: .alwaysOff
        case .traceIDRatio: .traceIDRatio(ratio: settings.samplerRatio) ?? .traceIDRatio
        case .parentBasedAlwaysOn: .parentBasedAlwaysOn
        case .parentBasedAlwaysOff: .parentBasedAlwaysOff
        case .parentBasedTraceIDRatio: .parentBasedTraceIDRatio(ratio: settings.samplerRatio) ?? .parentBasedTraceIDRatio
        }
    }

    /// swift-otel's diagnostic log, passed on to the daemon's log (secrets redacted), and counted:
    /// its batch processor reports the spans it drops only there (`dropped_count` when the queue is
    /// full, `batch_size` when an export fails or times out).
    struct Diagnostics: LogHandler {
        enum Reason: String, CaseIterable {
            case queueFull = "queue_full"
            case exportFailed = "export_failed"
        }

        var logger: Logger
        let dropped: [Reason: CoreMetrics.Counter]
        let redactor: Redactor
        var logLevel: Logger.Level = .warning
        var metadata: Logger.Metadata = [:]

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var all = metadata
            if let extra = event.metadata { all.merge(extra) { $1 } }
            let message = "\(event.message)"
            if message.hasPrefix("Spans were dropped"), let count = all["dropped_count"].flatMap({ Int("\($0)") }) {
                dropped[.queueFull]?.increment(by: count)
            } else if message.hasPrefix("Failed to export batch"), let count = all["batch_size"].flatMap({ Int("\($0)") }) {
                dropped[.exportFailed]?.increment(by: count)
            }
            logger.log(level: event.level, "Tracing: \(redactor.redact(message))", metadata: all.mapValues { .string(redactor.redact("\($0)")) })
        }
    }
}
