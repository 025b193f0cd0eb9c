import Testing

/// Hostile input (issue 6): random and malformed events, NUL bytes, huge payloads, unicode, SQL
/// text in names; bad config files and unreachable hosts; abusive HTTP clients; secrets. Each test
/// asserts what a user sees: SQLSTATEs and messages, rows, dead letters, Redis bytes, Qdrant points,
/// exit codes and stderr, HTTP statuses, log lines.
///
/// The subjects live in their own suites, nested here (one file each): `HostileWriterInputTests`,
/// `HostileRelayPayloadTests`, `HostileConfigurationTests`, `HostileHTTPClientTests` and
/// `HostileSecretLeakTests`; their helpers in `EventFuzzer.swift` and `RawHTTPClient.swift`.
///
/// Serialized, and with it every suite nested here (the trait is recursive): each test starts relays
/// (and a 10 MB or fuzz workload); run all at once on a 2-core machine they starve the other suites'
/// timing checks (HTTPDriverTests' 100 ms pool-stall bound). Nested suites run in source order, so
/// one file after another, each file's tests top to bottom.
@Suite(.serialized) enum HostileInput {}
