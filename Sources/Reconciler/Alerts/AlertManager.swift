import Foundation
import OutboxCore
import Logging

/// Sends the alerts that `AlertPolicy` decides on: every alert is logged and counted; it is also
/// POSTed to the webhook and published on the Redis channel when those are configured.
///
/// A notification that could not be delivered is not dropped: it stays pending, one per (channel,
/// table, category), and is tried again with backoff (1 s doubling to 5 min) until it is delivered
/// or a newer alert of the same table and category replaces it. `/status` lists what is pending.
public actor AlertManager {
    public typealias Alert = AlertPolicy.Alert

    /// A notification not delivered yet.
    struct Pending: Sendable {
        let alert: Alert
        let channel: Channel
        let body: JSONValue
        var attempts = 0
        var due: ContinuousClock.Instant = .now
        var lastError: String?
    }

    enum Channel: String, Sendable {
        case webhook, redis
    }

    static let retryBackoff = Backoff(initial: .seconds(1), maximum: .seconds(300))

    let settings: ReconcilerSettings
    let redisConfiguration: RedisConfiguration
    let logger: Logger
    private var policy = AlertPolicy()
    private var http: HTTPConnection?
    private var redis: RedisConnection?
    /// By "channel table.category": the newest undelivered notification of each.
    private(set) var pending: [String: Pending] = [:]
    public private(set) var sent: [Alert] = []

    public init(settings: ReconcilerSettings, redis: RedisConfiguration, logger: Logger) {
        self.settings = settings
        self.redisConfiguration = redis
        self.logger = logger
    }

    /// The alerts this report causes: logged, and queued for the webhook and the Redis channel,
    /// which are tried at once (with whatever else is due).
    @discardableResult
    public func process(_ report: ReconcileReport) async -> [Alert] {
        let alerts = policy.alerts(for: report)
        for alert in alerts { queue(alert) }
        await deliverDue()
        return alerts
    }

    /// When the next pending notification is due, if any.
    var nextDue: ContinuousClock.Instant? { pending.values.map(\.due).min() }

    /// Tries every pending notification that is due, once each.
    func deliverDue() async {
        let now = ContinuousClock.now
        for (key, item) in pending.sorted(by: { $0.key < $1.key }) where item.due <= now {
            var item = item
            item.attempts += 1
            let outcome = await deliver(item)
            // A newer alert of the same key may have been queued meanwhile: it stays.
            guard pending[key]?.alert == item.alert else { continue }
            switch outcome {
            case .delivered, .refused:
                pending[key] = nil
            case .failed(let error):
                item.lastError = error
                item.due = .now + Self.retryBackoff.delay(afterAttempt: item.attempts)
                pending[key] = item
                logger.warning("Alert notification failed; will retry", metadata: [
                    "reconciler.channel": "\(item.channel.rawValue)", "reconciler.table": "\(item.alert.table)",
                    "reconciler.category": "\(item.alert.category)", "reconciler.attempts": "\(item.attempts)", "error": "\(error)",
                ])
            }
        }
    }

    /// What `/status` shows of the notifications not delivered yet.
    var pendingStatus: JSONValue {
        .array(pending.sorted(by: { $0.key < $1.key }).map { _, item in
            [
                "channel": .string(item.channel.rawValue), "table": .string(item.alert.table), "category": .string(item.alert.category),
                "state": .string(item.alert.state), "count": .number(Double(item.alert.count)),
                "attempts": .number(Double(item.attempts)), "last_error": item.lastError.map(JSONValue.string) ?? .null,
            ]
        })
    }

    private func queue(_ alert: Alert) {
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
        var channels: [Channel] = []
        if settings.webhookURL != nil { channels.append(.webhook) }
        if settings.redisChannel != nil { channels.append(.redis) }
        for channel in channels {
            // A newer state replaces an undelivered older one: receivers learn where things stand.
            pending["\(channel.rawValue) \(alert.table).\(alert.category)"] = Pending(alert: alert, channel: channel, body: body)
        }
    }

    enum Outcome {
        case delivered
        /// Refused for good (a 4xx the receiver will answer again): logged and dropped.
        case refused
        case failed(String)
    }

    private func deliver(_ item: Pending) async -> Outcome {
        switch item.channel {
        case .webhook: await postWebhook(settings.webhookURL ?? "", item.body)
        case .redis: await publish(settings.redisChannel ?? "", item.body)
        }
    }

    /// One POST with a timeout. 2xx delivers; a 4xx other than 408/425/429 and 401/403 is refused
    /// for good; anything else (no answer, 5xx, a refused credential) is tried again later.
    private func postWebhook(_ url: String, _ body: JSONValue) async -> Outcome {
        let client = http ?? HTTPConnection(logger: logger, secrets: SecretAddress.secrets(in: url))
        http = client
        do {
            let response = try await client.perform(HTTPRequest(
                method: .POST, url: url, headers: [("Content-Type", "application/json")], body: Array(body.jsonText.utf8),
                timeout: settings.webhookTimeout))
            if (200..<300).contains(response.status) { return .delivered }
            if FailureClass.http(status: response.status, retryAfterHeader: nil) == .permanent {
                logger.error("Alert webhook refused the alert", metadata: ["http.status": "\(response.status)"])
                return .refused
            }
            return .failed("webhook answered \(response.status)")
        } catch {
            return .failed("\(error)")
        }
    }

    private func publish(_ channel: String, _ body: JSONValue) async -> Outcome {
        do {
            if redis == nil { redis = try await RedisConnection.connect(redisConfiguration, logger: logger) }
            try await redis!.command("PUBLISH", channel, body.jsonText)
            return .delivered
        } catch {
            redis = nil
            return .failed("\(error)")
        }
    }
}
