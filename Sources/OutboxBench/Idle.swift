import Foundation
import OutboxCore
import OutboxTestSupport

extension Bench {
    func idle() async throws -> [(String, String)] {
        try await withDatabase { url, _ in
            // Count statements at the wire: scripts/pg-wire-proxy.py between the relay and Postgres.
            guard var parts = URLParts(url) else { return [] }
            let port = 18_480
            let countFile = FileManager.default.temporaryDirectory.appendingPathComponent("bench-statements").path
            let proxy = try await startForwarder(port: port, to: parts.host, parts.port ?? 5432, countFile: countFile)
            defer { kill(proxy.processIdentifier, SIGKILL) }
            parts.port = port
            func count() -> Int { Int((try? String(contentsOfFile: countFile, encoding: .utf8)) ?? "") ?? 0 }
            let (q0, c0, q1, c1) = try await withRelay(
                "postgresql://\(parts.user ?? ""):\(parts.password ?? "")@127.0.0.1:\(port)\(parts.path)", port: 18_471
            ) { relay in
                try await relay.waitUntilReady()
                try await Task.sleep(for: .seconds(2))  // its first pass over the (empty) outbox done
                let (q0, c0) = (count(), cpuSeconds(relay.pid))
                try await Task.sleep(for: .seconds(seconds))
                return (q0, c0, count(), cpuSeconds(relay.pid))
            }
            return [
                ("window", "\(seconds) s at relay.poll_interval \(config.relay.pollInterval)"),
                ("statements", "\(q1 - q0) (\(fmt(Double(q1 - q0) / Double(seconds), 2))/s)"),
                ("cpu seconds", fmt(c1 - c0, 3) + " (\(fmt((c1 - c0) / Double(seconds) * 100, 3)) % of a core)"),
            ]
        }
    }
}
