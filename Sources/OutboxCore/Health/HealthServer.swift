import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// The HTTP endpoint both daemons serve: `/livez`, `/readyz`, `/metrics`, `/status`.
public enum HealthServer {
    public struct Handlers: Sendable {
        /// Reasons the daemon is not ready; empty when ready.
        public var notReady: @Sendable () async -> [String]
        /// Prometheus text exposition.
        public var metrics: @Sendable () async -> String
        /// A JSON summary, free of secrets.
        public var status: @Sendable () async -> JSONValue

        public init(
            notReady: @escaping @Sendable () async -> [String], metrics: @escaping @Sendable () async -> String,
            status: @escaping @Sendable () async -> JSONValue
        ) {
            self.notReady = notReady
            self.metrics = metrics
            self.status = status
        }
    }

    public static func router(_ handlers: Handlers) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("livez") { _, _ in
            text("ok\n")
        }
        router.get("readyz") { _, _ in
            let reasons = await handlers.notReady()
            let body: JSONValue = reasons.isEmpty
                ? ["status": "ready"] : ["status": "not ready", "reasons": .array(reasons.map(JSONValue.string))]
            return json(body, status: reasons.isEmpty ? .ok : .serviceUnavailable)
        }
        router.get("metrics") { _, _ in
            text(await handlers.metrics(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        router.get("status") { _, _ in
            json(await handlers.status(), status: .ok)
        }
        return router
    }

    /// The server as a `Service`, bound to `host:port` (127.0.0.1 by default in config).
    public static func service(host: String, port: Int, handlers: Handlers, logger: Logger) -> some Service {
        Application(
            router: router(handlers),
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: nil),
            logger: logger)
    }

    static func text(_ body: String, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: .ok, headers: [.contentType: contentType], body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
    }

    static func json(_ body: JSONValue, status: HTTPTypes.HTTPResponse.Status) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: body.jsonText + "\n")))
    }
}
