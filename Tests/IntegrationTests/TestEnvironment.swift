import Foundation
import Logging
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// The real servers started by `scripts/services up`, found through the variables that
/// `scripts/services env` prints. A missing variable is a test failure, never a skip: run
/// `make test`, or `eval "$(scripts/services env)"` before `swift test`.
enum TestEnvironment {
    typealias Missing = ServicesEnvironment.Missing

    static func variable(_ name: String) throws -> String { try ServicesEnvironment.variable(name) }

    static var logger: Logger {
        var logger = Logger(label: "integration-tests")
        logger.logLevel = .warning
        return logger
    }

    static func postgresConfiguration() throws -> PostgresConfiguration {
        var config = PostgresConfiguration(url: try variable("OUTBOX_POSTGRES_URL"))
        config.applicationName = "outbox-integration-tests"
        return config
    }

    static func redisConfiguration() throws -> RedisConfiguration {
        RedisConfiguration(url: try variable("OUTBOX_REDIS_URL"))
    }

    static func qdrantURL() throws -> String { try variable("OUTBOX_QDRANT_URL") }
    static func qdrantAPIKey() throws -> String { try variable("OUTBOX_QDRANT_API_KEY") }

    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    static var schemaDirectory: String { repositoryRoot.appendingPathComponent("schema").path }

    /// A copy of `config/outbox.yaml` in a temporary file, its relative paths made absolute, with
    /// `edit` applied to its text; the caller removes it.
    static func configCopy(_ edit: (String) -> String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-\(UUID().uuidString).yaml").path
        let shipped = try String(contentsOfFile: repositoryRoot.appendingPathComponent("config/outbox.yaml").path, encoding: .utf8)
            .replacingOccurrences(of: "../.local/", with: repositoryRoot.path + "/.local/")
            .replacingOccurrences(of: "directory: ../schema", with: "directory: \(schemaDirectory)")
        try edit(shipped).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The shipped configuration without `qdrant.collections`: for relays that embed with other
    /// dimensions than the shipped collection's (a collection of another size would refuse them).
    static func configWithoutCollections() throws -> String {
        try configCopy { $0.replacingOccurrences(of: "  collections:\n    extractions: {size: 384, distance: Cosine}\n", with: "") }
    }

    static func connect() async throws -> PostgresConnection {
        try await PostgresConnection.connect(try postgresConfiguration(), logger: logger)
    }

    /// A connection to the test database with the outbox schema applied (once per process;
    /// the migrator's advisory lock makes concurrent first calls safe).
    static func migratedConnection() async throws -> PostgresConnection {
        let connection = try await connect()
        try await Migrated.shared.ensure(connection)
        return connection
    }

    private actor Migrated {
        static let shared = Migrated()
        private var done = false

        func ensure(_ connection: PostgresConnection) async throws {
            guard !done else { return }
            try await Migrator(directory: TestEnvironment.schemaDirectory, logger: TestEnvironment.logger)
                .migrate(connection)
            done = true
        }
    }

    /// A throwaway database, dropped after `body` (see `ScratchDatabase`).
    static func withFreshDatabase<T>(
        migrated: Bool, _ body: (_ url: String, _ connection: PostgresConnection) async throws -> T
    ) async throws -> T {
        try await ScratchDatabase.with(
            server: try postgresConfiguration(), prefix: "outbox_test", schemaDirectory: migrated ? schemaDirectory : nil, logger: logger, body)
    }

    static func redis() async throws -> RedisConnection {
        try await RedisConnection.connect(try redisConfiguration(), logger: logger)
    }

    /// A unique name for objects a test creates (keys, streams, collections), so parallel tests
    /// and earlier runs never see each other's data.
    static func uniqueName(_ prefix: String) -> String {
        "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// A built executable of this package (`outbox-relay`, `outbox-reconciler`).
    static func executable(_ name: String) throws -> URL {
        let testBinaryDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent()
        for directory in [testBinaryDirectory, repositoryRoot.appendingPathComponent(".build/debug")] {
            let candidate = directory.appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw Missing(name: "the \(name) executable (run `swift build` first)")
    }
}

/// Runs a command to completion and returns its exit status and output.
struct ProcessResult {
    let status: Int32
    let stdout: String
    let stderr: String
}

func runProcess(_ executable: URL, _ arguments: [String], environment: [String: String] = [:]) async throws -> ProcessResult {
    // Output goes to files and the exit is polled: a blocking pipe read or waitUntilExit() here
    // would park a cooperative-pool thread for the child's lifetime (DESIGN §6 holds for tests too).
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-run-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let outURL = directory.appendingPathComponent("stdout"), errURL = directory.appendingPathComponent("stderr")
    FileManager.default.createFile(atPath: outURL.path, contents: nil)
    FileManager.default.createFile(atPath: errURL.path, contents: nil)
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.currentDirectoryURL = TestEnvironment.repositoryRoot
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    process.standardOutput = try FileHandle(forWritingTo: outURL)
    process.standardError = try FileHandle(forWritingTo: errURL)
    try process.run()
    while process.isRunning { try await Task.sleep(for: .milliseconds(20)) }
    return ProcessResult(
        status: process.terminationStatus, stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
}

/// Starts a long-running child whose stdout goes to a file, and waits (without blocking a
/// thread) until that file contains `readyLine`.
func startProcess(_ executable: URL, _ arguments: [String], readyLine: String = "ready", timeout: Duration = .seconds(15))
    async throws -> Process
{
    let outURL = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-helper-\(UUID().uuidString)")
    FileManager.default.createFile(atPath: outURL.path, contents: nil)
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.standardOutput = try FileHandle(forWritingTo: outURL)
    try process.run()
    let deadline = ContinuousClock.now + timeout
    while !((try? String(contentsOf: outURL, encoding: .utf8)) ?? "").contains(readyLine) {
        guard process.isRunning, ContinuousClock.now < deadline else {
            throw TestEnvironment.Missing(name: "\(executable.lastPathComponent) \(arguments.first ?? "") to print \(readyLine)")
        }
        try await Task.sleep(for: .milliseconds(20))
    }
    return process
}
