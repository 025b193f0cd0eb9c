import ArgumentParser
import Foundation
import Logging
import OutboxCLI
import OutboxCore

/// `outbox-bench`: the relay and reconciler measured against the bounds of the same machine, in
/// the same run. Each scenario gets a fresh database; the relay runs as its own process (the
/// `outbox-relay` binary next to this one), as in production.
@main
struct OutboxBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-bench",
        abstract: "Benchmarks: relay and reconciler against the bounds of the same machine.",
        discussion: """
            Scenarios (default: all, in this order; name one or more to run only those):

            - drain-redis: --drain-events redis.xadd events over --keys keys (1,000), committed in one transaction once the \
            relay is up (its start-up is printed on its own); the relay's drain rate from that commit to its last \
            acknowledgement, against two bounds measured in the same run: a one-statement SQL drain of the same rows \
            (DELETE ... RETURNING, 1,000 per statement) and Redis' pipelined XADD (1,000 per pipeline).
            - drain-qdrant: preload --qdrant-events qdrant.upsert events with --vector-size vectors, one key each; the \
            relay's rate against the Qdrant stand-in ingesting the same points directly in the requests the relay \
            makes (a claim of relay.batch_size events, split at relay.qdrant_max_batch_bytes; PUT \
            /points?wait=true&ordering=strong, one request at a time).
            - idle: statements on the wire (scripts/pg-wire-proxy.py) and CPU seconds of an idle relay over --seconds.
            - memory: peak RSS (VmHWM) of the relay while it drains a --memory-events redis.set backlog over --keys keys.
            - writer-overhead: a domain-only insert transaction against the same transaction with a qdrant.upsert \
            event in the insert's round trip (OutboxWriter.write; synchronous_commit=off), p50 / p99 and CPU per \
            transaction of the writer and its Postgres backend, the two alternated on their own. Then, all taking \
            turns: the event in one statement with the insert (a CTE), in a round trip of its own, and yardsticks (a \
            second domain row, the event's values sent without a row, a bare outbox.events row). Then the reference: \
            the same transactions from libpq's own client (pgbench, all statements prepared), when pgbench is installed.
            - latency: writers commit at 1,000/s and 5,000/s for --seconds each; commit-to-delivered p50 / p90 / p99 / max.
            - reconcile-scan: outbox-reconciler reconcile (database-side categories) over --scan-rows rows, 1 % unembedded.

            Each scenario runs in a fresh database (created and dropped on the server of postgres.url); the relay \
            runs as its own process. Needs the local services (scripts/services up; eval "$(scripts/services env)") \
            and a release build (swift build -c release). Prints a table; --json writes the figures. Timings depend \
            on what else the machine runs: compare runs made back to back.
            """,
        version: BuildInfo.versionLine)

    @Argument(help: "Scenarios to run.")
    var scenarios: [String] = []

    @OptionGroup var options: GlobalOptions

    @Option(help: "Events preloaded for drain-redis.") var drainEvents = 200_000
    @Option(help: "Keys the drain-redis and memory backlogs are spread over (round robin).") var keys = 1000
    @Option(help: "qdrant.upsert events preloaded for drain-qdrant.") var qdrantEvents = 50_000
    @Option(help: "Vector dimensions for drain-qdrant.") var vectorSize = 384
    @Option(help: "Backlog for the memory scenario.") var memoryEvents = 1_000_000
    @Option(help: "Rows for reconcile-scan.") var scanRows = 1_000_000
    @Option(help: "Measured transactions per writer-overhead variant.") var writerTransactions = 5_000
    @Option(help: "Seconds per latency rate, and the idle window.") var seconds = 30
    @Option(help: "Write the figures as JSON to this file.") var json: String?
    @Option(help: ArgumentHelp("The outbox-relay binary to run (default: the one beside outbox-bench), e.g. another build for an A/B comparison.", valueName: "path"))
    var relay: String?
    @Option(help: ArgumentHelp("Log level of the relays the bench starts; trace logs every claim (keys, heads, where the next one starts).", valueName: "level"))
    var relayLogLevel = "warning"

    static let all = ["drain-redis", "drain-qdrant", "idle", "memory", "writer-overhead", "latency", "reconcile-scan"]

    func validate() throws {
        for s in scenarios where !Self.all.contains(s) {
            throw ValidationError("unknown scenario \(s); scenarios: \(Self.all.joined(separator: ", "))")
        }
    }

    func run() async throws {
        let logger = CommandSupport.bootstrapLogging(label: "outbox-bench")
        let config = await CommandSupport.loadConfiguration(path: options.config)
        let bench = Bench(
            config: config, configPath: options.config ?? "config/outbox.yaml", logger: logger, seconds: seconds,
            relayBinary: relay.map { URL(fileURLWithPath: $0) }, relayLogLevel: relayLogLevel)
        var results: [(String, [(String, String)])] = []
        for scenario in scenarios.isEmpty ? Self.all : scenarios {
            FileHandle.standardError.write(Data("== \(scenario)\n".utf8))
            let figures: [(String, String)]
            switch scenario {
            case "drain-redis": figures = try await bench.drainRedis(events: drainEvents, keys: keys)
            case "drain-qdrant": figures = try await bench.drainQdrant(events: qdrantEvents, dimensions: vectorSize)
            case "idle": figures = try await bench.idle()
            case "memory": figures = try await bench.memory(events: memoryEvents, keys: keys)
            case "writer-overhead": figures = try await bench.writerOverhead(transactions: writerTransactions)
            case "latency": figures = try await bench.latency()
            default: figures = try await bench.reconcileScan(rows: scanRows)
            }
            results.append((scenario, figures))
            let width = max(60, figures.map(\.0.count).max() ?? 0)
            for (name, value) in figures { print("\(scenario.padding(toLength: 16, withPad: " ", startingAt: 0)) \(name.padding(toLength: width, withPad: " ", startingAt: 0)) \(value)") }
        }
        if let json {
            let body: JSONValue = .object(Dictionary(uniqueKeysWithValues: results.map { scenario, figures in
                (scenario, JSONValue.object(Dictionary(uniqueKeysWithValues: figures.map { ($0.0, JSONValue.string($0.1)) })))
            }))
            try body.jsonText.write(toFile: json, atomically: true, encoding: .utf8)
        }
    }
}
