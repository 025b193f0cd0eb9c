import ArgumentParser
import Foundation
import Logging
import OutboxCore

/// Process-level helpers shared by both executables.
public enum CommandSupport {
    /// Sets up logging to stderr once per process. Level from `OUTBOX_LOG_LEVEL` (default info).
    public static func bootstrapLogging(label: String) -> Logger {
        let level = ProcessInfo.processInfo.environment["OUTBOX_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
        LoggingSystem.bootstrap { name in
            var handler = StreamLogHandler.standardError(label: name)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }

    /// Loads the configuration, or prints one line naming the problem and exits 2 (DESIGN §5).
    public static func loadConfiguration(path: String?) async -> OutboxConfiguration {
        do {
            return try await OutboxConfiguration.load(path: path ?? "config/outbox.yaml")
        } catch {
            fail("\(error)", exitCode: 2)
        }
    }

    /// Prints `message` to stderr as one line (libpq's messages span several) and exits.
    public static func fail(_ message: String, exitCode: Int32) -> Never {
        FileHandle.standardError.write(Data((oneLine(message) + "\n").utf8))
        exit(exitCode)
    }

    /// `text` with its line breaks (and the indentation after them) folded into "; ".
    public static func oneLine(_ text: String) -> String {
        text.split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            .joined(separator: "; ")
    }

    /// The store an error came from, the config key that points at it, and its secret-free
    /// address — or nil when `error` is not a failure to reach a store.
    public static func unreachable(_ error: any Error, _ config: OutboxConfiguration) -> (key: String, message: String)? {
        switch error {
        case let error as PostgresError where error.isConnectionError:
            let key = error.message.contains("password") && config.postgres.password != nil ? "postgres.password" : "postgres.url"
            return (key, "cannot reach Postgres at \(config.postgres.redactedURL): \(error.message)")
        case let error as RedisError where error.code == .connectionFailed || error.code == .connectionLost:
            let auth = ["WRONGPASS", "NOAUTH", "invalid password", "invalid username"].contains { error.message.contains($0) }
            let key = auth && config.redis.password != nil ? "redis.password" : "redis.url"
            return (key, "cannot reach Redis at \(config.redis.redactedURL): \(error.message)")
        case let error as HTTPTransportError:
            return ("qdrant.url", "cannot reach Qdrant at \(config.qdrant.url): \(error.message)")
        default:
            return nil
        }
    }

    /// Exits 2 with one line naming the key of the store `error` failed to reach, if it is such an
    /// error; returns otherwise.
    public static func exitIfUnreachable(_ error: any Error, _ config: OutboxConfiguration) {
        if let (key, message) = unreachable(error, config) { fail("\(key): \(message)", exitCode: 2) }
    }

    /// Runs the connectivity probe and prints a line per store; exits 0 when all answered, else 2.
    public static func runCheck(_ config: OutboxConfiguration, logger: Logger) async -> Never {
        let probes = await Connectivity.probe(config, logger: logger)
        for probe in probes {
            let state = probe.problem == nil ? "ok  " : "FAIL"
            let outcome = probe.problem.map { "\(probe.key): \(oneLine($0))" } ?? probe.detail
            print("\(state) \(probe.store.padding(toLength: 9, withPad: " ", startingAt: 0)) \(probe.address)  \(outcome)")
        }
        exit(probes.allSatisfy { $0.problem == nil } ? 0 : 2)
    }
}

/// `--config PATH`, taken by every command of both binaries.
public struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Configuration file.", valueName: "path"))
    public var config: String?

    public init() {}
}

/// `check`, shared by both binaries.
public struct CheckCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check the configuration and that Postgres, Redis and Qdrant answer.",
        discussion: "Prints one line per store. Exit 0 when all answer, 2 otherwise.")

    @OptionGroup public var options: GlobalOptions

    public init() {}

    public func run() async throws {
        let logger = CommandSupport.bootstrapLogging(label: "outbox.check")
        let config = await CommandSupport.loadConfiguration(path: options.config)
        await CommandSupport.runCheck(config, logger: logger)
    }
}

extension CommandSupport {
    /// Connects for a one-shot command (`application_name` = `name`, so `outbox-relay status` does
    /// not count it as a relay), or exits 2 naming the (redacted) address.
    public static func connect(_ config: OutboxConfiguration, name: String, logger: Logger) async -> PostgresConnection {
        var postgres = config.postgres
        postgres.applicationName = name
        do {
            return try await PostgresConnection.connect(postgres, logger: logger)
        } catch {
            exitIfUnreachable(error, config)
            fail("cannot reach Postgres at \(config.postgres.redactedURL): \(error)", exitCode: 2)
        }
    }
}
