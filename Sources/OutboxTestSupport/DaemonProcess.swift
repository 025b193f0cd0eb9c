import Foundation
import Logging
import OutboxCore

/// `outbox-relay serve` or `outbox-reconciler serve` as a child process, as an operator runs it:
/// its own environment, its health server on `port`, its output in a log file.
///
/// The use of `@unchecked Sendable` is safe for this type because: the `Process` is only started,
/// signalled and read from the task that owns this object; `signalled` is written by that task alone.
public final class DaemonProcess: @unchecked Sendable {
    public let process = Process()
    public let port: Int
    public let logURL: URL
    /// One handle for every health and metrics request: a new one per poll (a thread and a libcurl
    /// handle each) cost a benchmark 19 % of a core, taken from the processes it measured.
    let http: HTTPConnection
    /// The harness signalled it, so an exit is expected.
    private var signalled = false

    /// Starts `executable serve --config config` in `directory` with the caller's environment plus
    /// `environment`, its health server on `port` (`OUTBOX_RELAY_HTTP_PORT` or
    /// `OUTBOX_RECONCILER_HTTP_PORT`, by the executable's name).
    public init(
        executable: URL, config: String, directory: URL, port: Int, environment: [String: String], logger: Logger
    ) throws {
        self.port = port
        http = HTTPConnection(logger: logger)
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent("\(executable.lastPathComponent)-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        process.executableURL = executable
        process.arguments = ["serve", "--config", config]
        process.currentDirectoryURL = directory
        let portVariable = executable.lastPathComponent.contains("reconciler") ? "OUTBOX_RECONCILER_HTTP_PORT" : "OUTBOX_RELAY_HTTP_PORT"
        process.environment = ProcessInfo.processInfo.environment.merging([portVariable: String(port)]) { $1 }
            .merging(environment) { $1 }
        let log = try FileHandle(forWritingTo: logURL)
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
        } else if !signalled {
            // A daemon that died under a test (a port taken, a crash) shows why.
            FileHandle.standardError.write(Data(
                "\(process.executableURL?.lastPathComponent ?? "daemon") on port \(port) exited on its own (status \(process.terminationStatus)); its log ends:\n\(log.suffix(3000))\n".utf8))
        }
        try? FileManager.default.removeItem(at: logURL)
    }

    public var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }
    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    public func signal(_ signal: Int32) {
        signalled = true
        kill(process.processIdentifier, signal)
    }

    /// Waits for the process to exit; returns its status, or nil on timeout.
    public func waitForExit(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// SIGTERM, then waits for the exit (a graceful shutdown finishes the batch in hand).
    public func stop() async {
        signal(SIGTERM)
        while process.isRunning { try? await Task.sleep(for: .milliseconds(20)) }
    }

    /// GET `path` on the daemon's health server: (status, body), or nil if it did not answer.
    public func get(_ path: String) async -> (status: Int, body: String)? {
        guard let r = try? await http.perform(HTTPRequest(method: .GET, url: "http://127.0.0.1:\(port)\(path)", timeout: .seconds(2)))
        else { return nil }
        return (r.status, r.bodyText)
    }

    /// Returns once `/readyz` answers 200; throws if the process exits first or `timeout` passes.
    public func waitUntilReady(timeout: Duration = .seconds(30), poll: Duration = .milliseconds(5)) async throws {
        let deadline = ContinuousClock.now + timeout
        while await get("/readyz")?.status != 200 {
            guard process.isRunning else {
                throw HarnessError("\(process.executableURL?.lastPathComponent ?? "daemon") exited during start-up (status \(process.terminationStatus)); its log ends:\n\(log.suffix(2000))")
            }
            guard ContinuousClock.now < deadline else {
                throw HarnessError("not ready within \(timeout); /readyz: \(await get("/readyz")?.body ?? "no answer"); log:\n\(log.suffix(2000))")
            }
            try await Task.sleep(for: poll)
        }
    }

    /// The sum of the `/metrics` samples whose line starts with `prefix` (a metric name, or a name
    /// with labels: `outbox_events_delivered_total{destination="redis"}`); -1 if it did not answer.
    public func metric(_ prefix: String) async -> Int {
        guard let body = await get("/metrics")?.body else { return -1 }
        return body.split(separator: "\n").filter { $0.hasPrefix(prefix) }
            .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0) { $0 + Int($1) }
    }
}
