import Instrumentation
import ServiceContextModule
import W3CTraceContext

/// Trace context in outbox headers and HTTP requests (W3C Trace Context: `traceparent`,
/// `tracestate`), through whatever instrument the process bootstrapped (`InstrumentationSystem`;
/// with none, a no-op: nothing is added).
public enum TraceHeaders {
    /// `headers` with the trace of `context` added, unless they carry a `traceparent` already (the
    /// writer set it by hand).
    public static func injecting(_ context: ServiceContext?, into headers: [String: String]) -> [String: String] {
        guard let context, headers["traceparent"] == nil else { return headers }
        var headers = headers
        InstrumentationSystem.instrument.inject(context, into: &headers, using: DictionaryInjector())
        return headers
    }

    /// Adds the trace of the current task's `ServiceContext` (the span an HTTP call runs in) to an
    /// outgoing request's headers.
    static func injectCurrent(into headers: inout [(name: String, value: String)]) {
        guard let context = ServiceContext.current else { return }
        var added: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &added, using: DictionaryInjector())
        for (name, value) in added.sorted(by: { $0.key < $1.key }) where !headers.contains(where: { $0.name.lowercased() == name }) {
            headers.append((name, value))
        }
    }

    /// A writer's `traceparent` (and `tracestate`), parsed; nil when it is not a valid W3C trace
    /// context (`TraceContext` checks the version, the lengths, hex digits and all-zero ids).
    public static func parse(traceParent: String, traceState: String?) -> TraceContext? {
        // A tracestate that does not parse is dropped, as W3C Trace Context says; the parent stays.
        if let context = try? TraceContext(traceParentHeaderValue: traceParent, traceStateHeaderValue: traceState) { return context }
        return try? TraceContext(traceParentHeaderValue: traceParent)
    }

    public struct DictionaryInjector: Injector {
        public init() {}
        public func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
    }

    public struct DictionaryExtractor: Extractor {
        public init() {}
        public func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }
}
