import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import OutboxCore

/// The health routes both daemons serve, run without sockets (HummingbirdTesting's router client);
/// the process tests (`RelayTests`, the hostile-HTTP suite) cover the same server over TCP.
@Suite struct HealthRoutesTests {
    func application(notReady: [String] = [], metrics: String = "outbox_up 1\n", status: JSONValue = ["ok": true])
        -> some ApplicationProtocol
    {
        Application(router: HealthServer.router(.init(
            notReady: { notReady }, metrics: { metrics }, status: { status })))
    }

    @Test func livezAnswersOkAndReadyzTellsReadiness() async throws {
        try await application().test(.router) { client in
            try await client.execute(uri: "/livez", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "ok\n")
            }
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .ok)
                #expect((try? JSONValue.parse(String(buffer: response.body))) == ["status": "ready"])
            }
        }
        try await application(notReady: ["redis unreachable: connection refused"]).test(.router) { client in
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers[.contentType] == "application/json")
                #expect((try? JSONValue.parse(String(buffer: response.body)))
                    == ["status": "not ready", "reasons": ["redis unreachable: connection refused"]])
            }
        }
    }

    @Test func metricsAreServedAsPrometheusTextAndStatusAsJSON() async throws {
        try await application(metrics: "outbox_backlog_events{destination=\"redis\"} 3\n", status: ["relay": ["pending": 3]])
            .test(.router) { client in
                try await client.execute(uri: "/metrics", method: .get) { response in
                    #expect(response.status == .ok)
                    #expect(response.headers[.contentType] == "text/plain; version=0.0.4; charset=utf-8")
                    #expect(String(buffer: response.body) == "outbox_backlog_events{destination=\"redis\"} 3\n")
                }
                try await client.execute(uri: "/status", method: .get) { response in
                    #expect(response.status == .ok)
                    #expect((try? JSONValue.parse(String(buffer: response.body))) == ["relay": ["pending": 3]])
                }
            }
    }

    @Test func everyMetricGetsItsHelpLineBeforeItsType() {
        let exposition = "# TYPE outbox_relay_ready gauge\noutbox_relay_ready 1\n# TYPE some_other_total counter\nsome_other_total 2\n"
        #expect(MetricHelp.annotate(exposition) == """
            # HELP outbox_relay_ready 1 when /readyz answers 200, else 0.
            # TYPE outbox_relay_ready gauge
            outbox_relay_ready 1
            # TYPE some_other_total counter
            some_other_total 2

            """)
    }

    /// HEAD gets GET's status and headers; the HTTP encoder drops its body on the wire, which the
    /// router client does not run (the hostile-HTTP suite checks that over TCP).
    @Test func headAnswersLikeGetAndOtherMethodsGet405() async throws {
        try await application(notReady: ["starting"]).test(.router) { client in
            for path in HealthServer.paths {
                let get = try await client.execute(uri: path, method: .get) { $0 }
                try await client.execute(uri: path, method: .head) { response in
                    #expect(response.status == (path == "/readyz" ? .serviceUnavailable : .ok), "HEAD \(path)")
                    #expect(response.status == get.status && response.headers[.contentType] == get.headers[.contentType], "HEAD \(path)")
                }
                for method in [HTTPRequest.Method.post, .put, .delete] {
                    try await client.execute(uri: path, method: method) { response in
                        #expect(response.status == .methodNotAllowed, "\(method) \(path)")
                        #expect(response.headers[.allow] == "GET, HEAD", "\(method) \(path)")
                    }
                }
            }
            try await client.execute(uri: "/nope", method: .get) { response in
                #expect(response.status == .notFound)
            }
        }
    }
}
