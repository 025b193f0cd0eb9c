import Foundation
import OutboxCore
import OutboxTestSupport

extension Bench {
    /// The relay's drain rate for `qdrant.upsert` events with vectors, against the stand-in's own
    /// ingest rate for the same points sent the way the relay sends them: the same point JSON, in
    /// requests of the same size (a claim's worth of events, capped at
    /// `relay.qdrant_max_batch_bytes`), `PUT /points?wait=true&ordering=strong`, one at a time.
    func drainQdrant(events: Int, dimensions: Int) async throws -> [(String, String)] {
        let qdrant = QdrantClient(configuration: config.qdrant, logger: logger)
        let suffix = UUID().uuidString.prefix(8).lowercased()
        let relayCollection = "bench_relay_\(suffix)", directCollection = "bench_direct_\(suffix)"
        for name in [relayCollection, directCollection] {
            let body: JSONValue = ["vectors": ["size": .number(Double(dimensions)), "distance": "Cosine"]]
            let reply = try await qdrant.call(.createCollection(name), body: body)
            guard reply.status == 200 else { throw BenchError("cannot create collection \(name): \(reply.status) \(reply.error ?? "")") }
        }
        let figures: Result<[(String, String)], any Error>
        do {
            figures = .success(try await drainQdrant(events: events, dimensions: dimensions, qdrant: qdrant,
                                                     relayCollection: relayCollection, directCollection: directCollection))
        } catch {
            figures = .failure(error)
        }
        for name in [relayCollection, directCollection] { _ = try? await qdrant.call(.deleteCollection(name)) }
        return try figures.get()
    }

    private func drainQdrant(
        events: Int, dimensions: Int, qdrant: QdrantClient, relayCollection: String, directCollection: String
    ) async throws -> [(String, String)] {
        try await withDatabase { url, db in
            // Preload: one key per point (the writer API's default), a small payload, a vector.
            var done = 0
            while done < events {
                let n = min(5_000, events - done)
                try await db.query(
                    """
                    SELECT count(outbox.enqueue('qdrant', 'upsert', g::text, jsonb_build_object(
                      'collection', $3::text, 'id', g, 'payload', jsonb_build_object('n', g),
                      'vector', (SELECT jsonb_agg(round(sin(g * 0.37 + i)::numeric, 6)) FROM generate_series(1, $4::int) i))))
                    FROM generate_series($1::int8, $1::int8 + $2 - 1) g
                    """, [.int(Int64(done + 1)), .int(Int64(n)), .text(relayCollection), .int(Int64(dimensions))])
                done += n
            }
            try await db.query("VACUUM ANALYZE outbox.events")

            // The relay's requests: a claim takes relay.batch_size keys (one event each here),
            // and its upserts go out as one request unless relay.qdrant_max_batch_bytes splits it.
            // The point JSON is the relay's: {"id","payload","vector"} without spaces.
            let claim = max(1, min(config.relay.batchSize, config.relay.batchEvents))
            var bodies: [[UInt8]] = []
            var lastID: Int64 = 0
            while true {
                let rows = try await db.query(
                    """
                    SELECT id, replace(jsonb_build_object('id', payload->'id', 'payload', coalesce(payload->'payload', '{}'::jsonb),
                                                          'vector', payload->'vector')::text, ' ', '') AS point
                    FROM outbox.events WHERE id > $1 ORDER BY id LIMIT $2
                    """, [.int(lastID), .int(Int64(claim))]).rows
                guard let last = rows.last else { break }
                lastID = try last.decode("id")
                var body: [UInt8] = []
                var size = 0
                for row in rows {
                    let point = Array(try row.decode("point", as: String.self).utf8)
                    if !body.isEmpty, size + point.count + 1 > config.relay.qdrantMaxBatchBytes {
                        bodies.append(Array("{\"points\":[".utf8) + body + Array("]}".utf8))
                        body = []
                        size = 0
                    }
                    if !body.isEmpty { body.append(UInt8(ascii: ",")) }
                    body += point
                    size += point.count + 1
                }
                bodies.append(Array("{\"points\":[".utf8) + body + Array("]}".utf8))
            }
            let bytes = bodies.reduce(0) { $0 + $1.count }
            let requests = bodies.count
            var started = ContinuousClock.now
            for body in bodies {
                let reply = try await qdrant.call(.upsertPoints(collection: directCollection), body: body)
                guard reply.status == 200, reply.updateStatus == "completed" else {
                    throw BenchError("direct ingest: \(reply.status) \(reply.updateStatus ?? "") \(reply.error ?? "")")
                }
            }
            let directRate = Double(events) / (ContinuousClock.now - started).seconds
            bodies = []

            let port = 18_474
            started = ContinuousClock.now
            let postgresBefore = postgresCPU()
            let (peak, cpu, elapsed, postgres) = try await withRelay(url, port: port) { relay in
                var peak = 0.0
                var cpu = 0.0
                while try await delivered(relay) < events {
                    peak = max(peak, proc(relay.pid, "VmHWM"))
                    cpu = cpuSeconds(relay.pid)
                    try await Task.sleep(for: .milliseconds(50))
                }
                let elapsed = (ContinuousClock.now - started).seconds
                let postgres = postgresCPU().reduce(0) { $0 + $1.value - (postgresBefore[$1.key] ?? 0) }
                return (peak, max(cpu, cpuSeconds(relay.pid)), elapsed, postgres)
            }
            let relayRate = Double(events) / elapsed
            let count = try await qdrant.call(.countPoints(collection: relayCollection), body: ["exact": true])
            let landed = Int(count.result?["count"]?.numberValue ?? -1)
            return [
                ("events / dimensions", "\(events) / \(dimensions) (points in the relay's collection: \(landed))"),
                ("direct requests / points / KiB each", "\(requests) / \(fmt(Double(events) / Double(requests))) / \(fmt(Double(bytes) / Double(requests) / 1024))"),
                ("relay events/s", fmt(relayRate)), ("direct ingest events/s", fmt(directRate)),
                ("relay / direct", fmt(relayRate / directRate * 100, 1) + " %"),
                ("relay cpu s / peak RSS MB", "\(fmt(cpu, 1)) / \(fmt(peak / 1024, 1))"),
                // From the relay's start (its start-up included, ~0.1 s of CPU) to its last acknowledgement.
                ("cpu per event: relay µs / postgres µs", "\(fmt(cpu / Double(events) * 1e6, 1)) / \(fmt(postgres / Double(events) * 1e6, 1))"),
            ]
        }
    }
}
