import Foundation
import Logging

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

    /// Prints `message` to stderr and exits.
    public static func fail(_ message: String, exitCode: Int32) -> Never {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        exit(exitCode)
    }

    /// Runs the connectivity probe and prints a line per store; exits 0 when all answered, else 2.
    public static func runCheck(_ config: OutboxConfiguration, logger: Logger) async -> Never {
        let probes = await Connectivity.probe(config, logger: logger)
        for probe in probes {
            let state = probe.problem == nil ? "ok  " : "FAIL"
            print("\(state) \(probe.store.padding(toLength: 9, withPad: " ", startingAt: 0)) \(probe.address)  \(probe.problem ?? probe.detail)")
        }
        exit(probes.allSatisfy { $0.problem == nil } ? 0 : 2)
    }
}
