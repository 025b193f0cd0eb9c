import Foundation

/// `tracing.*`: OpenTelemetry traces through the outbox (docs/CONFIGURATION.md, "Tracing").
///
/// Export (spans over OTLP/HTTP) is off until `endpoint` is set. Carrying a writer's trace context
/// to the destinations (`stream_field`, `point_payload_key`) does not need export: with export off
/// the relay passes the writer's `traceparent` on as it is; with export on, its own span's.
public struct TracingSettings: Sendable, Equatable {
    /// The OTLP/HTTP collector's base URL; spans go to `endpoint/v1/traces`. Nil: no export.
    public var endpoint: String?
    public var sampler = Sampler.parentBasedAlwaysOn
    /// For the ratio samplers: the share of new traces recorded, 0...1.
    public var samplerRatio = 1.0
    /// `service.name` of the spans; nil means the binary's name (`outbox-relay`, `outbox-reconciler`).
    public var serviceName: String?
    /// The field a traced event's Redis stream entry gets its `traceparent` in; nil: none.
    public var streamField: String? = "traceparent"
    /// The payload key a traced upsert's Qdrant point gets its `traceparent` under; nil (the
    /// default): none.
    public var pointPayloadKey: String?
    /// Finished spans waiting for export; past this many, spans are dropped (and counted).
    public var queueSize = 2048
    /// How often finished spans are sent (and at shutdown, and whenever the queue fills).
    public var exportInterval: Duration = .seconds(5)
    /// How long one export may take before it is abandoned (its spans counted as dropped).
    public var exportTimeout: Duration = .seconds(10)

    /// The samplers of the OpenTelemetry specification (`OTEL_TRACES_SAMPLER`'s names). The
    /// parent-based ones follow the writer's sampling decision (the `traceparent`'s flags).
    public enum Sampler: String, Sendable, CaseIterable {
        case alwaysOn = "always_on"
        case alwaysOff = "always_off"
        case traceIDRatio = "traceidratio"
        case parentBasedAlwaysOn = "parentbased_always_on"
        case parentBasedAlwaysOff = "parentbased_always_off"
        case parentBasedTraceIDRatio = "parentbased_traceidratio"
    }

    public init() {}

    /// The URL spans are posted to.
    public var tracesURL: String? {
        endpoint.map { $0.hasSuffix("/") ? $0 + "v1/traces" : $0 + "/v1/traces" }
    }

    init(_ c: ConfigValues) throws {
        if let endpoint = c.raw("tracing.endpoint", secret: true)?.trimmingCharacters(in: .whitespaces), !endpoint.isEmpty {
            guard let url = URL(string: endpoint), ["http", "https"].contains(url.scheme?.lowercased() ?? ""), url.host != nil else {
                throw ConfigurationError(key: "tracing.endpoint", problem: "must be an http:// or https:// URL (the collector's base URL)")
            }
            self.endpoint = endpoint
        }
        if let text = c.raw("tracing.sampler") {
            guard let sampler = Sampler(rawValue: text.trimmingCharacters(in: .whitespaces).lowercased()) else {
                throw ConfigurationError(
                    key: "tracing.sampler", problem: "unknown sampler \"\(text)\"; one of \(Sampler.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            self.sampler = sampler
        }
        if let text = c.raw("tracing.sampler_ratio") {
            guard let ratio = Double(text.trimmingCharacters(in: .whitespaces)), (0...1).contains(ratio) else {
                throw ConfigurationError(key: "tracing.sampler_ratio", problem: "must be a number from 0 to 1, got \"\(text)\"")
            }
            samplerRatio = ratio
        }
        if let name = c.raw("tracing.service_name")?.trimmingCharacters(in: .whitespaces), !name.isEmpty { serviceName = name }
        streamField = try Self.name(c, "tracing.stream_field", default: "traceparent")
        pointPayloadKey = try Self.name(c, "tracing.point_payload_key", default: nil)
        queueSize = try c.int("tracing.queue_size", default: queueSize, range: 1...1_000_000)
        exportInterval = try c.duration("tracing.export_interval", default: exportInterval)
        exportTimeout = try c.duration("tracing.export_timeout", default: exportTimeout)
    }

    /// A field or key name; an empty value turns it off.
    private static func name(_ c: ConfigValues, _ key: String, default value: String?) throws -> String? {
        guard let text = c.raw(key) else { return value }
        let name = text.trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty else { return nil }
        guard name.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7f }) else {
            throw ConfigurationError(key: key, problem: "must not contain control characters")
        }
        return name
    }
}
