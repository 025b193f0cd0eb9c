import Foundation

/// How to reach Postgres. `password` is a secret: it is passed to libpq, never logged or shown.
public struct PostgresConfiguration: Sendable {
    /// A `postgresql://` URL or a `key=value` conninfo string.
    public var url: String
    /// Overrides any password in `url` (read from env or a file by the config loader).
    public var password: String?
    public var connectTimeout: Duration = .seconds(5)
    /// `application_name`: each role names its sessions (`outbox-relay` for relay workers only, so
    /// `outbox-relay status` counts them; `outbox-relay-listener`, `outbox-relay-migrate`,
    /// `outbox-reconciler`, `outbox-check`, …); a writer's default is `outbox`.
    public var applicationName: String = "outbox"
    /// TCP keepalives, so a dead peer is noticed without waiting for the OS default (2 h).
    public var keepalivesIdle: Duration = .seconds(30)
    public var keepalivesInterval: Duration = .seconds(10)
    public var keepalivesCount: Int = 3
    /// Server settings for every session of this connection, reconnects included (sent as the
    /// libpq `options` parameter: `-c name=value …`; replaces any `options` in `url`).
    public var sessionSettings: [String: String] = [:]

    public init(url: String, password: String? = nil) {
        self.url = url
        self.password = password
    }

    /// The URL or conninfo with every secret in it replaced by `***` (``SecretAddress``).
    public var redactedURL: String { SecretAddress.redacted(url) }

    var redactor: Redactor {
        Redactor(secrets: [password, url] + SecretAddress.secrets(in: url))
    }
}
