/// What release this build is: `--version` of every binary.
public enum BuildInfo {
    /// Raised with each release; `-dev` between releases.
    public static let version = "0.18.0-dev"
}
