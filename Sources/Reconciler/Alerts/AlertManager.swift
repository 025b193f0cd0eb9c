import Foundation
import OutboxCore
import Logging

/// Sends the alerts that `AlertPolicy` decides on: every alert is logged and counted; it is also
/// POSTed to the webhook and published on the Redis channel when those are configured.
public actor AlertManager {
    public typealias Alert = AlertPolicy.Alert

    let settings: ReconcilerSettings
    let redisConfiguration: RedisConfiguration
    let logger: Logger
    private var policy = AlertPolicy()
    private var http: HTTPConnection?
    private var redis: RedisConnection?
    public private(set) var sent: [Alert] = []

    public init(settings: ReconcilerSettings, redis: RedisConfiguration, logger: Logger) {
        self.settings = settings
        self.redisConfiguration = redis
        self.logger = logger
    }

    /// The alerts this report causes (and sends them).
    @discardableResult
    public func process(_ report: ReconcileReport) async -> [Alert] {
        let alerts = policy.alerts(for: report)
        for alert in alerts { await send(alert) }
        return alerts
    }

    private func send(_ alert: Alert) async {
        sent.append(alert)
        let metadata: Logger.Metadata = [
            "reconciler.table": "\(alert.table)", "reconciler.category": "\(alert.category)",
            "reconciler.count": "\(alert.count)", "reconciler.previous_count": "\(alert.previousCount)",
        ]
        if alert.state == "firing" {
            logger.warning("Reconciler alert firing", metadata: metadata)
        } else {
            logger.notice("Reconciler alert resolved", metadata: metadata)
        }
        let body: JSONValue = [
            "source": "outbox-reconciler", "state": .string(alert.state), "table": .string(alert.table),
            "category": .string(alert.category), "count": .number(Double(alert.count)),
            "previous_count": .number(Double(alert.previousCount)), "sample_ids": .array(alert.sampleIDs.map(JSONValue.string)),
            "at": .string(ISO8601DateFormatter().string(from: Date())),
        ]
        if let url = settings.webhookURL { await postWebhook(url, body) }
        if let channel = settings.redisChannel { await publish(channel, body) }
    }

    /// POSTs with a timeout, retrying transport errors and 5xx/429 up to three attempts.
    private func postWebhook(_ url: String, _ body: JSONValue) async {
        let client = http ?? HTTPConnection(logger: logger, secrets: SecretAddress.secrets(in: url))
        http = client
        for attempt in 1...3 {
            do {
                let response = try await client.perform(HTTPRequest(
                    method: .POST, url: url, headers: [("Content-Type", "application/json")], body: Array(body.jsonText.utf8),
                    timeout: settings.webhookTimeout))
                if (200..<300).contains(response.status) { return }
                if FailureClass.http(status: response.status, retryAfterHeader: nil) == .permanent {
                    logger.error("Alert webhook refused the alert", metadata: ["http.status": "\(response.status)"])
                    return
                }
            } catch {
                logger.warning("Alert webhook failed", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
            }
            try? await Task.sleep(for: .milliseconds(500 * attempt))
        }
        logger.error("Alert webhook unreachable after 3 attempts; alert logged only")
    }

    private func publish(_ channel: String, _ body: JSONValue) async {
        do {
            if redis == nil { redis = try await RedisConnection.connect(redisConfiguration, logger: logger) }
            try await redis!.command("PUBLISH", channel, body.jsonText)
        } catch {
            redis = nil
            logger.error("Alert publish to Redis failed", metadata: ["error": "\(error)"])
        }
    }
}
