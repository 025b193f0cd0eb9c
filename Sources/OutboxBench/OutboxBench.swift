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
            Scenarios (default: all but drain-redis-cluster, in this order; name one or more to run only those):

            - drain-redis: --drain-events redis.xadd events over --keys keys (1,000), committed in one transaction once the \
            relay is up (its start-up is printed on its own); the relay's drain rate from that commit to its last \
            acknowledgement, against two bounds measured in the same run: a one-statement SQL drain of the same rows \
            (DELETE ... RETURNING, 1,000 per statement) and Redis' pipelined XADD (1,000 per pipeline).
            - drain-redis-tracing: the drain-redis backlog drained by the relay with span export off and on, \
            alternated for --tracing-rounds rounds (2): with it on, every event carries a sampled traceparent of its own \
            (a span per event and one per Redis round trip), exported over OTLP/HTTP to a sink in this process that reads \
            and discards them; each round's rate and relay CPU per event, spans exported and dropped.
            - drain-redis-cluster: the drain-redis backlog, each key's events into one of 64 streams, drained from the \
            single Redis, from the Redis Cluster (scripts/services up redis-cluster), and from the cluster with \
            redis.wait_replicas 1, alternated for --tracing-rounds rounds: each variant's rate and CPU per event of \
            the relay, Postgres and Redis (all cluster nodes).
            - relays: the drain-redis backlog drained by --relays relay processes (1,2,4) on one database, the counts \
            alternated for --relays-rounds rounds (3): each round's events/s and their median; CPU µs per event of all \
            relays summed, of Postgres and of Redis; claims with events and empty (contention) of all relays; the cores \
            each party kept busy and what the rest of the machine used meanwhile (/proc/stat); events delivered by each relay.
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
            - writer-throughput: concurrent writers (issue 20) from libpq's own client, pgbench (when installed; -M prepared, \
            synchronous_commit on, --max-tries 1 --failures-detailed so a deadlock counts as a failed transaction) at \
            --writer-clients (1, 8, 16) clients: the domain insert alone and with an outbox.enqueue, a bare outbox.events row, \
            outbox.enqueue alone, 10 enqueues in one transaction (keys random over 1,000), ten bare rows with the same keys, and \
            the domain insert with the event as a logical WAL message (what WAL capture, issue 23, writes instead of a row). \
            --writer-rounds rounds in which every (transaction, clients) cell runs --writer-seconds in turn, the outbox and \
            extractions emptied before each; per cell the median tps and each round's, latency p50 / p99 (pgbench's \
            per-transaction log) and failed transactions; then enqueue / bare row and 10-key / ten bare rows' tps. No relay runs.
            - latency: writers commit at 1,000/s and 5,000/s for --seconds each; commit-to-delivered p50 / p90 / p99 / max.
            - sustained: --writers sessions (synchronous_commit on) commit one redis.xadd per transaction at --rate in all \
            (5,000/s), paced by absolute time, for --sustained-seconds; every --report-every seconds a line: events written \
            (and whether the writers kept the rate) and delivered, commit-to-delivered p50 / p99 / max (as latency measures it), \
            the backlog, the CPU of the relay and of Postgres, the relay's RSS; then the whole run and the last interval's \
            p99 over the first's. With --find-max: steps of --step-seconds at 1,000/s, 2,000/s, 4,000/s, ... and two \
            bisections; the highest rate at which the writers kept the rate and, over a step's second half, the backlog did \
            not grow (slope under 2 % of the rate) and p99 stayed under 100 ms.
            - catch-up: writers at --rate (1,000/s) throughout; after --warmup-seconds Redis is unreachable for \
            --outage-seconds (the relay's connection goes through scripts/pg-wire-proxy.py, which the bench kills and starts \
            again; the shared server is not touched); the backlog at the outage's end, the time to drain it after recovery, \
            commit-to-acknowledged p50 / p99 / max of the events written during the drain (a trigger the bench adds in its \
            scratch database logs the relay's acknowledgements).
            - catch-up-qdrant: the same with the Qdrant stand-in as the destination (qdrant.upsert events, 8-dim vectors).
            - large-payloads: --large-events redis.set events with values of --large-bytes, committed before the relay \
            starts; its peak RSS, the drain's time, failed attempts, dead letters, and every value's length (a few byte for \
            byte) in Redis.
            - reconcile-scan: outbox-reconciler reconcile (database-side categories) over --scan-rows rows, 1 % unembedded.
            - wal-read: the reading side of WAL capture (issue 23): --wal-events logical messages read from a logical slot \
            and decoded by this process (PostgresReplicationConnection), events/s and CPU per event, against Postgres' \
            own reader, pg_recvlogical, reading the same WAL from a second slot in the same run; with 1 and with 100 \
            events per transaction. Needs wal_level = logical (scripts/services sets it).

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
    @Option(help: "Keys the drain-redis, memory and large-payloads backlogs are spread over (round robin).") var keys = 1000
    @Option(help: "drain-redis-tracing and drain-redis-cluster: rounds, each a drain of every variant.") var tracingRounds = 2
    @Option(help: ArgumentHelp("relays: relay process counts, comma-separated (default: 1,2,4).", valueName: "n,n,..."),
            transform: { text in
                try text.split(separator: ",").map {
                    guard let n = Int($0.trimmingCharacters(in: .whitespaces)), (1...16).contains(n) else { throw ValidationError("--relays: \(text) is not a list of counts from 1 to 16") }
                    return n
                }
            })
    var relays: [Int] = [1, 2, 4]
    @Option(help: "relays: rounds, each draining the backlog once with every count.") var relaysRounds = 3
    @Option(help: "qdrant.upsert events preloaded for drain-qdrant.") var qdrantEvents = 50_000
    @Option(help: "Vector dimensions for drain-qdrant.") var vectorSize = 384
    @Option(help: "Backlog for the memory scenario.") var memoryEvents = 1_000_000
    @Option(help: "Rows for reconcile-scan.") var scanRows = 1_000_000
    @Option(help: "Measured transactions per writer-overhead variant.") var writerTransactions = 5_000
    @Option(help: "writer-throughput: seconds each (transaction, clients) cell runs per round.") var writerSeconds = 10
    @Option(help: "writer-throughput: rounds, each running every cell in turn.") var writerRounds = 2
    @Option(help: ArgumentHelp("writer-throughput: pgbench client counts, comma-separated (default: 1,8,16).", valueName: "n,n,..."),
            transform: { text in
                try text.split(separator: ",").map {
                    guard let n = Int($0.trimmingCharacters(in: .whitespaces)), n >= 1 else { throw ValidationError("--writer-clients: \(text) is not a list of counts >= 1") }
                    return n
                }
            })
    var writerClients: [Int] = [1, 8, 16]
    @Option(help: "Seconds per latency rate, and the idle window.") var seconds = 30
    @Option(help: "Writer sessions of sustained and catch-up, each its own Postgres connection with synchronous_commit on.") var writers = 4
    @Option(help: ArgumentHelp("Commits per second of all writers together (default: 5,000 for sustained, 1,000 for catch-up).", valueName: "per-second"))
    var rate: Int?
    @Option(help: "How long sustained writes.") var sustainedSeconds = 600
    @Option(help: ArgumentHelp("Seconds between sustained's report lines (default: 60, or 10 for runs shorter than 2 minutes).", valueName: "seconds"))
    var reportEvery: Int?
    @Flag(help: "sustained: step the rate up (1,000/s, 2,000/s, 4,000/s, ..., then bisect) to the highest it holds.") var findMax = false
    @Option(help: "Seconds per --find-max step; its second half is judged.") var stepSeconds = 30
    @Option(help: "catch-up: seconds of writing before the outage.") var warmupSeconds = 10
    @Option(help: "catch-up: seconds the destination is unreachable.") var outageSeconds = 300
    @Option(help: "redis.set events preloaded for large-payloads.") var largeEvents = 400
    @Option(help: "wal-read: logical messages written, then read from a slot (in each of two transaction sizes).") var walEvents = 200_000
    @Option(help: ArgumentHelp(
        "Bytes of each large-payloads value: base64 text of a seeded PRNG, which TOAST cannot compress (e.g. 65536 with --large-events 20000).",
        valueName: "bytes"))
    var largeBytes = 4 << 20
    @Option(help: "Write the figures as JSON to this file.") var json: String?
    @Option(help: ArgumentHelp("The outbox-relay binary to run (default: the one beside outbox-bench), e.g. another build for an A/B comparison.", valueName: "path"))
    var relay: String?
    @Option(help: ArgumentHelp("Log level of the relays the bench starts; trace logs every claim (keys, heads, where the next one starts).", valueName: "level"))
    var relayLogLevel = "warning"

    static let all = [
        "drain-redis", "drain-redis-tracing", "relays", "drain-qdrant", "idle", "memory", "writer-overhead", "writer-throughput", "latency", "sustained", "catch-up", "catch-up-qdrant",
        "large-payloads", "reconcile-scan", "wal-read",
    ]
    /// Named only: they need what `scripts/services up` does not start (the Redis Cluster).
    static let optIn = ["drain-redis-cluster"]

    func validate() throws {
        for s in scenarios where !(Self.all + Self.optIn).contains(s) {
            throw ValidationError("unknown scenario \(s); scenarios: \((Self.all + Self.optIn).joined(separator: ", "))")
        }
        for (name, value) in [("--writers", writers), ("--rate", rate ?? 1), ("--sustained-seconds", sustainedSeconds), ("--report-every", reportEvery ?? 1),
                              ("--step-seconds", stepSeconds), ("--outage-seconds", outageSeconds), ("--large-events", largeEvents), ("--wal-events", walEvents), ("--large-bytes", largeBytes),
                              ("--writer-seconds", writerSeconds), ("--tracing-rounds", tracingRounds), ("--relays-rounds", relaysRounds), ("--relays", relays.count), ("--writer-rounds", writerRounds), ("--writer-clients", writerClients.count)]
        where value < 1 {
            throw ValidationError("\(name) must be at least 1")
        }
        if warmupSeconds < 1 { throw ValidationError("--warmup-seconds must be at least 1") }
        if stepSeconds < 4 { throw ValidationError("--step-seconds must be at least 4 (its second half is judged, second by second)") }
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
            case "drain-redis-tracing": figures = try await bench.drainRedisTracing(events: drainEvents, keys: keys, rounds: tracingRounds)
            case "drain-redis-cluster": figures = try await bench.drainRedisCluster(events: drainEvents, keys: keys, rounds: tracingRounds)
            case "drain-qdrant": figures = try await bench.drainQdrant(events: qdrantEvents, dimensions: vectorSize)
            case "idle": figures = try await bench.idle()
            case "memory": figures = try await bench.memory(events: memoryEvents, keys: keys)
            case "writer-overhead": figures = try await bench.writerOverhead(transactions: writerTransactions)
            case "writer-throughput": figures = try await bench.writerThroughput(seconds: writerSeconds, rounds: writerRounds, clients: writerClients)
            case "latency": figures = try await bench.latency()
            case "sustained" where findMax: figures = try await bench.sustainedMaxRate(writers: writers, stepSeconds: stepSeconds)
            case "sustained":
                figures = try await bench.sustained(
                    writers: writers, rate: rate ?? 5000, seconds: sustainedSeconds, reportEvery: reportEvery ?? (sustainedSeconds < 120 ? 10 : 60))
            case "catch-up", "catch-up-qdrant":
                figures = try await bench.catchUp(
                    qdrant: scenario == "catch-up-qdrant", writers: writers, rate: rate ?? 1000, warmup: warmupSeconds, outage: outageSeconds)
            case "large-payloads": figures = try await bench.largePayloads(events: largeEvents, bytes: largeBytes, keys: keys)
            case "wal-read": figures = try await bench.walRead(events: walEvents)
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
