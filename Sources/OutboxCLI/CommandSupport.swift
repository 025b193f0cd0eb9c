import ArgumentParser
import Foundation
import Logging
import OutboxCore

/// Process-level helpers shared by both executables.
public enum CommandSupport {
    /// Sets up logging to stderr once per process. Level from `OUTBOX_LOG_LEVEL` (default info; any
    /// case), format from `OUTBOX_LOG_FORMAT` (`text`, the default, or `json`: one object per
    /// line); an unknown value exits 2 naming the variable rather than silently meaning the default.
    /// A line logged inside a span carries its `trace_id` and `span_id`.
    public static func bootstrapLogging(label: String) -> Logger {
        let environment = ProcessInfo.processInfo.environment
        var level = Logger.Level.info
        if let text = environment["OUTBOX_LOG_LEVEL"], !text.isEmpty {
            guard let parsed = Logger.Level(rawValue: text.lowercased()) else {
                fail(
                    "config: OUTBOX_LOG_LEVEL: unknown level \"\(text)\"; one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))",
                    exitCode: 2)
            }
            level = parsed
        }
        let json: Bool
        switch environment["OUTBOX_LOG_FORMAT"]?.lowercased() {
        case nil, "", "text": json = false
        case "json": json = true
        case let other?: fail("config: OUTBOX_LOG_FORMAT: unknown format \"\(other)\"; one of text, json", exitCode: 2)
        }
        LoggingSystem.bootstrap(
            { name, provider in
                var handler: any LogHandler =
                    json ? JSONLogHandler(label: name, metadataProvider: provider) : StreamLogHandler.standardError(label: name, metadataProvider: provider)
                handler.logLevel = level
                return handler
            }, metadataProvider: TraceExport.logMetadata)
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
            return ("qdrant.url", "cannot reach Qdrant at \(config.qdrant.redactedURL): \(error.message)")
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
    public static func runCheck(_ config: OutboxConfiguration, redis: Bool = true, logger: Logger) async -> Never {
        let probes = await Connectivity.probe(config, redis: redis, logger: logger)
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

/// `outbox-relay check` (the reconciler has its own: it needs Redis only for alerts).
public struct CheckCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check the configuration and what serve needs: Postgres, Redis and Qdrant answer, the schema and mapped tables.",
        discussion: """
            Prints one line per store. Exit 0 when all answer and the outbox schema is this binary's with every mapped \
            table and column present, 2 otherwise (each failure naming the key to change).
            """)

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
        let db: PostgresConnection
        do {
            db = try await PostgresConnection.connect(postgres, logger: logger)
            let migrated = try await db.query("SELECT to_regclass('outbox.events') IS NOT NULL AS m").first?.decode("m", as: Bool.self)
            guard migrated == true else {
                fail("postgres.url: the outbox schema is missing in \(config.postgres.redactedURL): run `outbox-relay migrate` first", exitCode: 2)
            }
        } catch {
            exitIfUnreachable(error, config)
            fail("cannot reach Postgres at \(config.postgres.redactedURL): \(error)", exitCode: 2)
        }
        return db
    }

    /// Exit 1, saying so, when ids were named and none of them is a dead letter (a typo, or another
    /// operator got there first); a key or `--all` that matches nothing is not an error.
    public static func failIfNoneMatched(_ count: Int, _ selection: DeadLetters.Selection) {
        guard count == 0, case .ids(let ids) = selection else { return }
        fail("no dead letter with id \(ids.map(String.init).joined(separator: ", ")) (see `outbox-relay dead-letters list`)", exitCode: 1)
    }
}

extension CommandSupport {
    /// Exits 2 naming the key when the health server could not listen on `host:port`, before any
    /// worker starts: a port in use (another daemon on it) surfaced as a NIO bind error after the
    /// workers had started. Binds with `SO_REUSEADDR`, as the server does, then closes at once.
    public static func ensureCanListen(host: String, port: Int, keyPrefix: String) {
        guard port != 0 else { return }
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var results: UnsafeMutablePointer<addrinfo>?
        let lookup = getaddrinfo(host, String(port), &hints, &results)
        guard lookup == 0, let first = results else {
            fail("config: \(keyPrefix).host: cannot listen on \(host): \(String(cString: gai_strerror(lookup)))", exitCode: 2)
        }
        defer { freeaddrinfo(results) }
        var failure: Int32 = 0
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            if fd >= 0 {
                var one: Int32 = 1
                _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
                let bound = bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0
                failure = bound ? 0 : errno
                close(fd)
                if bound { return }
            }
            candidate = info.pointee.ai_next
        }
        if failure == EADDRINUSE {
            fail(
                "config: \(keyPrefix).port: \(host):\(port) is already in use (another daemon on it?); choose a free port "
                    + "(\(keyPrefix).port, \(ConfigurationError.environmentVariable(for: keyPrefix + ".port")))",
                exitCode: 2)
        }
        fail("config: \(keyPrefix).host: cannot listen on \(host):\(port): \(String(cString: strerror(failure)))", exitCode: 2)
    }
}
