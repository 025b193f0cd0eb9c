import Foundation
import OutboxCore
import OutboxTestSupport

extension Bench {
    func memory(events: Int, keys: Int) async throws -> [(String, String)] {
        try await withDatabase { url, db in
            var done = 0
            while done < events {
                let n = min(100_000, events - done)
                try await db.query(
                    """
                    SELECT count(outbox.enqueue('redis', 'set', 'k' || (g % $3), jsonb_build_object('key', 'bench:mem:' || (g % $3), 'value', g::text, 'ttl_seconds', 60)))
                    FROM generate_series($1::int8, $1::int8 + $2 - 1) g
                    """, [.int(Int64(done)), .int(Int64(n)), .int(Int64(keys))])
                done += n
            }
            let port = 18_472
            let started = ContinuousClock.now
            let (peak, elapsed) = try await withRelay(url, port: port) { relay in
                var peak = 0.0
                while try await delivered(relay) < events {
                    peak = max(peak, proc(relay.pid, "VmHWM"))
                    try await Task.sleep(for: .milliseconds(100))
                }
                peak = max(peak, proc(relay.pid, "VmHWM"))
                return (peak, (ContinuousClock.now - started).seconds)
            }
            return [("backlog", "\(events) redis.set events"), ("peak RSS (VmHWM)", fmt(peak / 1024, 1) + " MB"),
                    ("drain events/s", fmt(Double(events) / elapsed))]
        }
    }
}
