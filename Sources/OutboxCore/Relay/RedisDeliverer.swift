import Foundation
import Logging

/// Applies `redis.*` events through one pipelined round trip per batch.
///
/// `xadd` and `publish` run in Lua scripts that check and set a dedupe key for the event
/// atomically with the effect, so a redelivered event (after a crash between the effect and the
/// acknowledgement) appends or publishes nothing. `del` and `set` are idempotent by nature.
///
/// Per-key order inside one pipeline: Redis runs every command of a pipeline even when an earlier
/// one fails, and a transient error can clear in the middle of one (LOADING after a restart, OOM,
/// BUSY). So an `xadd`/`publish` that follows another of the same ordering key in the pipeline
/// names its predecessor's dedupe key as a guard and applies only if that key exists; otherwise it
/// returns -1 and is retried after its predecessor. Later `set`/`del` events of a failed key ran
/// already; they are retried with it, and running them again in order restores the final state.
struct RedisDeliverer: Deliverer {
    let redis: RedisConnection
    /// `{prefix}:{database instance}` — event ids are only unique within one database.
    let dedupeNamespace: String
    let dedupeTTL: Duration
    let logger: Logger

    /// KEYS: stream, dedupe key, [guard]. ARGV: ttl seconds, maxlen ('' for none), event id,
    /// field/value pairs. The effect goes first so that a failing XADD (e.g. WRONGTYPE) leaves no
    /// dedupe key behind.
    static let xadd = RedisScript("""
        if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        local args = {'XADD', KEYS[1]}
        if ARGV[2] ~= '' then
          table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
        end
        table.insert(args, '*')
        for i = 4, #ARGV do table.insert(args, ARGV[i]) end
        table.insert(args, 'outbox_id'); table.insert(args, ARGV[3])
        redis.call(unpack(args))
        redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
        return 1
        """)

    /// KEYS: dedupe key, [guard]. ARGV: ttl seconds, channel, message.
    static let publish = RedisScript("""
        if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        redis.call('PUBLISH', ARGV[2], ARGV[3])
        redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
        return 1
        """)

    func deliver(_ events: [ClaimedEvent]) async -> [Int64: DeliveryOutcome] {
        var outcomes: [Int64: DeliveryOutcome] = [:]
        for attempt in 0..<2 {
            do {
                let shas = (
                    xadd: try await redis.scriptSHA(Self.xadd, reload: attempt > 0),
                    publish: try await redis.scriptSHA(Self.publish, reload: attempt > 0))
                var commands: [RedisCommand] = []
                var sent: [ClaimedEvent] = []
                var lastDedupeKey: [String: String] = [:]  // ordering key -> dedupe key of its last xadd/publish
                for event in events {
                    let built = Self.buildCommand(
                        for: event, shas: shas, dedupeNamespace: dedupeNamespace, dedupeTTL: dedupeTTL,
                        guardKey: lastDedupeKey[event.key])
                    switch built {
                    case .success(let command):
                        commands.append(command)
                        sent.append(event)
                        if event.operation == "xadd" || event.operation == "publish" {
                            lastDedupeKey[event.key] = Self.dedupeKey(for: event, namespace: dedupeNamespace)
                        }
                    case .failure(let problem):
                        outcomes[event.id] = .dead(reason: problem.message)
                    }
                }
                let replies = try await redis.pipeline(commands)
                if attempt == 0, replies.contains(where: { if case .error(let m) = $0 { m.hasPrefix("NOSCRIPT") } else { false } }) {
                    outcomes.removeAll()
                    continue  // scripts flushed (server restart): reload, then resend; dedupe keeps it safe
                }
                var blocker = KeyBlocker()
                for (event, reply) in zip(sent, replies) {
                    // Redis already ran later commands of a failed key: they are retried with it.
                    let outcome: DeliveryOutcome
                    if blocker.isBlocked(event) || reply == .integer(-1) {
                        outcome = .retry(reason: "an earlier event of key \(event.key) failed in the same batch", retryAfter: nil)
                    } else if case .error(let message) = reply {
                        switch FailureClass.redis(errorReply: message) {
                        case .transient: outcome = .retry(reason: "redis: \(message)", retryAfter: nil)
                        case .permanent: outcome = .dead(reason: "redis rejected \(event.operation): \(message)")
                        }
                    } else {
                        outcome = .delivered(source: nil)
                    }
                    blocker.record(outcome, for: event)
                    outcomes[event.id] = outcome
                }
                return outcomes
            } catch {
                let reason = "\(error)"
                return Dictionary(uniqueKeysWithValues: events.map { event in
                    (event.id, outcomes[event.id] ?? .retry(reason: reason, retryAfter: nil))
                })
            }
        }
        return outcomes
    }

    struct PayloadProblem: Error {
        let message: String
    }

    static func dedupeKey(for event: ClaimedEvent, namespace: String) -> String { "\(namespace):\(event.id)" }

    /// The command applying `event`; `guardKey` is the dedupe key of the previous `xadd`/`publish`
    /// of the same ordering key in the pipeline, if any.
    static func buildCommand(
        for event: ClaimedEvent, shas: (xadd: String, publish: String), dedupeNamespace: String, dedupeTTL: Duration,
        guardKey: String? = nil
    ) -> Result<RedisCommand, PayloadProblem> {
        let p = event.payload
        let ttl = String(max(1, Int(dedupeTTL.seconds)))
        let dedupeKey = dedupeKey(for: event, namespace: dedupeNamespace)
        let keys = [dedupeKey] + (guardKey.map { [$0] } ?? [])
        func string(_ field: String) throws(PayloadProblem) -> String {
            guard let value = p[field]?.stringValue else {
                throw PayloadProblem(message: "malformed redis.\(event.operation) payload: \"\(field)\" must be a string")
            }
            return value
        }
        do throws(PayloadProblem) {
            switch event.operation {
            case "xadd":
                guard case .object(let fields)? = p["fields"], !fields.isEmpty else {
                    throw PayloadProblem(message: "malformed redis.xadd payload: \"fields\" must be a non-empty object")
                }
                var maxlen = ""
                if let value = p["maxlen"] {
                    guard let n = value.numberValue.flatMap({ Int(exactly: $0) }), n >= 1 else {
                        throw PayloadProblem(message: "malformed redis.xadd payload: \"maxlen\" must be a positive integer")
                    }
                    maxlen = String(n)
                }
                var args = [shas.xadd, String(keys.count + 1), try string("stream")] + keys
                args += [ttl, maxlen, String(event.id)]
                for (name, value) in fields.sorted(by: { $0.key < $1.key }) {
                    guard let text = value.stringValue else {
                        throw PayloadProblem(message: "malformed redis.xadd payload: field \"\(name)\" is not a string")
                    }
                    args += [name, text]
                }
                return .success(RedisCommand(["EVALSHA"] + args))
            case "publish":
                return .success(RedisCommand(
                    ["EVALSHA", shas.publish, String(keys.count)] + keys + [ttl, try string("channel"), try string("message")]))
            case "del":
                let keys = p["keys"]?.arrayValue?.compactMap(\.stringValue) ?? []
                guard !keys.isEmpty, keys.count == p["keys"]?.arrayValue?.count else {
                    throw PayloadProblem(message: "malformed redis.del payload: \"keys\" must be a non-empty list of strings")
                }
                return .success(RedisCommand(["DEL"] + keys))
            case "set":
                var args = ["SET", try string("key"), try string("value")]
                if let ttl = p["ttl_seconds"]?.numberValue {
                    guard let seconds = Int(exactly: ttl), seconds >= 1 else {
                        throw PayloadProblem(message: "malformed redis.set payload: \"ttl_seconds\" must be a positive integer")
                    }
                    args += ["EX", String(seconds)]
                }
                return .success(RedisCommand(args))
            default:
                throw PayloadProblem(message: "unknown operation redis.\(event.operation)")
            }
        } catch {
            return .failure(error)
        }
    }
}
