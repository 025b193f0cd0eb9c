import Foundation
import ServiceContextModule

/// One outbox event: what a writer enqueues next to its domain write.
///
/// The static constructors build payloads of the contract's shapes (DESIGN §3); `outbox.enqueue`
/// validates them again in the database, so writers in any language get the same checks.
public struct OutboxEvent: Sendable, Equatable {
    public enum Destination: String, Sendable, Codable, CaseIterable { case qdrant, redis }

    public var destination: Destination
    public var operation: String
    /// Ordering key: events of one (destination, key) are delivered in enqueue order.
    public var key: String
    public var payload: JSONValue
    /// Free-form metadata, e.g. `traceparent`.
    public var headers: [String: String]

    public init(destination: Destination, operation: String, key: String, payload: JSONValue, headers: [String: String] = [:]) {
        self.destination = destination
        self.operation = operation
        self.key = key
        self.payload = payload
        self.headers = headers
    }

    /// A Qdrant point id: an unsigned integer or a UUID.
    public enum PointID: Sendable, Hashable {
        case integer(UInt64)
        case uuid(UUID)

        var json: JSONValue {
            switch self {
            case .integer(let i): .number(Double(i))
            case .uuid(let u): .string(PostgresText.uuid(u))
            }
        }

        var keyText: String {
            switch self {
            case .integer(let i): String(i)
            case .uuid(let u): PostgresText.uuid(u)
            }
        }
    }

    /// `qdrant.upsert`: give `vector`, or `text` for the relay to embed. With `source`, the relay
    /// sets that row's embedding column to the point id when the upsert is confirmed.
    public static func qdrantUpsert(
        collection: String, id: PointID, vector: [Float]? = nil, text: String? = nil, payload: [String: JSONValue] = [:],
        source: (table: String, id: String)? = nil, key: String? = nil
    ) -> OutboxEvent {
        var body: [String: JSONValue] = ["collection": .string(collection), "id": id.json, "payload": .object(payload)]
        if let vector { body["vector"] = .array(vector.map { .number(Double($0)) }) }
        if let text { body["text"] = .string(text) }
        if let source { body["source"] = .object(["table": .string(source.table), "id": .string(source.id)]) }
        return OutboxEvent(destination: .qdrant, operation: "upsert", key: key ?? id.keyText, payload: .object(body))
    }

    public static func qdrantDelete(collection: String, ids: [PointID], key: String? = nil) -> OutboxEvent {
        OutboxEvent(
            destination: .qdrant, operation: "delete", key: key ?? ids.first?.keyText ?? collection,
            payload: ["collection": .string(collection), "ids": .array(ids.map(\.json))])
    }

    public static func qdrantSetPayload(collection: String, ids: [PointID], payload: [String: JSONValue], key: String? = nil)
        -> OutboxEvent
    {
        OutboxEvent(
            destination: .qdrant, operation: "set_payload", key: key ?? ids.first?.keyText ?? collection,
            payload: ["collection": .string(collection), "ids": .array(ids.map(\.json)), "payload": .object(payload)])
    }

    /// `redis.xadd`: the relay adds the field `outbox_id` and appends at most once per event.
    public static func redisXAdd(stream: String, fields: [String: String], maxLength: Int? = nil, key: String) -> OutboxEvent {
        var body: [String: JSONValue] = ["stream": .string(stream), "fields": .object(fields.mapValues { .string($0) })]
        if let maxLength { body["maxlen"] = .number(Double(maxLength)) }
        return OutboxEvent(destination: .redis, operation: "xadd", key: key, payload: .object(body))
    }

    public static func redisPublish(channel: String, message: String, key: String) -> OutboxEvent {
        OutboxEvent(destination: .redis, operation: "publish", key: key, payload: ["channel": .string(channel), "message": .string(message)])
    }

    public static func redisDelete(keys: [String], key: String) -> OutboxEvent {
        OutboxEvent(destination: .redis, operation: "del", key: key, payload: ["keys": .array(keys.map(JSONValue.string))])
    }

    public static func redisSet(key redisKey: String, value: String, ttlSeconds: Int? = nil, key: String) -> OutboxEvent {
        var body: [String: JSONValue] = ["key": .string(redisKey), "value": .string(value)]
        if let ttlSeconds { body["ttl_seconds"] = .number(Double(ttlSeconds)) }
        return OutboxEvent(destination: .redis, operation: "set", key: key, payload: .object(body))
    }
}

extension OutboxEvent {
    /// `SELECT outbox.enqueue(...) AS id` with this event's parameters: for writers that send it in
    /// a pipeline of their own (``PostgresConnection/pipeline(_:)``) or want the SQL.
    ///
    /// Throws ``JSONValue/InexactPayload`` for a payload holding an integer of magnitude 2^53 or
    /// more, such as a ``OutboxEvent/PointID/integer(_:)`` that large: a JSON number (a double)
    /// would store a neighbouring value instead.
    public var enqueueStatement: (sql: String, parameters: [PostgresValue]) {
        get throws {
            try payload.checkExactIntegers()
            return (
                "SELECT outbox.enqueue($1, $2, $3, $4::jsonb, $5::jsonb) AS id",
                [
                    .text(destination.rawValue), .text(operation), .text(key), .jsonb(payload.jsonText),
                    .jsonb(headers.isEmpty ? "{}" : JSONValue.object(headers.mapValues { .string($0) }).jsonText),
                ]
            )
        }
    }
}

/// Enqueues events inside the caller's transaction, next to its domain writes.
///
/// The fastest shape sends the domain write and the enqueue in one round trip:
/// ```swift
/// try await db.transaction { tx in
///     try await OutboxWriter.write(
///         ("INSERT INTO extractions (id, source_id, content) VALUES ($1, $2, $3)",
///          [.uuid(id), .text(source), .text(content)]),
///         enqueue: [.qdrantUpsert(collection: "extractions", id: .uuid(id), text: content,
///                                 source: ("extractions", id.uuidString.lowercased()))],
///         on: tx)
/// }
/// ```
/// If the transaction rolls back, neither the row nor the event exists.
public enum OutboxWriter {
    /// Calls `outbox.enqueue(...)` and returns the new event id. Must run inside
    /// ``PostgresConnection/transaction(_:)`` (outside one it commits on its own, like any statement).
    ///
    /// Throws ``JSONValue/InexactPayload`` (nothing sent) for a payload holding an integer of
    /// magnitude 2^53 or more, such as a ``OutboxEvent/PointID/integer(_:)`` that large: a JSON
    /// number (a double) would store a neighbouring value instead.
    @discardableResult
    public static func enqueue(_ event: OutboxEvent, on connection: PostgresConnection) async throws -> Int64 {
        try await write([], enqueue: [event], on: connection).eventIDs[0]
    }

    /// Enqueues several events in one round trip (pipeline), returning their ids in order.
    @discardableResult
    public static func enqueue(_ events: [OutboxEvent], on connection: PostgresConnection) async throws -> [Int64] {
        try await write([], enqueue: events, on: connection).eventIDs
    }

    /// Runs the writer's own `statements`, then enqueues `events`, all in one round trip (libpq
    /// pipeline): a domain write and its event cost the writer one round trip instead of two.
    /// Returns the statements' results and the event ids, in order. If any statement fails, the
    /// ones after it do not run and its error is thrown; inside ``PostgresConnection/transaction(_:)``
    /// the transaction then rolls back, so neither the rows nor the events exist. Events are checked
    /// as `enqueue(_:on:)` checks them, before anything is sent.
    @discardableResult
    public static func write(
        _ statements: (sql: String, parameters: [PostgresValue])..., enqueue events: [OutboxEvent], on connection: PostgresConnection
    ) async throws -> (results: [PostgresResult], eventIDs: [Int64]) {
        try await write(statements, enqueue: events, on: connection)
    }

    /// Like the variadic `write`, with the statements as an array.
    @discardableResult
    public static func write(
        _ statements: [(sql: String, parameters: [PostgresValue])], enqueue events: [OutboxEvent], on connection: PostgresConnection
    ) async throws -> (results: [PostgresResult], eventIDs: [Int64]) {
        // The enqueue call is prepared once per session: parsing and planning it cost more
        // server time than the rest of the call (docs/PERFORMANCE.md, writer-overhead).
        // Inside a span, each event carries its trace (docs/WRITERS.md, "Tracing"): the relay
        // continues it.
        let context = ServiceContext.current
        let enqueues = try events.map { event in
            var event = event
            event.headers = TraceHeaders.injecting(context, into: event.headers)
            let statement = try event.enqueueStatement
            return PostgresStatement(statement.sql, statement.parameters, prepared: true)
        }
        let outcomes = try await connection.pipeline(statements.map { PostgresStatement($0.sql, $0.parameters) } + enqueues)
        // The first failure is the cause; the statements after it report `.pipelineAborted`.
        let results = try outcomes.map { try $0.get() }
        return (Array(results.prefix(statements.count)), try results.dropFirst(statements.count).map { try $0.first!.decode("id") })
    }
}
