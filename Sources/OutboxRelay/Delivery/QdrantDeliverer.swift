import Foundation
import OutboxCore
import Logging
import Tracing

/// Applies `qdrant.*` events in claim order: consecutive operations of one kind on one collection
/// become one request (upserts capped by bytes), sent with `wait=true` and confirmed only by
/// `"status": "completed"`. A request rejected as a whole (4xx) is split in halves until the
/// poison event is alone; it is dead-lettered and its neighbours are delivered. Each request carries
/// its collection's `ordering` and, for a collection with a shard key, that of its events (events of
/// different shard keys go in different requests); an event whose shard key field is missing or
/// not a string or an unsigned integer is dead-lettered with a reason naming the field.
struct QdrantDeliverer: Deliverer {
    let client: QdrantClient
    let embedder: any Embedder
    let tables: [String: TableMapping]
    let sourceTypes: SourceColumnTypes
    let collections: [String: CollectionSpec]
    let maxBatchBytes: Int
    /// The payload key a traced upsert's point gets its `traceparent` under (`tracing.point_payload_key`); nil: none.
    var tracePayloadKey: String? = nil
    let logger: Logger

    enum Operation: Equatable {
        case upsert(collection: String, point: JSONValue, text: String?, source: SourceUpdate?)
        case delete(collection: String, ids: [JSONValue])
        case setPayload(collection: String, ids: [JSONValue], payload: JSONValue)

        var collection: String {
            switch self {
            case .upsert(let c, _, _, _), .delete(let c, _), .setPayload(let c, _, _): c
            }
        }
    }

    struct Item {
        let event: ClaimedEvent
        var operation: Operation
        /// The `shard_key` its request carries (`qdrant.collections.<name>.shard_key` / `shard_key_field`).
        var shardKey: ShardKey? = nil
        /// JSON size of this item's part of a request body, for the byte cap.
        var bytes: Int
        /// An upsert's point as JSON, encoded once for both the byte cap and the body.
        var point: [UInt8] = []
    }

    func deliver(_ events: [ClaimedEvent], traces: DeliveryTraces) async -> [Int64: DeliveryOutcome] {
        var outcomes: [Int64: DeliveryOutcome] = [:]
        var items: [Item] = []
        for event in events {
            switch parse(event, traceParent: tracePayloadKey == nil ? nil : traces.carried(event.id)) {
            case .success(let operation):
                switch writeSettings(operation.collection).shardKey(for: event.payload, operation: event.operation, collection: operation.collection) {
                case .success(let shardKey): items.append(Item(event: event, operation: operation, shardKey: shardKey, bytes: 0))
                case .failure(let problem): outcomes[event.id] = .dead(reason: problem.message)
                }
            case .failure(let problem): outcomes[event.id] = .dead(reason: problem.message)
            }
        }
        await embed(&items, outcomes: &outcomes, traces: traces)
        items.removeAll { outcomes[$0.event.id] != nil }
        for index in items.indices {
            if case .upsert(_, let point, _, _) = items[index].operation {
                items[index].point = point.jsonBytes
                items[index].bytes = items[index].point.count + 1
                if items[index].bytes > client.configuration.maxRequestBytes {
                    // Qdrant would refuse it every time.
                    outcomes[items[index].event.id] = .dead(
                        reason: "qdrant.upsert's point is \(items[index].bytes) bytes, over Qdrant's request limit of "
                            + "\(client.configuration.maxRequestBytes) bytes (qdrant.max_request_bytes; Qdrant's service.max_request_size_mb)")
                }
            }
        }
        items.removeAll { outcomes[$0.event.id] != nil }

        var blocker = KeyBlocker()
        // Keys that failed during embedding are blocked for the rest of the batch.
        for event in events { if let outcome = outcomes[event.id] { blocker.record(outcome, for: event) } }
        var pending = items[...]
        while let first = pending.first {
            if blocker.isBlocked(first.event) {
                outcomes[first.event.id] = .skipped
                pending = pending.dropFirst()
                continue
            }
            // A request: the run of same-kind operations on one collection, unblocked, within the byte cap.
            var group = [first]
            var size = first.bytes
            var rest = pending.dropFirst()
            while let next = rest.first, Self.sameRequest(first.operation, next.operation), first.shardKey == next.shardKey,
                !blocker.isBlocked(next.event), size + next.bytes <= maxBatchBytes
            {
                group.append(next)
                size += next.bytes
                rest = rest.dropFirst()
            }
            pending = rest
            for (id, outcome) in await send(group, traces: traces) {
                outcomes[id] = outcome
                if let event = group.first(where: { $0.event.id == id })?.event { blocker.record(outcome, for: event) }
            }
        }
        return outcomes
    }

    static func sameRequest(_ a: Operation, _ b: Operation) -> Bool {
        switch (a, b) {
        case (.upsert(let c1, _, _, _), .upsert(let c2, _, _, _)): c1 == c2
        case (.delete(let c1, _), .delete(let c2, _)): c1 == c2
        // set_payload carries one payload per request: merge only identical payloads.
        case (.setPayload(let c1, _, let p1), .setPayload(let c2, _, let p2)): c1 == c2 && p1 == p2
        default: false
        }
    }

    /// `ordering` and shard key of writes to `collection`.
    func writeSettings(_ collection: String) -> QdrantWriteSettings {
        QdrantWriteSettings.of(collection, in: collections, defaultOrdering: client.configuration.ordering)
    }

    func probe() async -> String? {
        // A configured collection that does not exist yet (404) is created by the first upsert.
        let endpoint = collections.keys.min().map(QdrantClient.Endpoint.getCollection) ?? .listCollections
        do {
            let reply = try await client.call(endpoint)
            guard reply.status != 200, reply.status != 404 else { return nil }
            let text = "qdrant answered \(reply.status): \(reply.error ?? "no error text")"
            return FailureClass.http(status: reply.status, retryAfterHeader: nil) == .destination ? "qdrant refused the relay: \(text)" : text
        } catch {
            return "unreachable: \(error)"
        }
    }

    /// Sends one request for `group`; on a permanent rejection of several events, bisects.
    private func send(_ group: [Item], traces: DeliveryTraces, createdCollection: Bool = false) async -> [(Int64, DeliveryOutcome)] {
        let collection = group[0].operation.collection
        let ordering = writeSettings(collection).ordering
        // One shard key per request: `deliver` groups by it.
        let shardKey = group[0].shardKey
        let body: [UInt8]
        let endpoint: QdrantClient.Endpoint
        switch group[0].operation {
        case .upsert:
            // {"points":[...]} from the points encoded for the byte cap.
            var bytes = Array(#"{"points":["#.utf8)
            bytes.reserveCapacity(group.reduce(16) { $0 + $1.bytes })
            for (i, item) in group.enumerated() {
                if i > 0 { bytes.append(UInt8(ascii: ",")) }
                bytes += item.point
            }
            bytes += Array("]".utf8)
            if let shardKey { bytes += Array(#","shard_key":"#.utf8) + shardKey.json.jsonBytes }
            bytes += Array("}".utf8)
            body = bytes
            endpoint = .upsertPoints(collection: collection, ordering: ordering)
        case .delete:
            var selector: [String: JSONValue] = ["points": .array(group.flatMap { item -> [JSONValue] in
                if case .delete(_, let ids) = item.operation { return ids }
                return []
            })]
            selector["shard_key"] = shardKey?.json
            body = JSONValue.object(selector).jsonBytes
            endpoint = .deletePoints(collection: collection, ordering: ordering)
        case .setPayload(_, _, let payload):
            var request: [String: JSONValue] = ["payload": payload, "points": .array(group.flatMap { item -> [JSONValue] in
                if case .setPayload(_, let ids, _) = item.operation { return ids }
                return []
            })]
            request["shard_key"] = shardKey?.json
            body = JSONValue.object(request).jsonBytes
            endpoint = .setPayload(collection: collection, ordering: ordering)
        }

        let span = traces.request(
            "qdrant \(endpoint.operationName)", carrying: group.map(\.event),
            attributes: [
                "http.request.method": .string(endpoint.method.rawValue), "qdrant.collection": .string(collection),
                "qdrant.ordering": .string(ordering.rawValue),
                "outbox.events": .int(Int64(group.count)),
            ])
        defer { span?.end() }
        let reply: QdrantClient.Reply
        do {
            reply = try await traces.within(span) { try await client.call(endpoint, body: body) }
        } catch {
            DeliveryTraces.failed(span, error)
            return group.map { ($0.event.id, .retry(reason: "qdrant: \(error)", retryAfter: nil)) }
        }
        span?.attributes["http.response.status_code"] = reply.status
        if reply.status != 200 { span?.setStatus(SpanStatus(code: .error, message: "qdrant answered \(reply.status)")) }

        if reply.status == 200 {
            guard reply.updateStatus == "completed" else {
                let status = reply.updateStatus ?? "missing"
                return group.map { ($0.event.id, .retry(reason: "qdrant did not confirm the write (status \(status))", retryAfter: nil)) }
            }
            return group.map { item in
                if case .upsert(_, _, _, let source) = item.operation { return (item.event.id, .delivered(source: source)) }
                return (item.event.id, .delivered(source: nil))
            }
        }
        let text = "qdrant answered \(reply.status): \(reply.error ?? "no error text")"
        switch FailureClass.http(status: reply.status, retryAfterHeader: reply.retryAfter) {
        case .transient(let retryAfter):
            return group.map { ($0.event.id, .retry(reason: text, retryAfter: retryAfter)) }
        case .destination:
            // The api-key, not the events: they wait for an operator to fix it.
            return group.map { ($0.event.id, .destinationFault(reason: text)) }
        case .permanent:
            if reply.status == 404, !createdCollection, let spec = collections[collection], spec.createdByRelay {
                // A configured collection that does not exist yet: create it, then resend once.
                if let created = try? await client.ensureCollection(spec), created.status == 200 {
                    logger.info("Created Qdrant collection", metadata: ["qdrant.collection": "\(collection)"])
                    return await send(group, traces: traces, createdCollection: true)
                }
            }
            guard group.count > 1 else {
                return [(group[0].event.id, .dead(reason: text))]
            }
            let half = group.count / 2
            var results = await send(Array(group[..<half]), traces: traces, createdCollection: createdCollection)
            // Events of a key that failed in the first half must not overtake it in the second.
            let failedKeys = Set(results.compactMap { id, outcome -> String? in
                switch outcome {
                case .retry, .unconfirmed, .destinationFault: group.first { $0.event.id == id }?.event.key
                default: nil
                }
            })
            let second = Array(group[half...])
            let blocked = second.filter { failedKeys.contains($0.event.key) }
            let open = second.filter { !failedKeys.contains($0.event.key) }
            results += blocked.map { ($0.event.id, .skipped) }
            if !open.isEmpty { results += await send(open, traces: traces, createdCollection: createdCollection) }
            return results
        }
    }

    /// Fills in vectors for upserts that carry only text.
    private func embed(_ items: inout [Item], outcomes: inout [Int64: DeliveryOutcome], traces: DeliveryTraces) async {
        let needing = items.indices.filter { if case .upsert(_, _, .some, _) = items[$0].operation { true } else { false } }
        guard !needing.isEmpty else { return }
        let texts = needing.map { index -> String in
            if case .upsert(_, _, let text?, _) = items[index].operation { return text }
            return ""
        }
        let span = traces.request("embedding", carrying: needing.map { items[$0].event }, attributes: ["outbox.events": .int(Int64(texts.count))])
        defer { span?.end() }
        do {
            let vectors = try await traces.within(span) { try await embedder.embed(texts) }
            for (index, vector) in zip(needing, vectors) {
                guard case .upsert(let collection, .object(var point), _, let source) = items[index].operation else { continue }
                point["vector"] = .array(vector.map { .number(Double($0)) })
                items[index].operation = .upsert(collection: collection, point: .object(point), text: nil, source: source)
            }
        } catch let error as EmbeddingError {
            DeliveryTraces.failed(span, error)
            for index in needing {
                outcomes[items[index].event.id] = switch error.failure {
                case .transient(let retryAfter): .retry(reason: error.description, retryAfter: retryAfter)
                case .destination: .destinationFault(reason: error.description)
                case .permanent: .dead(reason: error.description)
                }
            }
        } catch {
            DeliveryTraces.failed(span, error)
            for index in needing { outcomes[items[index].event.id] = .retry(reason: "embedding failed: \(error)", retryAfter: nil) }
        }
    }

    struct PayloadProblem: Error {
        let message: String
    }

    /// `traceParent`: what a traced upsert's point carries under ``tracePayloadKey``.
    func parse(_ event: ClaimedEvent, traceParent: String? = nil) -> Result<Operation, PayloadProblem> {
        let p = event.payload
        let name = "qdrant.\(event.operation)"
        guard let collection = p["collection"]?.stringValue, !collection.isEmpty else {
            return .failure(PayloadProblem(message: "malformed \(name) payload: \"collection\" must be a non-empty string"))
        }
        func ids() -> [JSONValue]? {
            guard let ids = p["ids"]?.arrayValue, !ids.isEmpty, ids.allSatisfy(Self.isPointID) else { return nil }
            return ids
        }
        switch event.operation {
        case "upsert":
            guard let id = p["id"], Self.isPointID(id) else {
                return .failure(PayloadProblem(message: "malformed qdrant.upsert payload: \"id\" must be an unsigned integer or a UUID"))
            }
            guard case .object(var payload) = p["payload"] ?? .object([:]) else {
                return .failure(PayloadProblem(message: "malformed qdrant.upsert payload: \"payload\" must be an object"))
            }
            if let key = tracePayloadKey, let traceParent, payload[key] == nil { payload[key] = .string(traceParent) }
            var point: [String: JSONValue] = ["id": id, "payload": .object(payload)]
            var text: String?
            if let vector = p["vector"] {
                guard let values = vector.arrayValue, !values.isEmpty, values.allSatisfy({ $0.numberValue != nil }) else {
                    return .failure(PayloadProblem(message: "malformed qdrant.upsert payload: \"vector\" must be a non-empty list of numbers"))
                }
                point["vector"] = vector
            } else if let t = p["text"]?.stringValue {
                text = t
            } else {
                return .failure(PayloadProblem(message: "malformed qdrant.upsert payload: needs \"vector\" or \"text\""))
            }
            var source: SourceUpdate?
            if let s = p["source"] {
                guard let tableName = s["table"]?.stringValue else {
                    return .failure(PayloadProblem(message: "malformed qdrant.upsert payload: \"source.table\" must be a string"))
                }
                guard let table = tables[tableName] else {
                    return .failure(PayloadProblem(message:
                        "source.table \"\(tableName)\" is not a table mapped in config (tables:); mapped: \(tables.keys.sorted().joined(separator: ", "))"))
                }
                let rowID: String
                switch s["id"] {
                case .string(let text)?: rowID = text
                case .number(let n)? where Int64(exactly: n) != nil: rowID = String(Int64(exactly: n)!)
                default:
                    return .failure(PayloadProblem(message: "malformed qdrant.upsert payload: \"source.id\" must be a string or an integer"))
                }
                let pointID: String = switch id {
                case .string(let s): s.lowercased()
                case .number(let n): String(UInt64(n))
                default: ""
                }
                let update = SourceUpdate(table: table, rowID: rowID, pointID: pointID)
                if let problem = sourceTypes.problem(with: update) { return .failure(PayloadProblem(message: problem)) }
                source = update
            }
            return .success(.upsert(collection: collection, point: .object(point), text: text, source: source))
        case "delete":
            guard let ids = ids() else {
                return .failure(PayloadProblem(message: "malformed qdrant.delete payload: \"ids\" must be a non-empty list of point ids"))
            }
            return .success(.delete(collection: collection, ids: ids))
        case "set_payload":
            guard let ids = ids() else {
                return .failure(PayloadProblem(message: "malformed qdrant.set_payload payload: \"ids\" must be a non-empty list of point ids"))
            }
            guard let payload = p["payload"], case .object = payload else {
                return .failure(PayloadProblem(message: "malformed qdrant.set_payload payload: \"payload\" must be an object"))
            }
            return .success(.setPayload(collection: collection, ids: ids, payload: payload))
        default:
            return .failure(PayloadProblem(message: "unknown operation qdrant.\(event.operation)"))
        }
    }

    static func isPointID(_ value: JSONValue) -> Bool {
        switch value {
        case .number(let n): n >= 0 && n.rounded() == n && n < 1.8446744073709552e19
        case .string(let s): UUID(uuidString: s) != nil || (s.count == 32 && UUID(uuidString: dashed(s)) != nil)
        default: false
        }
    }

    private static func dashed(_ s: String) -> String {
        let c = Array(s)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20...])
    }
}
