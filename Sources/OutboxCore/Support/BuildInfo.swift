import CoreMetrics

/// What release this build is: `--version` of every binary, and `outbox_build_info` on `/metrics`.
public enum BuildInfo {
    /// Raised with each release; `-dev` between releases.
    public static let version = "0.18.0-dev"

    /// Sets `outbox_build_info{version}` to 1 in the registry behind `factory`.
    public static func register(in factory: any MetricsFactory) {
        Gauge(label: "outbox_build_info", dimensions: [("version", version)], factory: factory).record(1)
    }
}
