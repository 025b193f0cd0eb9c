import Foundation
import Hummingbird
import Logging
import OutboxTestSupport

/// An OTLP/HTTP endpoint that takes `POST /v1/traces`, reads the body, counts it and answers 200
/// with an empty (valid) `ExportTraceServiceResponse`: the cheapest collector there is, so that a
/// benchmark measures the relay's side of span export, not a collector's.
final class OTLPSink: Sendable {
    let url: String
    private let task: Task<Void, any Error>
    private let counts: Counts

    actor Counts {
        var requests = 0
        var bytes = 0
        func add(_ bytes: Int) { (requests, self.bytes) = (requests + 1, self.bytes + bytes) }
    }

    private init(url: String, task: Task<Void, any Error>, counts: Counts) { (self.url, self.task, self.counts) = (url, task, counts) }

    static func start() async throws -> OTLPSink {
        let port = try freePort()
        let counts = Counts()
        let router = Router()
        router.post("/v1/traces") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 256 << 20)
            await counts.add(body.readableBytes)
            return Response(status: .ok, headers: [.contentType: "application/x-protobuf"])
        }
        let (running, listening) = AsyncStream<Void>.makeStream()
        // Quiet: stopping it (a cancellation) is logged by Hummingbird as an error.
        var logger = Logger(label: "otlp-sink")
        logger.logLevel = .critical
        let app = Application(
            router: router, configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: port), serverName: nil),
            onServerRunning: { _ in listening.yield() }, logger: logger)
        let task = Task {
            defer { listening.finish() }  // it could not listen (or was stopped)
            try await app.run()
        }
        var iterator = running.makeAsyncIterator()
        guard await iterator.next() != nil else { throw BenchError("the OTLP sink could not listen on 127.0.0.1:\(port)") }
        return OTLPSink(url: "http://127.0.0.1:\(port)", task: task, counts: counts)
    }

    var received: (requests: Int, bytes: Int) {
        get async { (await counts.requests, await counts.bytes) }
    }

    func stop() { task.cancel() }
}
