import OutboxCore
import Tracing

/// Delivery to a Redis Cluster (`redis.cluster: true`).
///
/// Each `apply` call touches one slot, and declares every key it touches (`EVALSHA sha <n> keys…`):
/// Redis then checks the whole call against the slot map before running it, answering `MOVED`,
/// `ASK` or (while a slot's keys are half migrated) `TRYAGAIN` instead of running part of it. The
/// relay's own keys for an event are put in the slot of the key the event writes by a hash tag in
/// the dedupe namespace (`{namespace}:{<tag>}:key:<ordering key>`, ``RedisSlot/tag(for:)``), so a
/// key's high-water mark is kept per slot its events write to. A `publish` (a channel is no key)
/// keeps its mark in its channel's slot; a `del` whose keys span slots is split into one `DEL` per
/// slot (docs/DESIGN.md, "Redis Cluster").
///
/// Per-key order: the events of a key go out in *waves*. A wave takes, for every key, its next
/// events up to the first that writes to another slot; a key whose events in a wave did not all
/// land sends nothing more in this delivery. Calls of one wave go to their masters concurrently,
/// one pipeline per master; a redirected call is sent again, whole, where the reply says.
extension RedisDeliverer {
    /// One event's part in one slot: the whole event, except for a `del` whose keys span slots.
    struct ClusterPart: Sendable {
        let event: ClaimedEvent
        let slot: Int
        /// The keys the part's script call touches, declared to Redis for routing.
        let keys: [String]
        let arguments: RedisArguments
    }

    /// One script call: parts of one slot.
    struct ClusterCall: Sendable {
        let slot: Int
        let parts: [ClusterPart]
    }

    /// What became of one call.
    enum CallResult: Sendable {
        /// The script ran: one result per part (and whether the replicas asked for acknowledged it).
        case ran([RedisReply], unreplicated: String?)
        /// Refused as a whole with this error reply: nothing of it was applied.
        case refused(String)
        /// Sent, but the connection broke: whether it ran is unknown.
        case lost(String)
        /// Not sent (an earlier round to its node failed).
        case notSent(String)
    }

    /// Redirects followed for one call within one delivery before it is retried later.
    static let clusterAttempts = 6

    func deliverToCluster(_ cluster: RedisCluster, _ events: [ClaimedEvent], traces: DeliveryTraces) async -> [Int64: DeliveryOutcome] {
        var outcomes: [Int64: DeliveryOutcome] = [:]
        outcomes.reserveCapacity(events.count)
        // Each key's events, in id order, as parts.
        var queues: [String: ArraySlice<[ClusterPart]>] = [:]
        var keyOrder: [String] = []
        for event in events {
            let trace = traceField.flatMap { field in traces.carried(event.id).map { (field: field, value: $0) } }
            switch clusterParts(for: event, trace: trace) {
            case .success(let parts):
                if let longest = parts.map(\.arguments.longest).max(), longest > maxBulkLength {
                    outcomes[event.id] = .dead(
                        reason: "redis.\(event.operation) has a value of \(longest) bytes, over Redis' limit of \(maxBulkLength) "
                            + "bytes (proto-max-bulk-len)")
                    continue
                }
                if queues[event.key] == nil { keyOrder.append(event.key) }
                queues[event.key, default: []].append(parts)
            case .failure(let problem): outcomes[event.id] = .dead(reason: problem.message)
            }
        }
        while true {
            // The wave: every key's next events, up to the first that goes to another slot (an
            // event split over several slots goes alone).
            var wave: [String: [[ClusterPart]]] = [:]
            for key in keyOrder {
                guard var queue = queues[key], let first = queue.first else { continue }
                var run = [first]
                queue.removeFirst()
                if first.count == 1 {
                    while let next = queue.first, next.count == 1, next[0].slot == first[0].slot {
                        run.append(next)
                        queue.removeFirst()
                    }
                }
                queues[key] = queue
                wave[key] = run
            }
            guard !wave.isEmpty else { break }
            let waveOutcomes = await sendWave(wave, to: cluster, traces: traces)
            for (key, run) in wave {
                for parts in run { outcomes[parts[0].event.id] = waveOutcomes[parts[0].event.id] }
                if run.contains(where: { parts in
                    guard case .delivered = waveOutcomes[parts[0].event.id] else { return true }
                    return false
                }) {
                    // Not sent: held back behind the key's failure, released as they are.
                    for parts in queues[key] ?? [] { outcomes[parts[0].event.id] = .skipped }
                    queues[key] = nil
                }
            }
        }
        return outcomes
    }

    /// Sends one wave's parts, one call per slot (in chunks), and returns each event's outcome.
    private func sendWave(_ wave: [String: [[ClusterPart]]], to cluster: RedisCluster, traces: DeliveryTraces) async -> [Int64: DeliveryOutcome] {
        var bySlot: [Int: [(event: ClaimedEvent, arguments: ClusterPart)]] = [:]
        for run in wave.values {
            for parts in run {
                for part in parts { bySlot[part.slot, default: []].append((part.event, part)) }
            }
        }
        var calls: [ClusterCall] = []
        for (slot, parts) in bySlot {
            let ordered = parts.sorted { $0.event.id < $1.event.id }
            for chunk in Self.chunked(ordered, size: Self.chunkEvents, bytes: Self.chunkBytes, length: { $0.arguments.encoded.count }) {
                calls.append(ClusterCall(slot: slot, parts: chunk.map(\.arguments)))
            }
        }
        let span = traces.request(
            "redis cluster pipeline", carrying: calls.flatMap { $0.parts.map(\.event) },
            attributes: ["db.system.name": "redis", "outbox.events": .int(Int64(calls.reduce(0) { $0 + $1.parts.count }))])
        defer { span?.end() }
        let results = await execute(calls, on: cluster)
        // Each part's outcome; an event's is its first part's that is not `.delivered`.
        var outcomes: [Int64: DeliveryOutcome] = [:]
        for (call, result) in zip(calls, results) {
            for (index, part) in call.parts.enumerated() {
                let outcome: DeliveryOutcome
                switch result {
                case .ran(let replies, let unreplicated): outcome = Self.outcome(of: part.event, replies[index], unreplicated: unreplicated)
                case .refused(let message): outcome = Self.refused(part.event, message)
                case .lost(let reason): outcome = Self.unanswered(part.event, reason: reason)
                case .notSent(let reason): outcome = .retry(reason: "not sent: \(reason)", retryAfter: nil)
                }
                if case .delivered = outcomes[part.event.id] ?? .delivered(source: nil) { outcomes[part.event.id] = outcome }
            }
        }
        if let failed = outcomes.values.first(where: { if case .delivered = $0 { false } else { true } }) {
            span?.setStatus(SpanStatus(code: .error, message: "\(failed)"))
        }
        return outcomes
    }

    /// Runs `calls`, following `MOVED`, `ASK` and `TRYAGAIN` up to ``clusterAttempts`` times each.
    func execute(_ calls: [ClusterCall], on cluster: RedisCluster) async -> [CallResult] {
        var results = [CallResult?](repeating: nil, count: calls.count)
        var pending = Array(calls.indices)
        var asking: [Int: RedisNodeAddress] = [:]
        var lastError: [Int: String] = [:]
        var staleMap = false
        /// Set by a reply that only time fixes (TRYAGAIN, CLUSTERDOWN); MOVED and ASK are followed at once.
        var pause = false
        for attempt in 0..<Self.clusterAttempts where !pending.isEmpty {
            if pause {
                // A slot half migrated, or a failover under way: 20 ms, doubling to 320 ms. The whole wave
                // waits for its slowest call, so this stays short; what does not settle in time is
                // retried with the relay's backoff.
                try? await Task.sleep(for: .milliseconds(10 << attempt))
                pause = false
            }
            if staleMap {
                try? await cluster.refresh()
                staleMap = false
            }
            var byNode: [RedisNodeAddress: [Int]] = [:]
            var unrouted: [Int] = []
            for index in pending {
                if let node = asking[index] {
                    byNode[node, default: []].append(index)
                } else if let node = await cluster.master(of: calls[index].slot) {
                    byNode[node, default: []].append(index)
                } else {
                    lastError[index] = "CLUSTERDOWN no master serves slot \(calls[index].slot)"
                    unrouted.append(index)
                    (staleMap, pause) = (true, true)
                }
            }
            let sent = await withTaskGroup(of: [(Int, CallResult)].self) { group in
                for (node, indices) in byNode {
                    let asked = Set(indices.filter { asking[$0] != nil })
                    group.addTask { await self.send(indices.map { calls[$0] }, asking: indices.map(asked.contains), to: node, on: cluster).enumerated().map { (indices[$0], $1) } }
                }
                var all: [(Int, CallResult)] = []
                for await results in group { all += results }
                return all
            }
            pending = unrouted
            asking = [:]
            for (index, result) in sent {
                guard case .refused(let message) = result else {
                    switch result {
                    case .lost, .notSent: staleMap = true  // the node may be gone, its slots served elsewhere
                    default: break
                    }
                    results[index] = result
                    continue
                }
                if let redirect = RedisRedirect(errorReply: message) {
                    if redirect.kind == .moved {
                        await cluster.moved(redirect)
                        staleMap = true
                    } else {
                        asking[index] = redirect.address
                    }
                } else if message.hasPrefix("CLUSTERDOWN") {
                    (staleMap, pause) = (true, true)
                } else if message.hasPrefix("TRYAGAIN") {
                    pause = true
                } else if !message.hasPrefix("NOSCRIPT") {
                    results[index] = result
                    continue
                }
                lastError[index] = message
                pending.append(index)
            }
        }
        if staleMap { try? await cluster.refresh() }
        for index in pending { results[index] = .refused("\(lastError[index] ?? "redirected") (still after \(Self.clusterAttempts) attempts)") }
        return results.map { $0! }
    }

    /// One node's calls: in rounds of about ``roundBytes``, one pipeline each (each call preceded
    /// by `ASKING` where asked, the round followed by `WAIT` when `redis.wait_replicas` asks).
    private func send(_ calls: [ClusterCall], asking: [Bool], to node: RedisNodeAddress, on cluster: RedisCluster) async -> [CallResult] {
        var results: [CallResult] = []
        let connection: RedisConnection
        let sha: String
        do {
            connection = try await cluster.connection(to: node)
            // NOSCRIPT (a node restarted or newly promoted) is answered per call; load it again then.
            sha = try await connection.scriptSHA(Self.apply, reload: false)
        } catch {
            return calls.map { _ in .notSent("\(node): \(error)") }
        }
        let ttl = String(max(1, Int(dedupeTTL.seconds)))
        var start = 0
        while start < calls.count {
            var end = start
            var bytes = 0
            while end < calls.count && (end == start || bytes < Self.roundBytes) {
                bytes += calls[end].parts.reduce(0) { $0 + $1.arguments.encoded.count }
                end += 1
            }
            var commands: [RedisCommand] = []
            for index in start..<end {
                if asking[index] { commands.append(RedisCommand("ASKING")) }
                commands.append(command(for: calls[index], sha: sha, ttl: ttl))
            }
            if let wait = waitCommand { commands.append(wait) }
            do {
                var replies = try await connection.pipeline(commands)[...]
                let unreplicated = waitCommand == nil ? nil : unreplicated(replies.removeLast())
                for index in start..<end {
                    if asking[index] { replies.removeFirst() }  // ASKING's OK
                    let reply = replies.removeFirst()
                    if case .array(let perPart) = reply, perPart.count == calls[index].parts.count {
                        results.append(.ran(perPart, unreplicated: unreplicated))
                    } else if case .error(let message) = reply {
                        if message.hasPrefix("NOSCRIPT") { _ = try? await connection.scriptSHA(Self.apply, reload: true) }
                        results.append(.refused(message))
                    } else {
                        results.append(.lost("\(node): unexpected reply \(reply)"))
                    }
                }
            } catch {
                results += (start..<end).map { _ in .lost("\(node): \(error)") }
                results += (end..<calls.count).map { _ in .notSent("\(node): \(error)") }
                return results
            }
            start = end
        }
        return results
    }

    /// The cluster's health as the relay needs it: the slot map reads, every slot has a master,
    /// and every master answers `PING` with the relay's credentials.
    static func probe(_ cluster: RedisCluster) async -> String? {
        do {
            try await cluster.refresh()
            let unserved = await cluster.unservedSlots
            guard unserved == 0 else { return "redis cluster: \(unserved) of \(RedisSlot.count) slots have no master" }
            for master in await cluster.knownMasters {
                switch try await cluster.connection(to: master).pipeline([RedisCommand("PING")])[0] {
                case .error(let message) where FailureClass.redis(errorReply: message) == .destination:
                    return "redis \(master) refused the relay: \(message)"
                case .error(let message): return "redis \(master): \(message)"
                default: continue
                }
            }
            return nil
        } catch {
            return "unreachable: \(error)"
        }
    }

    /// `EVALSHA sha <n> keys… ttl namespace parts…`: the namespace carries the slot's tag.
    private func command(for call: ClusterCall, sha: String, ttl: String) -> RedisCommand {
        var keys: [String] = []
        for part in call.parts { keys += part.keys }
        keys = Array(Set(keys))
        var arguments = RedisArguments(
            ["EVALSHA", sha, String(keys.count)] + keys + [ttl, clusterNamespace(call.slot)],
            reservingCapacity: 256 + call.parts.reduce(0) { $0 + $1.arguments.encoded.count })
        for part in call.parts { arguments.append(contentsOf: part.arguments) }
        return RedisCommand(arguments)
    }

    /// The dedupe namespace of keys in `slot`: `{prefix}:{instance}:{<tag>}`.
    func clusterNamespace(_ slot: Int) -> String { "\(dedupeNamespace):{\(RedisSlot.tag(for: slot))}" }

    /// `event` as script arguments per slot, with the keys each touches.
    func clusterParts(for event: ClaimedEvent, trace: (field: String, value: String)?) -> Result<[ClusterPart], PayloadProblem> {
        var groups: [[String]?] = [nil]  // one part, with the event's own arguments
        if event.operation == "del", let keys = event.payload["keys"]?.arrayValue?.compactMap(\.stringValue) {
            let bySlot = Dictionary(grouping: keys, by: RedisSlot.of)
            if bySlot.count > 1 { groups = bySlot.keys.sorted().map { bySlot[$0]! } }
        }
        var parts: [ClusterPart] = []
        for delKeys in groups {
            let arguments: RedisArguments
            switch Self.buildCommand(for: event, trace: trace, delKeys: delKeys) {
            case .success(let built): arguments = built
            case .failure(let problem): return .failure(problem)
            }
            let p = event.payload
            var keys: [String]
            switch event.operation {
            case "xadd": keys = [p["stream"]!.stringValue!]
            case "set": keys = [p["key"]!.stringValue!]
            case "del": keys = delKeys ?? p["keys"]!.arrayValue!.map { $0.stringValue! }
            default: keys = []  // publish: a channel is no key
            }
            let slot = RedisSlot.of(keys.first ?? p["channel"]!.stringValue!)
            switch Self.dedupe(of: event) {
            case .keyMark: keys.append("\(clusterNamespace(slot)):key:\(event.key)")
            case .eventKey: keys.append("\(clusterNamespace(slot)):\(event.id)")
            case .none: break
            }
            parts.append(ClusterPart(event: event, slot: slot, keys: keys, arguments: arguments))
        }
        return .success(parts)
    }
}
