import Foundation
import Glibc
import Instrumentation
import Testing
import Tracing

@testable import OutboxCLI
@testable import OutboxCore
@testable import OutboxRelay
import OutboxTestSupport

/// Issue 21: one write followed end to end. A writer's W3C `traceparent` in an event's headers is
/// continued by the relay: its spans reach an OTLP/HTTP receiver (PyPI's opentelemetry-proto
/// decodes them) under the writer's trace, the destination's requests carry the trace, and so do
/// the stream entry and (when configured) the Qdrant point.
@Suite(.serialized) struct TracingTests {
    /// The relay, exporting to `receiver` every half second.
    func tracedRelay(_ url: String, _ receiver: OTLPReceiver, environment: [String: String] = [:]) throws -> DaemonProcess {
        try DaemonProcess.relay(
            databaseURL: url,
            environment: ["OUTBOX_TRACING_ENDPOINT": receiver.url, "OUTBOX_TRACING_EXPORT_INTERVAL": "500ms"].merging(environment) { $1 })
    }

    /// An `xadd` of key `k` to `stream` whose headers carry `traceparent`, written through SQL as
    /// any writer can.
    func enqueueXAdd(_ db: PostgresConnection, stream: String, traceparent: String) async throws {
        try await db.query(
            "SELECT outbox.enqueue('redis', 'xadd', 'k', jsonb_build_object('stream', $1::text, 'fields', '{\"a\":\"b\"}'::jsonb), jsonb_build_object('traceparent', $2::text))",
            [.text(stream), .text(traceparent)])
    }

    @Test func aPythonWritersTraceContinuesThroughTheRelayIntoTheStreamEntry() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            let receiver = try await OTLPReceiver.start()
            defer { receiver.stop() }
            let relay = try tracedRelay(url, receiver)
            try await relay.waitUntilReady()
            let stream = "stream:" + TestEnvironment.uniqueName("traced")
            let python = URL(fileURLWithPath: try TestEnvironment.variable("OUTBOX_VENV")).appendingPathComponent("bin/python")
            let result = try await runProcess(python, ["docs/examples/python_traced_writer.py", stream], environment: ["OUTBOX_POSTGRES_URL": url])
            #expect(result.status == 0, "\(result.stderr)")
            let ids = result.stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            try #require(ids.count == 2, "the example printed \(result.stdout)")
            let (traceID, writerSpanID) = (ids[0], ids[1])

            let event = try await receiver.span { $0["name"]?.stringValue == "redis xadd" }
            #expect(event["trace_id"]?.stringValue == traceID)
            #expect(event["parent_span_id"]?.stringValue == writerSpanID)
            #expect(event["kind"]?.stringValue == "SPAN_KIND_CONSUMER")
            #expect(event["service"]?.stringValue == "outbox-relay")
            #expect(event["attributes"]?["outbox.outcome"]?.stringValue == "delivered")
            #expect(event["attributes"]?["outbox.key"]?.stringValue == "order-42")
            #expect(event["attributes"]?["outbox.attempt"]?.numberValue == 1)
            #expect(event["attributes"]?["outbox.id"]?.numberValue != nil)
            let eventSpanID = try #require(event["span_id"]?.stringValue)
            let pipeline = try await receiver.span { $0["name"]?.stringValue == "redis pipeline" }
            #expect(pipeline["trace_id"]?.stringValue == traceID)
            #expect(pipeline["parent_span_id"]?.stringValue == eventSpanID)
            #expect(pipeline["kind"]?.stringValue == "SPAN_KIND_CLIENT")

            // The stream entry names the relay's span, so a consumer continues the same trace.
            let entry = try #require(try await TestEnvironment.redis().command("XRANGE", stream, "-", "+").array?.first)
            let fields = entry.array?[1].array?.compactMap(\.string) ?? []
            #expect(fields.contains("order") && fields.contains("outbox_id"), "\(fields)")
            let traceparent = fields.firstIndex(of: "traceparent").map { fields[$0 + 1] }
            #expect(traceparent == "00-\(traceID)-\(eventSpanID)-01", "\(fields)")
        }
    }

    /// A Swift writer inside a span: `OutboxWriter` puts the span's trace in the event's headers,
    /// and the relay's Qdrant and embedding requests carry the trace (recorded by a proxy in front
    /// of each), as does the point's payload under `tracing.point_payload_key`.
    @Test func aSwiftWritersSpanReachesTheEmbeddingAndQdrantRequestsAndThePoint() async throws {
        _ = Self.bootstrapTracer
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let receiver = try await OTLPReceiver.start()
            defer { receiver.stop() }
            let collection = TestEnvironment.uniqueName("traced")
            let qdrant = try QdrantCalls(baseURL: try TestEnvironment.qdrantURL())
            #expect(try await qdrant.call(.PUT, "/collections/\(collection)", ["vectors": ["size": 384, "distance": "Cosine"]]).status == 200)
            let pointID = UUID()

            // The writer's span, and what OutboxWriter stored.
            var writerContext: [String: String] = [:]
            try await withSpan("place order") { span in
                InstrumentationSystem.instrument.inject(span.context, into: &writerContext, using: TraceHeaders.DictionaryInjector())
                try await db.transaction { tx in
                    try await OutboxWriter.enqueue(.qdrantUpsert(collection: collection, id: .uuid(pointID), text: "a traced row"), on: tx)
                }
            }
            let writerTraceParent = try #require(writerContext["traceparent"])
            let stored = try await db.query("SELECT headers->>'traceparent' AS t FROM outbox.events").first?.decode("t", as: String?.self)
            #expect(stored == writerTraceParent)
            let parts = writerTraceParent.split(separator: "-").map(String.init)

            let embeddingsPort = try freePort(), embeddingsRecorderPort = try freePort(), qdrantRecorderPort = try freePort()
            let embeddings = try await startHelper("fake_embeddings.py", [String(embeddingsPort), "test-key"])
            defer { kill(embeddings.processIdentifier, SIGKILL) }
            let embeddingHeaders = FileManager.default.temporaryDirectory.appendingPathComponent("embedding-headers-\(UUID().uuidString)").path
            let qdrantHeaders = FileManager.default.temporaryDirectory.appendingPathComponent("qdrant-headers-\(UUID().uuidString)").path
            let embeddingRecorder = try await startHelper(
                "header_recorder.py", [String(embeddingsRecorderPort), "http://127.0.0.1:\(embeddingsPort)", embeddingHeaders])
            defer { kill(embeddingRecorder.processIdentifier, SIGKILL) }
            let qdrantRecorder = try await startHelper(
                "header_recorder.py", [String(qdrantRecorderPort), try TestEnvironment.qdrantURL(), qdrantHeaders])
            defer { kill(qdrantRecorder.processIdentifier, SIGKILL) }
            let relay = try tracedRelay(url, receiver, environment: [
                "OUTBOX_EMBEDDING_PROVIDER": "openai", "OUTBOX_EMBEDDING_BASE_URL": "http://127.0.0.1:\(embeddingsRecorderPort)",
                "OUTBOX_EMBEDDING_API_KEY": "test-key", "OUTBOX_QDRANT_URL": "http://127.0.0.1:\(qdrantRecorderPort)",
                "OUTBOX_TRACING_POINT_PAYLOAD_KEY": "traceparent",
            ])
            try await eventually("delivered", timeout: .seconds(30)) { await relay.metric("outbox_events_delivered_total{destination=\"qdrant\"}") == 1 }

            let event = try await receiver.span { $0["name"]?.stringValue == "qdrant upsert" }
            #expect(event["trace_id"]?.stringValue == parts[1])
            #expect(event["parent_span_id"]?.stringValue == parts[2])
            let eventSpanID = try #require(event["span_id"]?.stringValue)
            for name in ["embedding", "qdrant upsert points"] {
                let request = try await receiver.span { $0["name"]?.stringValue == name }
                #expect(request["parent_span_id"]?.stringValue == eventSpanID, "\(name)")
                #expect(request["kind"]?.stringValue == "SPAN_KIND_CLIENT", "\(name)")
                // The request itself named its span in its traceparent header.
                let recorded = try lines(name == "embedding" ? embeddingHeaders : qdrantHeaders)
                let sent = recorded.filter { name == "embedding" || $0["path"]?.stringValue?.contains("/points?") == true }
                #expect(sent.map { $0["traceparent"]?.stringValue } == ["00-\(parts[1])-\(request["span_id"]?.stringValue ?? "?")-01"], "\(name): \(recorded)")
            }
            // Requests outside any traced delivery (the start-up's collection checks) carry none.
            #expect(try lines(qdrantHeaders).contains { $0["path"]?.stringValue == "/collections" && $0["traceparent"]?.stringValue == "" })

            let point = try await qdrant.call(.POST, "/collections/\(collection)/points", ["ids": [.string(pointID.uuidString.lowercased())], "with_payload": true])
            #expect(point.json?["result"]?.arrayValue?.first?["payload"]?["traceparent"]?.stringValue == "00-\(parts[1])-\(eventSpanID)-01", "\(point)")
        }
    }

    @Test func anInvalidTraceparentIsIgnoredCountedAndTheEventDeliveredAsWritten() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let receiver = try await OTLPReceiver.start()
            defer { receiver.stop() }
            let relay = try tracedRelay(url, receiver)
            try await relay.waitUntilReady()
            let stream = "stream:" + TestEnvironment.uniqueName("untraced")
            for traceparent in ["not-a-trace", "00-00000000000000000000000000000000-0000000000000000-01", "00-ABCDEF"] {
                try await enqueueXAdd(db, stream: stream, traceparent: traceparent)
            }
            try await eventually("delivered", timeout: .seconds(20)) { await relay.metric("outbox_events_delivered_total{destination=\"redis\"}") == 3 }
            #expect(await relay.metric("outbox_trace_context_invalid_total{destination=\"redis\"}") == 3)
            let entries = try await TestEnvironment.redis().command("XRANGE", stream, "-", "+").array ?? []
            #expect(entries.count == 3)
            for entry in entries {
                let fields = entry.array?[1].array?.compactMap(\.string) ?? []
                #expect(!fields.contains("traceparent"), "\(fields)")
            }
            #expect(try await db.count("outbox.dead_letters") == 0)
            try await Task.sleep(for: .seconds(1.5))  // three export intervals
            let spans = try receiver.spans()
            #expect(spans.isEmpty, "\(spans)")
        }
    }

    /// `OUTBOX_LOG_FORMAT=json`: every line is a JSON object, and the line about a traced event
    /// carries its trace: the writer's trace id and the relay's span for the event.
    @Test func jsonLogLinesOfATracedDeliveryCarryItsTraceAndSpanIDs() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let receiver = try await OTLPReceiver.start()
            defer { receiver.stop() }
            let relay = try tracedRelay(url, receiver, environment: ["OUTBOX_LOG_FORMAT": "json"])
            try await relay.waitUntilReady()
            let poisoned = "stream:" + TestEnvironment.uniqueName("poisoned")
            try await TestEnvironment.redis().command("SET", poisoned, "a string, not a stream")
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736", writerSpanID = "00f067aa0ba902b7"
            try await enqueueXAdd(db, stream: poisoned, traceparent: "00-\(traceID)-\(writerSpanID)-01")
            let span = try await receiver.span { $0["name"]?.stringValue == "redis xadd" }
            #expect(span["attributes"]?["outbox.outcome"]?.stringValue == "dead_lettered")
            #expect(span["status"]?.stringValue == "STATUS_CODE_ERROR")
            #expect(span["parent_span_id"]?.stringValue == writerSpanID)
            let lines = relay.log.split(separator: "\n")
            let objects = lines.compactMap { try? JSONValue.parse(String($0)) }
            #expect(objects.count == lines.count, "lines that are not JSON: \(lines.filter { (try? JSONValue.parse(String($0))) == nil })")
            #expect(objects.allSatisfy { $0["time"]?.stringValue != nil && $0["level"]?.stringValue != nil && $0["message"]?.stringValue != nil })
            let deadLettered = try #require(objects.first { $0["message"]?.stringValue == "Event dead-lettered" })
            #expect(deadLettered["trace_id"]?.stringValue == traceID)
            #expect(deadLettered["span_id"]?.stringValue == span["span_id"]?.stringValue)
            #expect(deadLettered["metadata"]?["outbox.reason"]?.stringValue?.contains("WRONGTYPE") == true)
            // Lines outside a traced delivery carry no trace.
            #expect(objects.first { $0["message"]?.stringValue == "Relay starting" }?["trace_id"] == nil)
        }
    }

    /// A collector that accepts connections and never answers: deliveries go on at full speed,
    /// the spans that do not fit the queue or whose export times out are dropped and counted.
    @Test func aCollectorThatNeverAnswersNeitherSlowsNorStopsDelivery() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let silent = try SilentListener()
            defer { silent.close() }
            let relay = try DaemonProcess.relay(databaseURL: url, environment: [
                "OUTBOX_TRACING_ENDPOINT": "http://127.0.0.1:\(silent.port)", "OUTBOX_TRACING_QUEUE_SIZE": "20",
                "OUTBOX_TRACING_EXPORT_INTERVAL": "200ms", "OUTBOX_TRACING_EXPORT_TIMEOUT": "1s",
            ])
            try await relay.waitUntilReady()
            let stream = "stream:" + TestEnvironment.uniqueName("silent")
            let started = ContinuousClock.now
            try await db.query(
                """
                SELECT outbox.enqueue('redis', 'xadd', 'k' || n % 50, jsonb_build_object('stream', $1::text, 'fields', '{"a":"b"}'::jsonb),
                       jsonb_build_object('traceparent', '00-' || lpad(to_hex(n + 1), 32, '0') || '-00f067aa0ba902b7-01'))
                FROM generate_series(1, 500) n
                """, [.text(stream)])
            try await eventually("delivered", timeout: .seconds(30)) { await relay.metric("outbox_events_delivered_total{destination=\"redis\"}") == 500 }
            // A relay that waited for its exports would take 25 batches × 1 s.
            #expect(ContinuousClock.now - started < .seconds(15))
            try await eventually("drops counted", timeout: .seconds(20)) {
                let queueFull = await relay.metric("outbox_tracing_spans_dropped_total{reason=\"queue_full\"}")
                let exportFailed = await relay.metric("outbox_tracing_spans_dropped_total{reason=\"export_failed\"}")
                return queueFull > 0 && exportFailed > 0
            }
        }
    }

    /// Spans still queued at SIGTERM are exported before the relay exits: with an export interval
    /// of a minute, the shutdown's flush is the only way the span can reach the receiver.
    @Test func sigtermFlushesTheLastSpans() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let receiver = try await OTLPReceiver.start()
            defer { receiver.stop() }
            let relay = try tracedRelay(url, receiver, environment: ["OUTBOX_TRACING_EXPORT_INTERVAL": "60s"])
            try await relay.waitUntilReady()
            try await db.query(
                "SELECT outbox.enqueue('redis', 'set', 'k', jsonb_build_object('key', $1::text, 'value', 'v'), '{\"traceparent\": \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"}')",
                [.text(TestEnvironment.uniqueName("flushed"))])
            try await eventually("delivered", timeout: .seconds(20)) { await relay.metric("outbox_events_delivered_total{destination=\"redis\"}") == 1 }
            #expect(try receiver.spans().isEmpty)
            relay.signal(SIGTERM)
            #expect(await relay.waitForExit(timeout: .seconds(20)) == 0)
            #expect(try receiver.spans().contains { $0["name"]?.stringValue == "redis set" })
        }
    }

    /// The process' tracer for the Swift writer test: swift-otel's, as an application would
    /// bootstrap it (its export is not run: only the writer's span context is needed).
    static let bootstrapTracer: Void = {
        var settings = TracingSettings()
        settings.endpoint = "http://127.0.0.1:9"
        _ = try! TraceExport.bootstrap(settings, serviceName: "writer-test", logger: TestEnvironment.logger, metrics: RelayMetrics().metricsFactory)
    }()
}

/// Tests/IntegrationTests/Support/otlp_receiver.py: the spans it received, one JSON object each.
struct OTLPReceiver {
    let process: Process
    let port: Int
    let record: String

    var url: String { "http://127.0.0.1:\(port)" }

    static func start() async throws -> OTLPReceiver {
        let port = try freePort()
        let record = FileManager.default.temporaryDirectory.appendingPathComponent("otlp-\(UUID().uuidString).jsonl").path
        return OTLPReceiver(process: try await startHelper("otlp_receiver.py", [String(port), record]), port: port, record: record)
    }

    func spans() throws -> [JSONValue] { try lines(record) }

    /// The first span matching `predicate`, waiting up to `timeout` for it.
    func span(timeout: Duration = .seconds(20), _ predicate: (JSONValue) -> Bool) async throws -> JSONValue {
        var found: JSONValue?
        try await eventually("a matching span (received: \((try? spans().compactMap { $0["name"]?.stringValue }) ?? []))", timeout: timeout) {
            found = try spans().first(where: predicate)
            return found != nil
        }
        return found!
    }

    /// SIGKILL: children of the test process inherit its blocked SIGTERM.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        try? FileManager.default.removeItem(atPath: record)
    }
}

/// The JSON lines of `path`.
func lines(_ path: String) throws -> [JSONValue] {
    try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { try JSONValue.parse(String($0)) }
}

/// A TCP port that accepts connections (the kernel completes them) and never reads or answers.
final class SilentListener: Sendable {
    let descriptor: Int32
    let port: Int

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.descriptor = descriptor
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) == 0 && listen(descriptor, 64) == 0 && getsockname(descriptor, $0, &length) == 0 }
        }
        guard bound else { throw HarnessError("cannot listen: \(String(cString: strerror(errno)))") }
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() { _ = Glibc.close(descriptor) }
}
