import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
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

    /// The endpoints. Each answers GET and HEAD; other methods get 405 with `Allow`, other paths 404.
    public static let paths = ["/livez", "/readyz", "/metrics", "/status"]

    /// A connection that has not completed a request for this long is closed: idle keep-alive
    /// connections, and clients that send their request a byte at a time (slowloris), cannot
    /// pile up and use up the process' file descriptors.
    public static let idleTimeout: TimeAmount = .seconds(10)

    /// Health probes and scrapes send a few hundred bytes of headers; larger requests are refused
    /// (400, connection closed) before they cost memory.
    public static let maxHeaderBytes = 16 * 1024

    public static func router(_ handlers: Handlers) -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: MethodCheck(paths: Set(paths)))
        let routes: [(String, @Sendable () async -> Response)] = [
            ("livez", { text("ok\n") }),
            ("readyz", {
                let reasons = await handlers.notReady()
                let body: JSONValue = reasons.isEmpty
                    ? ["status": "ready"] : ["status": "not ready", "reasons": .array(reasons.map(JSONValue.string))]
                return json(body, status: reasons.isEmpty ? .ok : .serviceUnavailable)
            }),
            ("metrics", { text(await handlers.metrics(), contentType: "text/plain; version=0.0.4; charset=utf-8") }),
            ("status", { json(await handlers.status(), status: .ok) }),
        ]
        for (path, respond) in routes {
            // HEAD gets GET's status and headers; the HTTP encoder drops the body.
            router.get(RouterPath(path)) { _, _ in await respond() }
            router.head(RouterPath(path)) { _, _ in await respond() }
        }
        return router
    }

    /// 405 Method Not Allowed (with `Allow: GET, HEAD`) for a known path asked with another method.
    struct MethodCheck<Context: RequestContext>: RouterMiddleware {
        let paths: Set<String>

        func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
            -> Response
        {
            guard request.method != .get, request.method != .head, paths.contains(request.uri.path) else {
                return try await next(request, context)
            }
            return Response(
                status: .methodNotAllowed, headers: [.allow: "GET, HEAD", .contentType: "text/plain; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: "method \(request.method.rawValue) not allowed; use GET\n")))
        }
    }

    /// The server as a `Service`, bound to `host:port` (127.0.0.1 by default in config).
    public static func service(host: String, port: Int, handlers: Handlers, logger: Logger) -> some Service {
        let http1 = HTTP1Channel.Configuration(
            idleTimeout: idleTimeout,
            httpDecoderConfiguration: .init(maxHeaderFieldSize: maxHeaderBytes, maxHeaderListSize: maxHeaderBytes, maxHeaderFieldCount: 100))
        return Application(
            router: router(handlers),
            server: .http1(configuration: http1),
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
