import OutboxCore
import Tracing
import W3CTraceContext

/// The trace context of one claim's events (docs/DESIGN.md, "Tracing").
///
/// With span export on (`tracing.endpoint`), each event whose headers carry a valid W3C
/// `traceparent` gets a span of its own, a child of the writer's: `redis xadd`, `qdrant upsert`, …
/// (kind consumer), from its claim to its acknowledgement, with its id, key, attempt and outcome.
/// A request to a destination carries many events, often of many traces: its client span
/// (`redis pipeline`, `qdrant upsert points`, `embedding`) is a child of the first traced event's
/// span in it and links to the others', and the request's `traceparent` header names it.
///
/// What reaches the destination (``carried(_:)``): the event's own span context, or, with export
/// off, the writer's `traceparent` as it was. An invalid one is ignored for tracing and never
/// fails or delays the delivery.
struct DeliveryTraces: Sendable {
    static let none = DeliveryTraces()

    private(set) var spans: [Int64: any Span] = [:]
    /// The writer's context of the traced events without a span (span export off).
    private var writers: [Int64: String] = [:]
    private var tracer: (any Tracer)?

    private init() {}

    /// Starts the spans of `events`' traced ones (with `tracer`). `invalid` is called for an event
    /// with an invalid `traceparent`.
    init(
        _ events: [ClaimedEvent], destination: OutboxEvent.Destination, tracer: (any Tracer)?,
        invalid: (ClaimedEvent) -> Void
    ) {
        self.tracer = tracer
        for event in events {
            guard let traceParent = event.traceParent else { continue }
            guard let writer = TraceHeaders.parse(traceParent: traceParent, traceState: event.traceState) else {
                invalid(event)
                continue
            }
            guard let tracer else {
                writers[event.id] = writer.traceParentHeaderValue
                continue
            }
            var parent = ServiceContext.topLevel
            var headers = ["traceparent": writer.traceParentHeaderValue]
            headers["tracestate"] = writer.traceStateHeaderValue
            tracer.extract(headers, into: &parent, using: TraceHeaders.DictionaryExtractor())
            let span = tracer.startSpan("\(destination.rawValue) \(event.operation)", context: parent, ofKind: .consumer)
            // One assignment (one lock) rather than one per attribute; the destination and the
            // operation are in the span's name.
            span.attributes = ["outbox.id": .int64(event.id), "outbox.key": .string(event.key), "outbox.attempt": .int64(Int64(event.attempts + 1))]
            spans[event.id] = span
        }
    }

    /// The `traceparent` that event `id`'s effect carries to its destination, if it is traced: its
    /// span's context, or the writer's as it was when spans are not exported.
    func carried(_ id: Int64) -> String? {
        guard let tracer, !spans.isEmpty else { return writers.isEmpty ? nil : writers[id] }
        guard let span = spans[id] else { return nil }
        var carried: [String: String] = [:]
        tracer.inject(span.context, into: &carried, using: TraceHeaders.DictionaryInjector())
        return carried["traceparent"]
    }

    /// The client span of a request carrying `events`, or nil when none of them is traced. The
    /// arguments are only worked out when the claim has spans: untraced, a round trip makes no list.
    func request(
        _ name: String, carrying events: @autoclosure () -> [ClaimedEvent], attributes: @autoclosure () -> SpanAttributes = [:]
    ) -> (any Span)? {
        guard let tracer, !spans.isEmpty else { return nil }
        let traced = events().compactMap { spans[$0.id] }
        guard let first = traced.first else { return nil }
        let span = tracer.startSpan(name, context: first.context, ofKind: .client)
        for other in traced.dropFirst() { span.addLink(SpanLink(context: other.context, attributes: [:])) }
        var all = attributes()
        all["outbox.traced_events"] = traced.count
        span.attributes = all
        return span
    }

    /// Marks a request's span failed with `error`.
    static func failed(_ span: (any Span)?, _ error: any Error) {
        span?.recordError(error)
        span?.setStatus(SpanStatus(code: .error, message: "\(error)"))
    }

    /// Runs `body` inside `span` (its HTTP requests carry its `traceparent`), or as is without one.
    func within<T>(_ span: (any Span)?, _ body: () async throws -> T) async rethrows -> T {
        guard let span else { return try await body() }
        return try await ServiceContext.withValue(span.context) { try await body() }
    }

    /// Ends the events' spans with what became of them (after the acknowledgement committed).
    func end(_ settlement: Settlement) {
        guard !spans.isEmpty else { return }
        var outcomes: [Int64: (String, String?)] = [:]
        for event in settlement.delivered { outcomes[event.id] = ("delivered", nil) }
        for retry in settlement.retries { outcomes[retry.id] = ("retried", retry.reason) }
        for dead in settlement.deadLetters { outcomes[dead.id] = ("dead_lettered", dead.reason) }
        for (id, span) in spans {
            // An event without an outcome was held back behind an earlier event of its key.
            let (outcome, reason) = outcomes[id] ?? ("released", nil)
            span.attributes["outbox.outcome"] = outcome
            if let reason { span.setStatus(SpanStatus(code: .error, message: reason)) }
            span.end()
        }
    }

    /// Ends the events' spans when the claim's transaction failed: they are released, to be claimed again.
    func end(failure: any Error) {
        for span in spans.values {
            span.attributes["outbox.outcome"] = "released"
            span.recordError(failure)
            span.setStatus(SpanStatus(code: .error, message: "the claim's transaction failed"))
            span.end()
        }
    }

    /// Runs `body` (a log call) inside event `id`'s span, so the line carries its `trace_id`.
    func logging(_ id: Int64, _ body: () -> Void) {
        guard let span = spans[id] else { return body() }
        ServiceContext.withValue(span.context, operation: body)
    }
}
