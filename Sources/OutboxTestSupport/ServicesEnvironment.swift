import Foundation

/// The local services that `scripts/services up` starts, found through the variables that
/// `scripts/services env` prints (`OUTBOX_POSTGRES_URL`, `OUTBOX_REDIS_URL`, `OUTBOX_QDRANT_URL`,
/// `OUTBOX_QDRANT_API_KEY`). A missing variable is an error, never a reason to skip.
public enum ServicesEnvironment {
    public struct Missing: Error, CustomStringConvertible {
        public let name: String
        public init(name: String) { self.name = name }
        public var description: String {
            "\(name) is not set: start the services with `scripts/services up` and run `eval \"$(scripts/services env)\"` (or use `make test`)"
        }
    }

    public static func variable(_ name: String) throws -> String {
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else { throw Missing(name: name) }
        return value
    }
}

/// Something a harness waited for did not happen (a process exited, a deadline passed).
public struct HarnessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
