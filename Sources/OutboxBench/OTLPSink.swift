import Foundation
import Hummingbird
import Logging
import OutboxTestSupport
import Synchronization

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
        let app = Application(
            router: router, configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: port), serverName: nil),
            logger: Logger(label: "otlp-sink"))
        let task = Task { try await app.run() }
        let sink = OTLPSink(url: "http://127.0.0.1:\(port)", task: task, counts: counts)
        // Listening once a connection is accepted.
        let deadline = ContinuousClock.now + .seconds(10)
        while !Self.accepts(port) {
            guard ContinuousClock.now < deadline else { throw BenchError("the OTLP sink did not listen on \(port)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        return sink
    }

    var received: (requests: Int, bytes: Int) {
        get async { (await counts.requests, await counts.bytes) }
    }

    func stop() { task.cancel() }

    private static func accepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
