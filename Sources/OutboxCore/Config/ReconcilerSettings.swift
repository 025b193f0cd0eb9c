import Foundation

/// `reconciler.*` keys.
///
/// | key | type | default |
/// |---|---|---|
/// | `reconciler.http.host` / `reconciler.http.port` | string / int | `127.0.0.1` / `8471` |
/// | `reconciler.interval` | duration between scans (serve) | `60s` |
/// | `reconciler.grace_period` | duration a NULL embedding may be young | `5m` |
/// | `reconciler.stuck_after` | duration | `15m` |
/// | `reconciler.stuck_attempts` | int | `10` |
/// | `reconciler.page_size` | int, rows per keyset page | `1000` |
/// | `reconciler.repair` | bool, repair in serve mode | `true` |
/// | `reconciler.alert_webhook_url` | URL, optional | none |
/// | `reconciler.alert_webhook_timeout` | duration | `5s` |
/// | `reconciler.alert_redis_channel` | string, optional | none |
public struct ReconcilerSettings: Sendable {
    public var httpHost = "127.0.0.1"
    public var httpPort = 8471
    public var interval: Duration = .seconds(60)
    public var gracePeriod: Duration = .seconds(300)
    public var stuckAfter: Duration = .seconds(900)
    public var stuckAttempts = 10
    public var pageSize = 1000
    public var repair = true
    public var webhookURL: String?
    public var webhookTimeout: Duration = .seconds(5)
    public var redisChannel: String?

    public init() {}

    init(_ c: ConfigValues) throws {
        httpHost = try c.string("reconciler.http.host", default: httpHost)
        httpPort = try c.int("reconciler.http.port", default: httpPort, range: 0...65535)
        interval = try c.duration("reconciler.interval", default: interval)
        gracePeriod = try c.duration("reconciler.grace_period", default: gracePeriod)
        stuckAfter = try c.duration("reconciler.stuck_after", default: stuckAfter)
        stuckAttempts = try c.int("reconciler.stuck_attempts", default: stuckAttempts, range: 1...1_000_000)
        pageSize = try c.int("reconciler.page_size", default: pageSize, range: 10...100_000)
        repair = try c.bool("reconciler.repair", default: repair)
        if let url = c.raw("reconciler.alert_webhook_url", secret: true) {
            guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
                throw ConfigurationError(key: "reconciler.alert_webhook_url", problem: "must start with http:// or https://")
            }
            webhookURL = url
        }
        webhookTimeout = try c.duration("reconciler.alert_webhook_timeout", default: webhookTimeout)
        redisChannel = c.raw("reconciler.alert_redis_channel")
    }
}
