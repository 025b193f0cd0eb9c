import CoreMetrics

/// What release this build is: `--version` of every binary, and `outbox_build_info` on `/metrics`.
/// `revision` (the git commit) is generated at build time by the `BuildRevision` plugin.
public enum BuildInfo {
    /// Raised with each release; `-dev` between releases.
    public static let version = "0.18.0-dev"

    /// What `--version` prints: `0.18.0-dev (revision 0123456789ab)`.
    public static var versionLine: String { "\(version) (revision \(revision))" }

    /// Sets `outbox_build_info{version,revision}` to 1 in the registry behind `factory`.
    public static func register(in factory: any MetricsFactory) {
        Gauge(label: "outbox_build_info", dimensions: [("version", version), ("revision", revision)], factory: factory)
            .record(1)
    }
}
