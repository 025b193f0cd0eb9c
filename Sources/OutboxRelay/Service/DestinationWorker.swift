import Foundation
import OutboxCore
import CoreMetrics
import Logging
import Synchronization
import Tracing

/// Drains one destination: claim → deliver → acknowledge, all inside one transaction.
///
/// A worker drains through one or more *lanes*, each a Postgres session running that loop. Lanes
/// share the deliverer, hence its one HTTP handle or Redis connection: one request is in flight at
/// a time, and a second lane claims and prepares its batch meanwhile (measured on qdrant.upsert
/// with 384-dim vectors: claim and JSON work were a third of each batch's time). Lanes claim like
/// two relays do — heads `SKIP LOCKED`, so they never share a key and per-key order holds — and
/// a lane's claim passes over the keys its siblings hold (`OutboxStore.claim`'s `excludingKeys`),
/// which a claim from another relay cannot know. Lane 0
/// answers the listener's wake-ups; other lanes are woken by a lane whose claim came back full
/// (a backlog), and sleep when their own pass over the events ends with nothing to claim.
final class DestinationWorker: Sendable {
    let destination: OutboxEvent.Destination
    let lanes: [Lane]
    let deliverer: any Deliverer
    let settings: RelaySettings
    let sourceTypes: SourceColumnTypes
    let health: RelayHealth
    let metrics: RelayMetrics
    let logger: Logger
    /// Starts a span per traced event (`DeliveryTraces`); nil when span export is off.
    let tracer: (any Tracer)?

    /// Lanes per destination. Qdrant: a request waits on Qdrant's write (`wait=true`) for long
    /// enough to claim and encode the next batch meanwhile. Redis: claim, delivery and
    /// acknowledgement each keep a different process busy (Postgres, Redis, the relay), so a second
    /// lane's claim overlaps the first one's delivery (drain-redis: 40,000 → 60,000 events/s,
    /// docs/PERFORMANCE.md).
    static let laneCount = 2

    /// One Postgres session of the worker and where its next claim's scan starts (see
    /// `OutboxStore.claim`).
    ///
    /// The use of `@unchecked Sendable` is safe for this type because: `cursor`, `course`,
    /// `headsLimit`, `passFoundHeads` and `horizon` are only read and written by the single task that runs
    /// this lane's loop;
    /// `heldKeys`, which sibling lanes read, is a mutex.
    final class Lane: @unchecked Sendable {
        let db: PostgresConnection
        /// Wakes this lane when it is not lane 0 (which uses the listener's).
        let wakeup = Wakeup()
        var cursor: Int64 = 0
        /// Where the next claim starts after one that found no heads (see `ClaimPlanning.afterEmptyWindow`).
        var course = ClaimPlanning.Course()
        /// Heads the next claim takes at most (see `ClaimPlanning.nextHeadsLimit`).
        var headsLimit: Int
        /// A claim of this pass over the events found heads (see `ClaimPlanning.claimAgainAtOnce`).
        var passFoundHeads = false
        /// The ids this lane's claims may take (see `ClaimHorizon`).
        var horizon = ClaimHorizon()
        /// The keys this lane's open claim holds, which its siblings' claims pass over.
        let heldKeys = Mutex<[String]>([])
        init(db: PostgresConnection, headsLimit: Int) { (self.db, self.headsLimit) = (db, headsLimit) }
    }

    private init(
        destination: OutboxEvent.Destination, lanes: [Lane], deliverer: any Deliverer, settings: RelaySettings,
        sourceTypes: SourceColumnTypes, health: RelayHealth, metrics: RelayMetrics, logger: Logger, tracer: (any Tracer)?
    ) {
        self.destination = destination
        self.lanes = lanes
        self.deliverer = deliverer
        self.settings = settings
        self.sourceTypes = sourceTypes
        self.health = health
        self.metrics = metrics
        self.logger = logger
        self.tracer = tracer
    }

    static func start(
        destination: OutboxEvent.Destination, configuration: OutboxConfiguration, health: RelayHealth, metrics: RelayMetrics,
        logger: Logger, tracer: (any Tracer)?
    ) async throws -> DestinationWorker {
        var postgres = configuration.postgres
        postgres.applicationName = "outbox-relay"
        postgres.sessionSettings = [
            // A relay frozen mid-claim (SIGSTOP, a hung host) loses its session after this long,
            // and with it the row locks: other relays take over its keys.
            "idle_in_transaction_session_timeout": "\(configuration.relay.claimIdleTimeout.milliseconds)ms",
            // outbox.events is a queue: its statistics are nearly always stale (a bulk load lands
            // between two ANALYZEs). With them, the planner may sort the whole backlog for every
            // claim (measured: 1.3 s instead of 3 ms per claim on 200,000 events). Claims and
            // acknowledgements only need index-ordered scans; make sorts, bitmaps and sequential
            // scans a last resort (with statistics from before a bulk load, acknowledging 5,000
            // events by id read the whole table: 23-26 ms per acknowledgement in drain-redis).
            "enable_sort": "off",
            "enable_bitmapscan": "off",
            "enable_seqscan": "off",
            // A plan that needs a disabled node anyway (the byte cap's window sorts its ≤ batch_size
            // rows) carries the 10^10 cost that marks it, far over jit_above_cost: Postgres then
            // JIT-compiled the claim, 230 ms of compiling for a 1 ms query, every claim. The
            // relay's statements are all short: JIT never pays for itself here.
            "jit": "off",
        ]
        var lanes: [Lane] = []
        for _ in 0..<laneCount {
            lanes.append(Lane(db: try await PostgresConnection.connect(postgres, logger: logger), headsLimit: configuration.relay.batchSize))
        }
        let db = lanes[0].db
        // The schema must be this binary's: a database migrated by a newer binary may hold what this
        // one would misread, and one with migrations pending lacks what its claims read (e.g.
        // `payload_bytes`, schema/011). Apply migrations before upgrading relays. (Without the
        // schema files at hand — a binary deployed alone — there is nothing to compare.)
        if let migrator = try? Migrator(directory: configuration.schemaDirectory, logger: logger),
            let problem = try await migrator.standing(of: db).problem
        {
            throw problem
        }
        let sourceTypes = try await SourceColumnTypes.resolve(configuration.tables, on: db)
        let deliverer: any Deliverer
        switch destination {
        case .redis:
            let (redis, cluster) = try await RedisCluster.open(configuration.redis, logger: logger)
            let instance = try await db.query("SELECT id FROM outbox.instance").first?.decode("id", as: String.self) ?? "default"
            deliverer = RedisDeliverer(
                redis: redis, dedupeNamespace: "\(configuration.relay.dedupePrefix):\(instance)",
                dedupeTTL: configuration.relay.dedupeTTL, logger: logger, maxBulkLength: await RedisDeliverer.maxBulkLength(of: redis),
                traceField: configuration.tracing.streamField, cluster: cluster,
                waitReplicas: configuration.relay.waitReplicas, waitTimeout: configuration.relay.waitTimeout)
        case .qdrant:
            let client = QdrantClient(configuration: configuration.qdrant, logger: logger)
            // Qdrant must answer, as Redis must for the Redis worker: an unreachable Qdrant makes
            // the worker retry its start and /readyz say so, instead of "ready" until an event fails.
            // (A refused key does not stop the start: its events wait, reported as failing.)
            _ = try await client.call(.listCollections)
            if let problem = try await client.collectionProblem(configuration.collections) { throw problem }
            for spec in configuration.collections.values.sorted(by: { $0.name < $1.name }) where spec.createdByRelay {
                // Best effort at start; a 404 during delivery creates it again.
                if let reply = try? await client.ensureCollection(spec), reply.status != 200 {
                    logger.warning("Could not create Qdrant collection", metadata: [
                        "qdrant.collection": "\(spec.name)", "qdrant.status": "\(reply.status)", "qdrant.error": "\(reply.error ?? "")",
                    ])
                }
            }
            deliverer = QdrantDeliverer(
                client: client, embedder: configuration.embedding.makeEmbedder(logger: logger), tables: configuration.tables,
                sourceTypes: sourceTypes, collections: configuration.collections,
                maxBatchBytes: configuration.relay.qdrantMaxBatchBytes, tracePayloadKey: configuration.tracing.pointPayloadKey, logger: logger)
        }
        return DestinationWorker(
            destination: destination, lanes: lanes, deliverer: deliverer, settings: configuration.relay, sourceTypes: sourceTypes,
            health: health, metrics: metrics, logger: logger, tracer: tracer)
    }

    func run(wakeup: Wakeup, stopping: StopFlag, component: String) async throws {
        let wakeups = lanes.indices.map { $0 == 0 ? wakeup : lanes[$0].wakeup }
        guard lanes.count > 1 else { return try await runLane(0, wakeups: wakeups, stopping: stopping, component: component) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in lanes.indices {
                group.addTask { try await self.runLane(index, wakeups: wakeups, stopping: stopping, component: component) }
            }
            do {
                while try await group.next() != nil {}
            } catch {
                // One lane failed (e.g. its connection broke): stop the others, which may be
                // sleeping until a sibling's signal, so the worker restarts as a whole.
                group.cancelAll()
                throw error
            }
        }
    }

    private func runLane(_ index: Int, wakeups: [Wakeup], stopping: StopFlag, component: String) async throws {
        let lane = lanes[index]
        var nextRetry: ContinuousClock.Instant?
        /// When this lane last heard from the destination (a claim it delivered, or a probe).
        var lastContact = ContinuousClock.now
        // Lane 0's side of the wake-up handshake (`WakeLock`): armed while it sleeps, so that
        // writers notify only then.
        var armed = false
        /// How long to wait before claiming again while a writer keeps the lane from arming.
        var armRetry = Self.linger
        while !stopping.isSet, !Task.isCancelled {
            let result = try await drainBatch(lane)
            await health.postgresOK(component)
            if result.claimed > 0 {
                lastContact = .now
                armRetry = Self.linger
                if armed {
                    try await WakeLock.disarm(lane.db, destination)
                    armed = false
                }
            }
            if result.full {
                for (i, other) in wakeups.enumerated() where i != index { await other.signal() }
            }
            if let retry = result.retryIn {
                let at = ContinuousClock.now + retry
                nextRetry = min(nextRetry ?? at, at)
            }
            if !lane.horizon.limits.busy.isEmpty {
                // Writers still running may hold events back (`ClaimHorizon`), and one that rolls
                // back notifies no one: look again soon rather than at the next poll.
                let at = ContinuousClock.now + Self.maxArmRetry
                nextRetry = min(nextRetry ?? at, at)
            }
            guard !result.more else { continue }
            guard index == 0 else {
                // Lanes other than 0 wait for a full claim.
                await wakeups[index].wait(until: nil)
                continue
            }
            if !armed {
                // Under load the next event is a moment away: look once more before arming, which
                // would make the writers of that moment notify.
                if result.claimed > 0 {
                    await wakeups[index].wait(until: .now + Self.linger)
                    continue
                }
                switch try await WakeLock.arm(lane.db, destination) {
                case .armed:
                    armed = true
                    continue  // what writers that did not notify committed before the lane armed
                case .armedElsewhere:
                    break
                case .writerCommitting:
                    await wakeups[index].wait(until: .now + armRetry)
                    armRetry = min(armRetry * 2, Self.maxArmRetry)
                    continue
                }
            }
            // Lane 0 answers the listener's wake-ups, and retries when they fall due (checking at
            // least every `relay.poll_interval`). With no retry pending, an idle lane 0 probes the
            // destination each `relay.poll_interval` instead of claiming: a stopped destination or
            // a refused key shows on /readyz with no event to fail, and costs Postgres nothing.
            while !stopping.isSet, !Task.isCancelled {
                let deadline = nextRetry.map { min($0, .now + settings.pollInterval) } ?? lastContact + settings.pollInterval
                if await wakeups[index].wait(until: deadline) || nextRetry != nil { break }
                await health.probed(destination, failure: await deliverer.probe())
                lastContact = .now
            }
            if let due = nextRetry, due <= .now { nextRetry = nil }
        }
        // Lane 0 is the one the shutdown signal wakes: pass it on.
        if index == 0 { for other in wakeups.dropFirst() { await other.signal() } }
    }

    /// An event whose `traceparent` is not a valid trace context: counted and logged once (at its
    /// first attempt), then delivered as if it had none.
    private func invalidTraceContext(_ event: ClaimedEvent) {
        guard event.attempts == 0 else { return }
        metrics.invalidTraceContext(destination).increment()
        logger.debug("Ignoring an invalid traceparent", metadata: [
            "outbox.event_id": "\(event.id)", "outbox.traceparent": "\(event.traceParent?.prefix(80) ?? "")",
        ])
    }

    /// How long lane 0 waits, unarmed, before its last claim before sleeping.
    static let linger = Duration.milliseconds(2)
    /// The longest lane 0 waits between claims while writers keep it from arming (one long
    /// transaction that enqueued, say): events committed meanwhile by writers that did not notify
    /// wait at most this long.
    static let maxArmRetry = Duration.milliseconds(50)

    struct BatchResult {
        var claimed = 0
        /// The claim took `relay.batch_size` keys: there is probably more.
        var full = false
        /// Claim again at once (see `ClaimPlanning.nextScan`).
        var more = false
        var retryIn: Duration?
    }

    /// One claim → deliver → acknowledge transaction.
    func drainBatch(_ lane: Lane) async throws -> BatchResult {
        let started = Date()
        // The keys are released with the transaction's end, not before.
        defer { lane.heldKeys.withLock { $0 = [] } }
        // A sibling's keys: their heads are locked and the rest of their events are followers.
        let siblingsKeys = lanes.filter { $0 !== lane }.flatMap { $0.heldKeys.withLock { $0 } }
        var result = BatchResult()
        var traces = DeliveryTraces.none
        let settlement: Settlement?
        do {
            settlement = try await lane.db.transaction { tx -> Settlement? in
                try await lane.horizon.observe(tx, destination: destination)
                let claim = try await OutboxStore.claim(
                    tx, destination: destination, batchSize: settings.batchSize, batchEvents: settings.batchEvents,
                    maxPerKey: settings.maxPerKey, maxBytes: settings.claimBytes(lanes: Self.laneCount * OutboxEvent.Destination.allCases.count),
                    after: lane.cursor, excludingKeys: siblingsKeys, maxHeads: lane.headsLimit, horizon: lane.horizon.limits)
                let events = claim.events
                logger.trace("Claimed", metadata: [
                    "outbox.lane": "\(lanes.firstIndex { $0 === lane } ?? -1)", "outbox.after": "\(lane.cursor)",
                    "outbox.heads": "\(claim.heads)", "outbox.heads_limit": "\(lane.headsLimit)", "outbox.events": "\(events.count)",
                    "outbox.next": "\(claim.next.cursor)", "outbox.resume": "\(claim.resume.map(String.init) ?? "-")",
                    "outbox.claim_ms": "\(Int(Date().timeIntervalSince(started) * 1000))",
                ])
                result.claimed = events.count
                result.full = claim.heads >= lane.headsLimit || claim.capped
                lane.headsLimit = ClaimPlanning.nextHeadsLimit(lane.headsLimit, heads: claim.heads, saturated: claim.saturated, settings: settings)
                result.more = ClaimPlanning.claimAgainAtOnce(after: claim.next, heads: claim.heads, passFoundHeads: &lane.passFoundHeads)
                lane.cursor = claim.next.cursor
                if claim.heads > 0 {
                    lane.course = ClaimPlanning.Course(resume: claim.resume)
                } else if claim.next.cursor != 0 {
                    lane.cursor = ClaimPlanning.afterEmptyWindow(&lane.course, windowEnd: claim.next.cursor)
                }
                guard !events.isEmpty else { return nil }
                lane.heldKeys.withLock { $0 = Array(Set(events.map(\.key))) }
                // A payload that cannot be delivered exactly as stored is not sent (the settlement
                // dead-letters it with the reason); the rest goes out as usual.
                let readable = events.filter { $0.payloadProblem == nil }
                traces = DeliveryTraces(events, destination: destination, tracer: tracer) { self.invalidTraceContext($0) }
                let outcomes = readable.isEmpty ? [:] : await deliverer.deliver(readable, traces: traces)
                let settlement = Settlement(events: events, outcomes: outcomes, settings: settings)
                try await OutboxStore.acknowledge(tx, settlement, sources: sourceTypes)
                return settlement
            }
        } catch {
            traces.end(failure: error)
            throw error
        }
        metrics.claims(destination, found: result.claimed > 0).increment()
        guard let settlement else { return result }
        traces.end(settlement)
        result.retryIn = settlement.retryIn
        let acknowledged = Date()
        let latency = metrics.latency(destination)
        for event in settlement.delivered {
            latency.recordNanoseconds(Int64(max(0, acknowledged.timeIntervalSince(event.createdAt)) * 1e9))
        }
        let counts = settlement.counts
        metrics.delivered(destination).increment(by: counts.delivered)
        metrics.failed(destination).increment(by: counts.retried)
        metrics.deadLettered(destination).increment(by: counts.deadLettered)
        switch await health.record(counts, destination: destination, lastRetryReason: settlement.lastRetryReason) {
        case .stopped:
            logger.warning("Deliveries failing: nothing delivered until an attempt succeeds", metadata: [
                "outbox.destination": "\(destination.rawValue)", "outbox.error": "\(settlement.lastRetryReason ?? "")",
            ])
        case .resumed(let since):
            logger.notice("Deliveries resumed", metadata: [
                "outbox.destination": "\(destination.rawValue)", "outbox.failed_for_s": "\(Int(Date().timeIntervalSince(since)))",
            ])
        case nil: break
        }
        for dead in settlement.deadLetters {
            // Inside the event's span, if it has one: the line carries its trace_id and span_id.
            traces.logging(dead.id) {
                logger.warning("Event dead-lettered", metadata: [
                    "outbox.event_id": "\(dead.id)", "outbox.key": "\(dead.key)", "outbox.operation": "\(dead.operation)",
                    "outbox.reason": "\(dead.reason)",
                ])
            }
        }
        if let lastRetry = settlement.lastRetryReason {
            logger.warning("Delivery failed; will retry", metadata: [
                "outbox.retried": "\(counts.retried)", "outbox.error": "\(lastRetry)",
            ])
        }
        logger.debug("Batch acknowledged", metadata: [
            "outbox.batch_size": "\(result.claimed)", "outbox.delivered": "\(counts.delivered)",
            "outbox.dead_lettered": "\(counts.deadLettered)", "outbox.retried": "\(counts.retried)",
            "outbox.batch_ms": "\(Int(acknowledged.timeIntervalSince(started) * 1000))",
        ])
        return result
    }
}
