import Foundation
import CoreMetrics
import Logging
import ServiceLifecycle
import Synchronization

/// A one-slot wake-up signal with an optional deadline.
actor Wakeup {
    private var signalled = false
    private var waiter: CheckedContinuation<Void, Never>?

    func signal() {
        signalled = true
        waiter?.resume()
        waiter = nil
    }

    /// Returns when signalled (at once if a signal is pending), at `deadline`, or on cancellation.
    func wait(until deadline: ContinuousClock.Instant?) async {
        if signalled {
            signalled = false
            return
        }
        let timer = deadline.map { deadline in
            Task { [weak self] in
                // A cancelled timer must not signal: that would wake the next wait for nothing.
                guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
                await self?.signal()
            }
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if signalled || Task.isCancelled {
                    continuation.resume()
                } else {
                    waiter = continuation
                }
            }
        } onCancel: {
            Task { await self.signal() }
        }
        signalled = false
        timer?.cancel()
    }
}

/// `outbox-relay serve`: one worker per destination (each with its own Postgres connection, so a
/// dead Qdrant never slows Redis) and one listener that turns NOTIFY and a slow fallback poll
/// into wake-ups. On graceful shutdown the workers stop claiming, finish the batch in hand and
/// return; a batch still running when the process dies is rolled back by Postgres and released.
public final class RelayService: Service {
    let configuration: OutboxConfiguration
    public let health: RelayHealth
    public let metrics: RelayMetrics
    let logger: Logger
    private let wakeups: [OutboxEvent.Destination: Wakeup] = [.qdrant: Wakeup(), .redis: Wakeup()]

    public init(configuration: OutboxConfiguration, health: RelayHealth, metrics: RelayMetrics, logger: Logger) {
        self.configuration = configuration
        self.health = health
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        let stopping = StopFlag()
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                let listener = Task { await self.runListener(stopping: stopping) }
                for destination in [OutboxEvent.Destination.redis, .qdrant] {
                    group.addTask { try await self.runWorker(destination, stopping: stopping) }
                }
                defer { listener.cancel() }  // ends its LISTEN wait at once instead of at the next poll
                try await group.waitForAll()
            }
        } onGracefulShutdown: {
            stopping.set()
            Task { for wakeup in self.wakeups.values { await wakeup.signal() } }
        }
        logger.info("Relay stopped")
    }

    // MARK: Worker

    private func runWorker(_ destination: OutboxEvent.Destination, stopping: StopFlag) async throws {
        var logger = self.logger
        logger[metadataKey: "outbox.destination"] = "\(destination.rawValue)"
        let wakeup = wakeups[destination]!
        let component = "\(destination.rawValue) worker"
        var failures = 0
        while !stopping.isSet, !Task.isCancelled {
            do {
                let worker = try await DestinationWorker.start(
                    destination: destination, configuration: configuration, health: health, metrics: metrics, logger: logger)
                failures = 0
                await health.postgresOK(component)
                logger.info("Worker started")
                try await worker.run(wakeup: wakeup, stopping: stopping, component: component)
                return
            } catch let error as SourceColumnTypes.Problem {
                throw error  // a configuration problem: retrying cannot fix it
            } catch is CancellationError {
                return
            } catch {
                failures += 1
                // Start-up also connects to the destination: name the store that failed.
                await health.connectionFailed(component, "\(error)", store: error is PostgresError ? "postgres" : destination.rawValue)
                let delay = Backoff(initial: .milliseconds(250), maximum: .seconds(5)).delay(afterAttempt: failures)
                logger.warning("Worker failed; restarting", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
    }

    // MARK: Listener

    /// LISTENs on `outbox_events`; a notification wakes its destination's worker at once. Every
    /// `relay.poll_interval` (the safety net for a lost notification) one cheap indexed query
    /// looks for available events, and wakes the workers that have some.
    private func runListener(stopping: StopFlag) async {
        var failures = 0
        while !stopping.isSet, !Task.isCancelled {
            do {
                let db = try await PostgresConnection.connect(listenerConfiguration(), logger: logger)
                try await db.listen("outbox_events")
                failures = 0
                await health.postgresOK("listener")
                for wakeup in wakeups.values { await wakeup.signal() }  // catch up on anything missed
                var nextPoll = ContinuousClock.now + configuration.relay.pollInterval
                while !stopping.isSet, !Task.isCancelled {
                    let notes = try await db.waitForNotifications(timeout: max(.zero, nextPoll - .now))
                    for destination in Set(notes.compactMap { OutboxEvent.Destination(rawValue: $0.payload) }) {
                        await wakeups[destination]?.signal()
                    }
                    if ContinuousClock.now >= nextPoll {
                        let row = try await db.query(
                            """
                            SELECT EXISTS (SELECT FROM outbox.events WHERE destination = 'qdrant' AND available_at <= now()) AS qdrant,
                                   EXISTS (SELECT FROM outbox.events WHERE destination = 'redis' AND available_at <= now()) AS redis
                            """).first!
                        for destination in [OutboxEvent.Destination.qdrant, .redis] where row[destination.rawValue] == .bool(true) {
                            await wakeups[destination]?.signal()
                        }
                        nextPoll = .now + configuration.relay.pollInterval
                    }
                }
            } catch {
                if stopping.isSet || Task.isCancelled { return }
                failures += 1
                await health.connectionFailed("listener", "\(error)")
                let delay = Backoff(initial: .milliseconds(250), maximum: .seconds(5)).delay(afterAttempt: failures)
                logger.warning("Listener failed; reconnecting", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
    }

    private func listenerConfiguration() -> PostgresConfiguration {
        var postgres = configuration.postgres
        postgres.applicationName = "outbox-relay-listener"
        return postgres
    }
}

/// A flag set once, read from any task.
final class StopFlag: Sendable {
    private let state = Synchronization.Atomic<Bool>(false)
    func set() { state.store(true, ordering: .relaxed) }
    var isSet: Bool { state.load(ordering: .relaxed) }
}

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
    /// `headsLimit` and `passFoundHeads` are only read and written by the single task that runs
    /// this lane's loop;
    /// `heldKeys`, which sibling lanes read, is a mutex.
    final class Lane: @unchecked Sendable {
        let db: PostgresConnection
        /// Wakes this lane when it is not lane 0 (which uses the listener's).
        let wakeup = Wakeup()
        var cursor: Int64 = 0
        /// Where the next claim starts after one that found no heads (see `afterEmptyWindow`).
        var course = Course()
        /// Heads the next claim takes at most (see `nextHeadsLimit`).
        var headsLimit: Int
        /// A claim of this pass over the events found heads (see `claimAgainAtOnce`).
        var passFoundHeads = false
        /// The keys this lane's open claim holds, which its siblings' claims pass over.
        let heldKeys = Mutex<[String]>([])
        init(db: PostgresConnection, headsLimit: Int) { (self.db, self.headsLimit) = (db, headsLimit) }
    }

    /// What a lane remembers of its last claims to decide where it claims next.
    struct Course: Equatable {
        /// Where the keys of its last claim that found heads go on (`OutboxStore.Claim.resume`).
        var resume: Int64?
        /// Empty windows since the lane last turned to the front or back to its walk.
        var emptyWindows = 0
        /// Empty windows the lane walks before it looks at the front again.
        var walk = DestinationWorker.emptyWindowsBeforeFront
        /// While the lane looks at the front: where its walk goes on.
        var walkFrom: Int64?
    }

    /// The most heads a lane's next claim takes, after a claim that took `heads` under `limit`.
    ///
    /// A claim's Postgres work is mostly per head: the head test of every row up to the last head,
    /// the head's row lock (a heap write), an index descent for its followers. Keys with deep
    /// backlogs are therefore cheaper to drain with fewer heads and more events each: drain-redis
    /// (200 events per key) took 500 heads × 10 events per claim at 4.9–6.4 µs of Postgres per
    /// event, 50 × 100 at 3.5 µs (docs/PERFORMANCE.md). So after a claim in which every key took
    /// its whole share (`saturated`) the limit halves, down to the heads that fill
    /// `relay.batch_events` at `relay.max_per_key` each; after one in which a key ran out it
    /// doubles, up to `relay.batch_size`, so many shallow keys (one event each) go `batch_size` a
    /// claim. A claim that found no heads says nothing about the keys.
    static func nextHeadsLimit(_ limit: Int, heads: Int, saturated: Bool, settings: RelaySettings) -> Int {
        let floor = min(settings.batchSize, max(1, settings.batchEvents / settings.maxPerKey))
        guard heads > 0 else { return limit }
        return saturated ? max(floor, limit / 2) : min(settings.batchSize, limit * 2)
    }

    /// Whether a lane claims again at once after a claim that said `next`: as the claim says, but at
    /// the end of a pass (`next.cursor == 0`) only if some claim of the pass found heads. A pass
    /// that found none — every key held by another relay, or waiting for a retry — would find none
    /// again, claim after claim: a relay beside another that held three hot keys made 120 empty
    /// claims a second. The lane then waits for a wake-up (new events, the fallback poll, a retry
    /// coming due, a sibling's full claim).
    static func claimAgainAtOnce(after next: OutboxStore.Scan, heads: Int, passFoundHeads: inout Bool) -> Bool {
        passFoundHeads = passFoundHeads || heads > 0
        guard next.cursor == 0 else { return next.more }
        defer { passFoundHeads = false }
        return passFoundHeads
    }

    /// Empty windows in a row after which a lane looks at the front; as many again there and it
    /// goes back to its walk, which is twice as long each time.
    static let emptyWindowsBeforeFront = 2

    /// Where a lane claims next after a claim whose window (ending at `windowEnd`) held no heads:
    /// where the keys of its own last claim go on (`course.resume`), if that lies ahead; else after
    /// the window. But after `course.walk` empty windows in a row, at the front; and if the front has
    /// no heads in as many windows, back where the walk left off.
    ///
    /// The events of a lane's own keys after its last claim are followers until that claim is
    /// acknowledged, and a lane among them stepped through them one window at a time, finding no
    /// heads. A lane ahead of every head walked the rest of the backlog finding none (drain-redis:
    /// half the runs at 27–33 % of the SQL bound instead of ~40 %, docs/PERFORMANCE.md): every key's
    /// head is its oldest event, so the lane soon looks at the front. The heads may also lie
    /// further on (keys at the front held by another relay or waiting for a retry), so the walk goes
    /// on afterwards, each time for twice as many windows: the lane still reaches every head, in at
    /// most about twice the claims. Heads passed over are found by the next pass.
    static func afterEmptyWindow(_ course: inout Course, windowEnd: Int64) -> Int64 {
        course.emptyWindows += 1
        if let walkFrom = course.walkFrom {
            guard course.emptyWindows >= emptyWindowsBeforeFront else { return windowEnd }
            (course.walkFrom, course.emptyWindows, course.walk) = (nil, 0, 2 * course.walk)
            return max(walkFrom, windowEnd)
        }
        let next = course.resume.flatMap { $0 > windowEnd ? $0 : nil } ?? windowEnd
        guard course.emptyWindows >= course.walk else { return next }
        (course.walkFrom, course.emptyWindows) = (next, 0)
        return 0
    }

    private init(
        destination: OutboxEvent.Destination, lanes: [Lane], deliverer: any Deliverer, settings: RelaySettings,
        sourceTypes: SourceColumnTypes, health: RelayHealth, metrics: RelayMetrics, logger: Logger
    ) {
        self.destination = destination
        self.lanes = lanes
        self.deliverer = deliverer
        self.settings = settings
        self.sourceTypes = sourceTypes
        self.health = health
        self.metrics = metrics
        self.logger = logger
    }

    static func start(
        destination: OutboxEvent.Destination, configuration: OutboxConfiguration, health: RelayHealth, metrics: RelayMetrics,
        logger: Logger
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
        ]
        var lanes: [Lane] = []
        for _ in 0..<laneCount {
            lanes.append(Lane(db: try await PostgresConnection.connect(postgres, logger: logger), headsLimit: configuration.relay.batchSize))
        }
        let db = lanes[0].db
        let sourceTypes = try await SourceColumnTypes.resolve(configuration.tables, on: db)
        let deliverer: any Deliverer
        switch destination {
        case .redis:
            let redis = try await RedisConnection.connect(configuration.redis, logger: logger)
            let instance = try await db.query("SELECT id FROM outbox.instance").first?.decode("id", as: String.self) ?? "default"
            deliverer = RedisDeliverer(
                redis: redis, dedupeNamespace: "\(configuration.relay.dedupePrefix):\(instance)",
                dedupeTTL: configuration.relay.dedupeTTL, logger: logger)
        case .qdrant:
            let client = QdrantClient(configuration: configuration.qdrant, logger: logger)
            for spec in configuration.collections.values.sorted(by: { $0.name < $1.name }) {
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
                maxBatchBytes: configuration.relay.qdrantMaxBatchBytes, logger: logger)
        }
        return DestinationWorker(
            destination: destination, lanes: lanes, deliverer: deliverer, settings: configuration.relay, sourceTypes: sourceTypes,
            health: health, metrics: metrics, logger: logger)
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
        while !stopping.isSet, !Task.isCancelled {
            let result = try await drainBatch(lane)
            await health.postgresOK(component)
            if result.full {
                for (i, other) in wakeups.enumerated() where i != index { await other.signal() }
            }
            if let retry = result.retryIn {
                let at = ContinuousClock.now + retry
                nextRetry = min(nextRetry ?? at, at)
            }
            if !result.more {
                // Lanes other than 0 wait for a full claim; lane 0 also polls and retries.
                await wakeups[index].wait(until: index > 0 ? nil : nextRetry.map { min($0, .now + settings.pollInterval) })
                if let due = nextRetry, due <= .now { nextRetry = nil }
            }
        }
        // Lane 0 is the one the shutdown signal wakes: pass it on.
        if index == 0 { for other in wakeups.dropFirst() { await other.signal() } }
    }

    struct BatchResult {
        var claimed = 0
        /// The claim took `relay.batch_size` keys: there is probably more.
        var full = false
        /// Claim again at once (see `OutboxStore.nextScan`).
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
        var lastRetry: String?
        let (ack, delivered) = try await lane.db.transaction { tx -> (OutboxStore.Acknowledgement, [ClaimedEvent]) in
            let claim = try await OutboxStore.claim(
                tx, destination: destination, batchSize: settings.batchSize, batchEvents: settings.batchEvents,
                maxPerKey: settings.maxPerKey, after: lane.cursor, excludingKeys: siblingsKeys, maxHeads: lane.headsLimit)
            let events = claim.events
            logger.trace("Claimed", metadata: [
                "outbox.lane": "\(lanes.firstIndex { $0 === lane } ?? -1)", "outbox.after": "\(lane.cursor)",
                "outbox.heads": "\(claim.heads)", "outbox.heads_limit": "\(lane.headsLimit)", "outbox.events": "\(events.count)",
                "outbox.next": "\(claim.next.cursor)", "outbox.resume": "\(claim.resume.map(String.init) ?? "-")",
                "outbox.claim_ms": "\(Int(Date().timeIntervalSince(started) * 1000))",
            ])
            result.claimed = events.count
            result.full = claim.heads >= lane.headsLimit
            lane.headsLimit = Self.nextHeadsLimit(lane.headsLimit, heads: claim.heads, saturated: claim.saturated, settings: settings)
            result.more = Self.claimAgainAtOnce(after: claim.next, heads: claim.heads, passFoundHeads: &lane.passFoundHeads)
            lane.cursor = claim.next.cursor
            if claim.heads > 0 {
                lane.course = Course(resume: claim.resume)
            } else if claim.next.cursor != 0 {
                lane.cursor = Self.afterEmptyWindow(&lane.course, windowEnd: claim.next.cursor)
            }
            guard !events.isEmpty else { return (.init(), []) }
            lane.heldKeys.withLock { $0 = Array(Set(events.map(\.key))) }
            // A payload that cannot be delivered exactly as stored is dead-lettered with the reason;
            // permanent failures do not block their key, so the rest goes out as usual.
            let readable = events.filter { $0.payloadProblem == nil }
            var outcomes = readable.isEmpty ? [:] : await deliverer.deliver(readable)
            for event in events { if let problem = event.payloadProblem { outcomes[event.id] = .dead(reason: problem) } }
            for event in events {
                switch outcomes[event.id] {
                case .retry(let reason, let after)?:
                    lastRetry = reason
                    let wait = max(settings.backoff.initial / 2, after ?? .zero)
                    result.retryIn = min(result.retryIn ?? wait, wait)
                case .unconfirmed(let reason)?:
                    lastRetry = reason
                    let wait = settings.backoff.initial / 2
                    result.retryIn = min(result.retryIn ?? wait, wait)
                case .dead(let reason)?:
                    logger.warning("Event dead-lettered", metadata: [
                        "outbox.event_id": "\(event.id)", "outbox.key": "\(event.key)", "outbox.operation": "\(event.operation)",
                        "outbox.reason": "\(reason)",
                    ])
                default: break
                }
            }
            let ack = try await OutboxStore.acknowledge(
                tx, events: events, outcomes: outcomes, settings: settings, sources: sourceTypes)
            return (ack, events.filter { if case .delivered = outcomes[$0.id] { true } else { false } })
        }
        metrics.claims(destination, found: result.claimed > 0).increment()
        guard result.claimed > 0 else { return result }
        let acknowledged = Date()
        let latency = metrics.latency(destination)
        for event in delivered {
            latency.recordNanoseconds(Int64(max(0, acknowledged.timeIntervalSince(event.createdAt)) * 1e9))
        }
        metrics.delivered(destination).increment(by: ack.delivered)
        metrics.failed(destination).increment(by: ack.retried)
        metrics.deadLettered(destination).increment(by: ack.deadLettered)
        await health.record(ack, destination: destination, lastRetryReason: lastRetry)
        if ack.retried > 0, let lastRetry {
            logger.warning("Delivery failed; will retry", metadata: [
                "outbox.retried": "\(ack.retried)", "outbox.error": "\(lastRetry)",
            ])
        }
        logger.debug("Batch acknowledged", metadata: [
            "outbox.batch_size": "\(result.claimed)", "outbox.delivered": "\(ack.delivered)",
            "outbox.dead_lettered": "\(ack.deadLettered)", "outbox.retried": "\(ack.retried)",
            "outbox.batch_ms": "\(Int(acknowledged.timeIntervalSince(started) * 1000))",
        ])
        return result
    }
}
