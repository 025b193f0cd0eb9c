import Foundation
import OutboxCore

/// What the scenarios that run libpq's own client (writer-overhead's reference, writer-throughput)
/// share: finding pgbench, and the connection it takes by environment.
enum Pgbench {
    /// pgbench: Debian's postgresql-15 path, then `PATH`; nil when not installed.
    static var path: String? {
        let candidates = ["/usr/lib/postgresql/15/bin/pgbench"]
            + (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/pgbench" }
        return candidates.first(where: FileManager.default.isExecutableFile(atPath:))
    }

    static let notFound = "not run: pgbench not found (Debian package postgresql-15)"

    /// This process' environment plus the libpq variables for `parts`: the connection goes by
    /// environment, so no password is on a command line.
    static func environment(_ parts: URLParts, options: String) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["PGHOST"] = parts.host
        env["PGPORT"] = String(parts.port ?? 5432)
        env["PGUSER"] = parts.user ?? ""
        env["PGPASSWORD"] = parts.password ?? ""
        env["PGDATABASE"] = String(parts.path.dropFirst())
        env["PGOPTIONS"] = options
        return env
    }
}
