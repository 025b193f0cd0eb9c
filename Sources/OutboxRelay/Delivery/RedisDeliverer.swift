import Foundation
import OutboxCore
import Logging
import Tracing

/// Applies `redis.*` events: one Lua call per chunk of events, all chunks in one pipelined round
/// trip.
///
/// `xadd` and `publish` are deduplicated atomically with their effect, so a redelivered event
/// (after a crash between the effect and the acknowledgement) appends or publishes nothing. The
/// state is one *high-water mark* per ordering key, `{namespace}:key:{key}`: the highest event id
/// of the key applied. A key's events are applied in id order and an event is dead-lettered only
/// when it is known not to have landed (see ``DeliveryOutcome/unconfirmed(reason:)``), so an event
/// at or below its key's mark is a redelivery. A requeued dead letter comes back below the mark;
/// it is checked against a dedupe key of its own, `{namespace}:{event id}` (`SET NX EX`), as every
/// event was before the marks (a key with no mark yet is checked against those keys too, so events
/// an older relay applied are still recognised). `del` and `set` are idempotent by nature.
///
/// Per-key order: all events of one ordering key go into the same chunk, in id order, and the
/// script stops applying a key's events at its first failure (the rest report "held back" and are
/// retried after it). A chunk refused as a whole (LOADING after a restart, BUSY, NOSCRIPT) applies
/// nothing. So no event lands before an earlier event of its key.
///
/// One call per chunk instead of one per event: Redis' cost per event was the script call itself
/// (7.9 µs per EVALSHA, of which 3.1 µs the commands it ran; docs/PERFORMANCE.md, drain-redis).
/// A mark per key instead of a dedupe key per event: 6.3 → 4.1 µs of Redis CPU per `xadd` with
/// ten events per key and call, and Redis keeps one small key per ordering key instead of one per
/// event for `redis.dedupe_ttl`.
struct RedisDeliverer: Deliverer {
    let redis: RedisConnection
    /// `{prefix}:{database instance}` — event ids are only unique within one database.
    let dedupeNamespace: String
    let dedupeTTL: Duration
    let logger: Logger
    /// Redis' `proto-max-bulk-len` (`CONFIG GET` at start; 512 MiB, Redis' default, where CONFIG
    /// is not allowed): an event with a longer value is dead-lettered instead of sent.
    var maxBulkLength = Self.defaultMaxBulkLength
    /// The stream entry field a traced event's `traceparent` goes in (`tracing.stream_field`); nil: none.
    var traceField: String? = "traceparent"
    /// Set with `redis.cluster`: the cluster `redis` is the seed node of (RedisClusterDelivery.swift).
    var cluster: RedisCluster? = nil
    /// `redis.wait_replicas` / `redis.wait_timeout`: each round trip ends with `WAIT`, and events
    /// fewer replicas acknowledged are retried (their dedupe makes the retry a no-op once they are).
    var waitReplicas = 0
    var waitTimeout: Duration = .seconds(1)
    static let defaultMaxBulkLength = 512 * 1024 * 1024
    /// Events per Lua call; a call blocks other Redis clients while it runs (~6 µs per event).
    static let chunkEvents = 500
    /// Bytes per Lua call, for the same reason (a key's events stay in one call, whatever their size).
    static let chunkBytes = 4 << 20
    /// Bytes per round trip. hiredis buffers a pipeline whole (a copy of it) and Redis answers it
    /// whole, so large values go out in round trips of about this size, one after the other: a
    /// backlog of 4 MB values costs neither a pipeline of gigabytes nor a reply that takes longer
    /// than `redis.command_timeout` (which bounds each read and write on the socket, not a round
    /// trip). One event larger than this goes alone.
    static let roundBytes = 16 << 20

    /// How the script deduplicates an event.
    enum Dedupe: String {
        /// By its key's high-water mark.
        case keyMark = "k"
        /// By a dedupe key of its own (a requeued dead letter).
        case eventKey = "e"
        /// Not at all (`set`, `del`).
        case none = ""
    }

    /// ARGV: dedupe TTL in seconds, the namespace, then per event: ordering key, ``Dedupe`` mode,
    /// event id, the number of command arguments, the command. Returns per event: 1 applied, 0 a
    /// duplicate (applied before), -1 held back (an earlier event of its key failed in this call),
    /// or the command's error. Marks are written once per key at the end (a write after the
    /// script's first one is never refused, even over `maxmemory`, so the marks land with the
    /// effects); an event's own dedupe key is set first (NX) and removed again if the command
    /// fails, so a failed XADD (e.g. WRONGTYPE) leaves none behind. A mark that is not a number
    /// (someone else's key) counts as none and is overwritten. Event ids stay strings: Lua numbers
    /// print ids past 10^14 in exponent form (they compare exactly up to 2^53).
    static let apply = RedisScript("""
        local ttl, ns = ARGV[1], ARGV[2]
        local results, failed, mark, raised = {}, {}, {}, {}
        local i, n = 3, 0
        while i <= #ARGV do
          local key, mode, id, argc = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
          local first = i + 4
          i = first + argc
          n = n + 1
          if failed[key] then
            results[n] = -1
          else
            local duplicate, own = false, nil
            if mode == 'k' then
              if mark[key] == nil then
                local stored = redis.pcall('GET', ns .. ':key:' .. key)
                mark[key] = type(stored) == 'string' and tonumber(stored) ~= nil and stored
              end
              if mark[key] then
                duplicate = tonumber(id) <= tonumber(mark[key])
              else
                duplicate = redis.call('EXISTS', ns .. ':' .. id) == 1
              end
            elseif mode == 'e' then
              own = ns .. ':' .. id
              duplicate = not redis.call('SET', own, '1', 'NX', 'EX', ttl)
            end
            if duplicate then
              results[n] = 0
            else
              local reply = redis.pcall(unpack(ARGV, first, i - 1))
              if type(reply) == 'table' and reply.err then
                if own then redis.call('DEL', own) end
                failed[key] = true
                results[n] = reply
              else
                if mode == 'k' then mark[key] = id; raised[key] = true end
                results[n] = 1
              end
            end
          end
        end
        for key in pairs(raised) do redis.call('SET', ns .. ':key:' .. key, mark[key], 'EX', ttl) end
        return results
        """)

    func deliver(_ events: [ClaimedEvent], traces: DeliveryTraces) async -> [Int64: DeliveryOutcome] {
        if let cluster { return await deliverToCluster(cluster, events, traces: traces) }
        var outcomes: [Int64: DeliveryOutcome] = [:]
        outcomes.reserveCapacity(events.count)
        var commands: [(event: ClaimedEvent, arguments: RedisArguments)] = []
        commands.reserveCapacity(events.count)
        for event in events {
            let trace = traceField.flatMap { field in traces.carried(event.id).map { (field: field, value: $0) } }
            switch Self.buildCommand(for: event, trace: trace) {
            case .success(let arguments) where arguments.longest > maxBulkLength:
                // Redis would refuse it every time, and close the connection doing so.
                outcomes[event.id] = .dead(
                    reason: "redis.\(event.operation) has a value of \(arguments.longest) bytes, over Redis' limit of \(maxBulkLength) "
                        + "bytes (proto-max-bulk-len)")
            case .success(let arguments): commands.append((event, arguments))
            case .failure(let problem): outcomes[event.id] = .dead(reason: problem.message)
            }
        }
        let chunks = Self.chunked(commands, size: Self.chunkEvents, bytes: Self.chunkBytes)
        let rounds = Self.rounds(chunks, bytes: Self.roundBytes)
        for (index, round) in rounds.enumerated() {
            let span = traces.request(
                "redis pipeline", carrying: round.joined().map(\.event),
                attributes: ["db.system.name": "redis", "outbox.events": .int(Int64(round.reduce(0) { $0 + $1.count }))])
            defer { span?.end() }
            do {
                try await send(round, outcomes: &outcomes)
            } catch {
                DeliveryTraces.failed(span, error)
                let reason = "\(error)"
                for (event, _) in round.joined() { outcomes[event.id] = Self.unanswered(event, reason: reason) }
                // Later rounds were not sent: tried again after the backoff like any retry.
                for (event, _) in rounds[(index + 1)...].joined().joined() {
                    outcomes[event.id] = .retry(reason: "not sent: \(reason)", retryAfter: nil)
                }
                break
            }
        }
        return outcomes
    }

    /// Sends one round trip's chunks (one script call each) and records each event's outcome.
    private func send(_ chunks: [[(event: ClaimedEvent, arguments: RedisArguments)]], outcomes: inout [Int64: DeliveryOutcome]) async throws {
        let ttl = String(max(1, Int(dedupeTTL.seconds)))
        for attempt in 0..<2 {
            let sha = try await redis.scriptSHA(Self.apply, reload: attempt > 0)
            var replies = try await redis.pipeline(
                chunks.map { chunk in
                    var call = RedisArguments(
                        ["EVALSHA", sha, "0", ttl, dedupeNamespace], reservingCapacity: 256 + chunk.reduce(0) { $0 + $1.arguments.encoded.count })
                    for (_, arguments) in chunk { call.append(contentsOf: arguments) }
                    return RedisCommand(call)
                } + (waitCommand.map { [$0] } ?? []))
            let unreplicated = waitCommand == nil ? nil : unreplicated(replies.removeLast())
            if attempt == 0, replies.contains(where: { if case .error(let m) = $0 { m.hasPrefix("NOSCRIPT") } else { false } }) {
                continue  // scripts flushed (server restart): reload, then resend; dedupe keeps it safe
            }
            for (chunk, reply) in zip(chunks, replies) {
                guard case .array(let results) = reply, results.count == chunk.count else {
                    // Refused as a whole (or not understood): nothing of it was applied this time.
                    for (event, _) in chunk {
                        outcomes[event.id] =
                            if case .error(let message) = reply { Self.refused(event, message) } else {
                                Self.unanswered(event, reason: "redis: unexpected reply \(reply)")
                            }
                    }
                    continue
                }
                for ((event, _), result) in zip(chunk, results) {
                    outcomes[event.id] = Self.outcome(of: event, result, unreplicated: unreplicated)
                }
            }
            return
        }
    }

    /// `WAIT numreplicas timeout`, sent after a round's script calls when `redis.wait_replicas` asks.
    var waitCommand: RedisCommand? {
        waitReplicas == 0 ? nil : RedisCommand("WAIT", String(waitReplicas), String(max(1, waitTimeout.milliseconds)))
    }

    /// Why a round does not count as delivered after `WAIT` answered `reply`; nil when enough
    /// replicas acknowledged it.
    func unreplicated(_ reply: RedisReply) -> String? {
        if let acknowledged = reply.integer, acknowledged >= waitReplicas { return nil }
        let answer = reply.integer.map { "\($0) of \(waitReplicas) replicas acknowledged" } ?? "WAIT answered \(reply)"
        return "applied on the Redis master, but \(answer) within \(waitTimeout) (redis.wait_replicas)"
    }

    /// The server's `proto-max-bulk-len`, or Redis' default where `CONFIG GET` is not allowed
    /// (managed services often refuse it).
    static func maxBulkLength(of redis: RedisConnection) async -> Int {
        guard let reply = try? await redis.command("CONFIG", "GET", "proto-max-bulk-len"), let pair = reply.array, pair.count == 2,
            let value = pair[1].string.flatMap(Int.init)
        else { return defaultMaxBulkLength }
        return value
    }

    func probe() async -> String? {
        if let cluster { return await Self.probe(cluster) }
        do {
            switch try await redis.pipeline([RedisCommand(["PING"])])[0] {
            case .error(let message) where FailureClass.redis(errorReply: message) == .destination:
                return "redis refused the relay: \(message)"
            case .error(let message): return "redis: \(message)"
            default: return nil
            }
        } catch {
            return "unreachable: \(error)"
        }
    }

    /// Splits `items` (in id order) into chunks of about `size` events and `bytes` bytes, keeping
    /// every ordering key's events together and in order: a key joins the chunk that is open when
    /// its first event comes.
    static func chunked<T>(
        _ items: [(event: ClaimedEvent, arguments: T)], size: Int, bytes: Int = .max, length: (T) -> Int = { _ in 0 }
    ) -> [[(event: ClaimedEvent, arguments: T)]] {
        var chunks: [[(event: ClaimedEvent, arguments: T)]] = []
        var chunkBytes: [Int] = []
        var chunkOfKey: [String: Int] = [:]
        for item in items {
            let chunk = chunkOfKey[item.event.key] ?? {
                if chunks.isEmpty || chunks[chunks.count - 1].count >= size || chunkBytes[chunks.count - 1] >= bytes {
                    chunks.append([])
                    chunkBytes.append(0)
                }
                chunkOfKey[item.event.key] = chunks.count - 1
                return chunks.count - 1
            }()
            chunks[chunk].append(item)
            chunkBytes[chunk] += length(item.arguments)
        }
        return chunks
    }

    static func chunked(
        _ items: [(event: ClaimedEvent, arguments: RedisArguments)], size: Int, bytes: Int
    ) -> [[(event: ClaimedEvent, arguments: RedisArguments)]] {
        chunked(items, size: size, bytes: bytes) { $0.encoded.count }
    }

    /// Groups `chunks` into round trips of about `bytes` each; a chunk larger than that goes alone.
    static func rounds(
        _ chunks: [[(event: ClaimedEvent, arguments: RedisArguments)]], bytes: Int
    ) -> [[[(event: ClaimedEvent, arguments: RedisArguments)]]] {
        var rounds: [[[(event: ClaimedEvent, arguments: RedisArguments)]]] = []
        var roundBytes = Int.max
        for chunk in chunks {
            let size = chunk.reduce(0) { $0 + $1.arguments.encoded.count }
            if roundBytes >= bytes || roundBytes + size > bytes && !rounds[rounds.count - 1].isEmpty {
                rounds.append([])
                roundBytes = 0
            }
            rounds[rounds.count - 1].append(chunk)
            roundBytes += size
        }
        return rounds
    }

    /// The outcome of an event whose script call Redis refused as a whole with `message`.
    static func refused(_ event: ClaimedEvent, _ message: String) -> DeliveryOutcome {
        // The credentials or ACL user refused, not the events: they wait for an operator.
        FailureClass.redis(errorReply: message) == .destination
            ? .destinationFault(reason: "redis refused the relay: \(message)") : unanswered(event, reason: "redis: \(message)")
    }

    /// The outcome of the script's `result` for `event`; `unreplicated` (``unreplicated(_:)``)
    /// turns a delivery into a retry.
    static func outcome(of event: ClaimedEvent, _ result: RedisReply, unreplicated: String?) -> DeliveryOutcome {
        switch outcome(of: event, result) {
        case .delivered where unreplicated != nil: .retry(reason: unreplicated!, retryAfter: nil)
        case let outcome: outcome
        }
    }

    static func outcome(of event: ClaimedEvent, _ result: RedisReply) -> DeliveryOutcome {
        switch result {
        case .integer(1), .integer(0): .delivered(source: nil)
        case .integer(-1): .retry(reason: "an earlier event of key \(event.key) failed in the same batch", retryAfter: nil)
        case .error(let message):
            switch FailureClass.redis(errorReply: message) {
            case .transient: .retry(reason: "redis: \(message)", retryAfter: nil)
            case .destination: .destinationFault(reason: "redis refused the relay: \(message)")
            case .permanent: .dead(reason: "redis rejected \(event.operation): \(message)")
            }
        default: .retry(reason: "redis: unexpected reply \(result)", retryAfter: nil)
        }
    }

    struct PayloadProblem: Error {
        let message: String
    }

    /// The outcome of an event whose call went unanswered. Whether an earlier attempt landed is
    /// unknown; for an event deduplicated by its key's mark that must be settled by a later
    /// attempt before it may be dead-lettered, or a requeue could apply it twice.
    static func unanswered(_ event: ClaimedEvent, reason: String) -> DeliveryOutcome {
        dedupe(of: event) == .keyMark ? .unconfirmed(reason: reason) : .retry(reason: reason, retryAfter: nil)
    }

    static func dedupe(of event: ClaimedEvent) -> Dedupe {
        guard event.operation == "xadd" || event.operation == "publish" else { return .none }
        return event.requeued ? .eventKey : .keyMark
    }

    /// `event`'s arguments to the `apply` script: ordering key, ``Dedupe`` mode, event id, argument
    /// count, the command. An `xadd` of a traced event gets `trace`'s field, unless its own fields
    /// have one of that name. (`publish` messages are not altered: a message is the application's
    /// bytes, with no fields to add one to; docs/DESIGN.md, "Tracing".)
    static func buildCommand(for event: ClaimedEvent, trace: (field: String, value: String)? = nil, delKeys: [String]? = nil)
        -> Result<RedisArguments, PayloadProblem>
    {
        let p = event.payload
        func string(_ field: String) throws(PayloadProblem) -> String {
            guard let value = p[field]?.stringValue else {
                throw PayloadProblem(message: "malformed redis.\(event.operation) payload: \"\(field)\" must be a string")
            }
            return value
        }
        // The script's arguments for the event, then its command's `count` arguments, in one
        // buffer (a buffer per command, copied into this one, cost an allocation and a copy each).
        var arguments = RedisArguments(reservingCapacity: 192 + event.key.utf8.count)
        func script(commandArguments count: Int) {
            arguments.append(event.key)
            arguments.append(dedupe(of: event).rawValue)
            arguments.append(event.id)
            arguments.append(count)
        }
        do throws(PayloadProblem) {
            switch event.operation {
            case "xadd":
                guard case .object(let fields)? = p["fields"], !fields.isEmpty else {
                    throw PayloadProblem(message: "malformed redis.xadd payload: \"fields\" must be a non-empty object")
                }
                let stream = try string("stream")
                var maxlen: Int?
                if let value = p["maxlen"] {
                    guard let n = value.numberValue.flatMap({ Int(exactly: $0) }), n >= 1 else {
                        throw PayloadProblem(message: "malformed redis.xadd payload: \"maxlen\" must be a positive integer")
                    }
                    maxlen = n
                }
                // One field needs no sorting (nor the array a sort makes).
                let ordered = fields.count == 1 ? [fields.first!] : fields.sorted(by: { $0.key < $1.key })
                for (name, value) in ordered where value.stringValue == nil {
                    throw PayloadProblem(message: "malformed redis.xadd payload: field \"\(name)\" is not a string")
                }
                let trace = trace.flatMap { fields[$0.field] == nil ? $0 : nil }
                script(commandArguments: 2 + (maxlen == nil ? 0 : 3) + 1 + 2 * ordered.count + 2 + (trace == nil ? 0 : 2))
                arguments.append("XADD")
                arguments.append(stream)
                if let maxlen {
                    arguments.append("MAXLEN")
                    arguments.append("~")
                    arguments.append(maxlen)
                }
                arguments.append("*")
                for (name, value) in ordered {
                    arguments.append(name)
                    arguments.append(value.stringValue!)
                }
                arguments.append("outbox_id")
                arguments.append(event.id)
                if let trace {
                    arguments.append(trace.field)
                    arguments.append(trace.value)
                }
            case "publish":
                let (channel, message) = (try string("channel"), try string("message"))
                script(commandArguments: 3)
                for argument in ["PUBLISH", channel, message] { arguments.append(argument) }
            case "del":
                let keys = p["keys"]?.arrayValue?.compactMap(\.stringValue) ?? []
                guard !keys.isEmpty, keys.count == p["keys"]?.arrayValue?.count else {
                    throw PayloadProblem(message: "malformed redis.del payload: \"keys\" must be a non-empty list of strings")
                }
                // In a cluster, a `del` whose keys span slots is applied per slot (`delKeys`).
                let applied = delKeys ?? keys
                script(commandArguments: 1 + applied.count)
                for argument in ["DEL"] + applied { arguments.append(argument) }
            case "set":
                let (key, value) = (try string("key"), try string("value"))
                var seconds: Int?
                if let ttl = p["ttl_seconds"]?.numberValue {
                    guard let n = Int(exactly: ttl), n >= 1 else {
                        throw PayloadProblem(message: "malformed redis.set payload: \"ttl_seconds\" must be a positive integer")
                    }
                    seconds = n
                }
                script(commandArguments: seconds == nil ? 3 : 5)
                for argument in ["SET", key, value] { arguments.append(argument) }
                if let seconds {
                    arguments.append("EX")
                    arguments.append(seconds)
                }
            default:
                throw PayloadProblem(message: "unknown operation redis.\(event.operation)")
            }
            return .success(arguments)
        } catch {
            return .failure(error)
        }
    }
}
