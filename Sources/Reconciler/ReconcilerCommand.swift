import ArgumentParser
import Foundation
import Logging
import OutboxCLI
import OutboxCore
import ServiceLifecycle
import UnixSignals

@main
struct ReconcilerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-reconciler",
        abstract: "Proves Postgres, Qdrant and Redis agree, and repairs drift.",
        discussion: """
            Configuration: config/outbox.yaml (see docs/CONFIGURATION.md), with OUTBOX_* environment overrides \
            such as OUTBOX_POSTGRES_URL.

            Exit status of reconcile: 0 consistent, 1 drift found, 2 error (bad configuration, unreachable service).
            """,
        version: BuildInfo.versionLine,
        subcommands: [Serve.self, Reconcile.self, Check.self],
        defaultSubcommand: Serve.self
    )
}

extension ReconcilerCommand {
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Scan every reconciler.interval, repair, raise alerts (the default command).",
            discussion: """
                Serves /livez, /readyz, /metrics and /status on reconciler.http.host:reconciler.http.port \
                (default 127.0.0.1:8471). Alerts go to the log and metrics, and to reconciler.alert_webhook_url and \
                reconciler.alert_redis_channel when set; they fire when a category turns non-empty or changes \
                materially and resolve when it clears.
                """)

        @OptionGroup var options: GlobalOptions

        func run() async throws {
            let logger = CommandSupport.bootstrapLogging(label: "outbox-reconciler")
            let config = await CommandSupport.loadConfiguration(path: options.config)
            CommandSupport.ensureCanListen(host: config.reconciler.httpHost, port: config.reconciler.httpPort, keyPrefix: "reconciler.http")
            let reconciler = ReconcilerService(configuration: config, logger: logger)
            let tracing = TraceExport.bootstrapOrExit(
                config.tracing, serviceName: "outbox-reconciler", logger: logger, metrics: reconciler.metricsFactory)
            let server = HealthServer.service(
                host: config.reconciler.httpHost, port: config.reconciler.httpPort, handlers: reconciler.handlers, logger: logger)
            // Stopped in reverse order: span export last, so it flushes the last scan's span.
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: (tracing.map { [.init(service: $0)] } ?? []) + [.init(service: server), .init(service: reconciler)],
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            do {
                try await group.run()
            } catch {
                CommandSupport.fail("outbox-reconciler: \(error)", exitCode: 2)
            }
        }
    }

    struct Reconcile: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One scan: report drift, repair what can be repaired. For ops and cron.",
            discussion: """
                Categories: unembedded (NULL embedding past the grace period, no live event: enqueue an upsert), \
                stuck (old or much-retried live events: report), dead (dead-lettered upserts: report; requeue them as \
                they are with --requeue-dead, or replace them with upserts built from the rows as they are now with \
                --reembed-dead), missing_point (embedding set, point absent: clear and enqueue an upsert), \
                orphan_point (point without a row: enqueue a delete). Exit 0 consistent, 1 drift found, 2 error.
                """)

        @OptionGroup var options: GlobalOptions

        @Flag(name: .long, help: "Report only; change nothing.")
        var dryRun = false

        @Flag(name: .long, help: "Print JSON (counts and sample ids per category).")
        var json = false

        @Option(name: .long, help: ArgumentHelp("Only this category (repeatable).", valueName: "name"))
        var category: [String] = []

        @Option(name: .long, help: "Sample ids kept per category.")
        var limit = 20

        @Flag(name: .long, help: "Requeue dead-lettered upserts of tracked rows, as they are.")
        var requeueDead = false

        @Flag(name: .long, help: "Replace dead-lettered upserts of tracked rows with upserts built from the rows (purge, then enqueue).")
        var reembedDead = false

        func validate() throws {
            for name in category where ReconcileReport.Category(rawValue: name) == nil {
                throw ValidationError(
                    "unknown category \"\(name)\"; categories: \(ReconcileReport.Category.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard limit >= 0 else { throw ValidationError("--limit must be 0 or more") }
            guard !(requeueDead && reembedDead) else { throw ValidationError("choose one of --requeue-dead and --reembed-dead") }
        }

        func run() async throws {
            let logger = CommandSupport.bootstrapLogging(label: "outbox-reconciler.reconcile")
            let config = await CommandSupport.loadConfiguration(path: options.config)
            var runOptions = Reconciler.Options()
            if !category.isEmpty { runOptions.categories = Set(category.compactMap(ReconcileReport.Category.init(rawValue:))) }
            runOptions.dryRun = dryRun
            runOptions.sampleLimit = limit
            runOptions.requeueDead = requeueDead
            runOptions.reembedDead = reembedDead
            let report: ReconcileReport
            do {
                let db = await CommandSupport.connect(config, name: "outbox-reconciler-cli", logger: logger)
                let progress = Progress()
                report = try await Reconciler(configuration: config, settings: config.reconciler, logger: logger)
                    .run(db, options: runOptions) { table, rows in progress.update(table: table, rows: rows) }
            } catch {
                CommandSupport.exitIfUnreachable(error, config)
                CommandSupport.fail("reconcile: \(error)", exitCode: 2)
            }
            if json {
                print(report.json.jsonText)
            } else {
                printTable(report)
            }
            throw ExitCode(report.isConsistent ? 0 : 1)
        }

        func printTable(_ report: ReconcileReport) {
            print("table".padding(toLength: 16, withPad: " ", startingAt: 0) + "category".padding(toLength: 15, withPad: " ", startingAt: 0)
                + "  count  repaired  sample")
            for (table, categories) in report.findings.sorted(by: { $0.key < $1.key }) {
                for (category, finding) in categories.sorted(by: { $0.key < $1.key }) {
                    let sample = finding.ids.prefix(3).joined(separator: ", ") + (finding.count > 3 ? ", …" : "")
                    print(table.padding(toLength: 16, withPad: " ", startingAt: 0)
                        + category.rawValue.padding(toLength: 15, withPad: " ", startingAt: 0)
                        + String(format: "%7d  %8d  ", finding.count, finding.repaired) + sample)
                    for detail in finding.details.prefix(3) where category == .stuck || category == .dead {
                        print("    \(detail)")
                    }
                }
            }
            let verdict = report.isConsistent ? "consistent" : (dryRun ? "drift found (dry run: nothing changed)" : "drift found")
            print(String(format: "%@: %d rows and %d points scanned in %.2f s", verdict, report.rowsScanned, report.pointsScanned,
                         report.durationSeconds))
        }
    }
}

/// Progress on stderr for long scans: at most one line per second.
final class Progress: @unchecked Sendable {
    // @unchecked Sendable: all state is guarded by `lock`.
    private let lock = NSLock()
    private let started = Date()
    private var lastPrint = Date()
    private var printed = false

    func update(table: String, rows: Int) {
        lock.lock()
        defer { lock.unlock() }
        guard Date().timeIntervalSince(lastPrint) >= 1 else { return }
        lastPrint = Date()
        printed = true
        let rate = Double(rows) / max(0.001, Date().timeIntervalSince(started))
        FileHandle.standardError.write(Data("scanning \(table): \(rows) rows (\(Int(rate)) rows/s)\n".utf8))
    }

}

extension ReconcilerCommand {
    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the configuration and what serve needs: Postgres and Qdrant answer, the schema and mapped tables.",
            discussion: """
                Prints one line per store: Postgres and Qdrant, and Redis when reconciler.alert_redis_channel is set (the \
                reconciler uses Redis for nothing else). Exit 0 when all answer and the outbox schema is this binary's \
                with every mapped table and column present, 2 otherwise (each failure naming the key to change).
                """)

        @OptionGroup var options: GlobalOptions

        func run() async throws {
            let logger = CommandSupport.bootstrapLogging(label: "outbox-reconciler.check")
            let config = await CommandSupport.loadConfiguration(path: options.config)
            await CommandSupport.runCheck(config, redis: config.reconciler.redisChannel != nil, logger: logger)
        }
    }
}
