import Foundation
import Logging

/// The Qdrant REST calls the relay and reconciler make, over one keep-alive libcurl handle.
public struct QdrantClient: Sendable {
    let http: HTTPConnection
    public let configuration: QdrantConfiguration

    public init(configuration: QdrantConfiguration, logger: Logger) {
        self.configuration = configuration
        self.http = HTTPConnection(logger: logger, secrets: configuration.secrets, tls: configuration.tls)
    }

    /// One Qdrant reply: status, the envelope's `result`, and its error text when it failed.
    public struct Reply: Sendable {
        public let status: Int
        public let result: JSONValue?
        public let error: String?
        public let retryAfter: String?

        /// Qdrant's `result.status` for updates: `completed`, `acknowledged`, `wait_timeout`.
        public var updateStatus: String? { result?["status"]?.stringValue }
    }

    /// The REST endpoints the project uses: the only place that spells Qdrant's paths. Writes wait
    /// for Qdrant to apply them (`wait=true`): only `"status": "completed"` confirms; they carry
    /// their collection's `ordering` (``QdrantWriteSettings``; `strong` unless configured).
    public enum Endpoint: Sendable, Equatable {
        case listCollections
        case collectionExists(String)
        case getCollection(String)
        case createCollection(String)
        case deleteCollection(String)
        case upsertPoints(collection: String, ordering: WriteOrdering = .strong)
        case deletePoints(collection: String, ordering: WriteOrdering = .strong)
        case setPayload(collection: String, ordering: WriteOrdering = .strong)
        case retrievePoints(collection: String)
        case scrollPoints(collection: String)
        case countPoints(collection: String)
        case queryPoints(collection: String)

        public var method: HTTPRequest.Method {
            switch self {
            case .listCollections, .collectionExists, .getCollection: .GET
            case .createCollection, .upsertPoints: .PUT
            case .deleteCollection: .DELETE
            case .deletePoints, .setPayload, .retrievePoints, .scrollPoints, .countPoints, .queryPoints: .POST
            }
        }

        /// A short name for spans and logs: `upsert points`, `get collection`, …
        public var operationName: String {
            switch self {
            case .listCollections: "list collections"
            case .collectionExists: "collection exists"
            case .getCollection: "get collection"
            case .createCollection: "create collection"
            case .deleteCollection: "delete collection"
            case .upsertPoints: "upsert points"
            case .deletePoints: "delete points"
            case .setPayload: "set payload"
            case .retrievePoints: "retrieve points"
            case .scrollPoints: "scroll points"
            case .countPoints: "count points"
            case .queryPoints: "query points"
            }
        }

        public var path: String {
            return switch self {
            case .listCollections: "/collections"
            case .collectionExists(let name): "/collections/\(escape(name))/exists"
            case .createCollection(let name), .deleteCollection(let name), .getCollection(let name): "/collections/\(escape(name))"
            case .upsertPoints(let name, let ordering): "/collections/\(escape(name))/points" + Self.write(ordering)
            case .deletePoints(let name, let ordering): "/collections/\(escape(name))/points/delete" + Self.write(ordering)
            case .setPayload(let name, let ordering): "/collections/\(escape(name))/points/payload" + Self.write(ordering)
            case .retrievePoints(let name): "/collections/\(escape(name))/points"
            case .scrollPoints(let name): "/collections/\(escape(name))/points/scroll"
            case .countPoints(let name): "/collections/\(escape(name))/points/count"
            case .queryPoints(let name): "/collections/\(escape(name))/points/query"
            }
        }

        /// The query of a point write: wait for it to be applied, in `ordering`.
        static func write(_ ordering: WriteOrdering) -> String { "?wait=true&ordering=\(ordering.rawValue)" }
    }

    public func call(_ endpoint: Endpoint, body: JSONValue) async throws -> Reply {
        try await call(endpoint, body: body.jsonBytes)
    }

    public func call(_ endpoint: Endpoint, body: [UInt8]? = nil) async throws -> Reply {
        var headers: [(name: String, value: String)] = []
        if let key = configuration.apiKey { headers.append(("api-key", key)) }
        if body != nil { headers.append(("Content-Type", "application/json")) }
        let base = configuration.url.hasSuffix("/") ? String(configuration.url.dropLast()) : configuration.url
        let response = try await http.perform(
            HTTPRequest(method: endpoint.method, url: base + endpoint.path, headers: headers, body: body, timeout: configuration.timeout))
        let json = try? JSONValue.parse(response.bodyText)
        let error = json?["status"]?["error"]?.stringValue
            ?? (response.status >= 400 ? String(response.bodyText.prefix(300)) : nil)
        return Reply(status: response.status, result: json?["result"], error: error, retryAfter: response.headers["retry-after"])
    }

    /// The size of the (single, unnamed) dense vector of collection `name`, or nil when the
    /// collection does not exist or has named vectors.
    public func vectorSize(of name: String) async throws -> Int? {
        let reply = try await call(.getCollection(name))
        guard reply.status == 200 else { return nil }
        return reply.result?["config"]?["params"]?["vectors"]?["size"]?.numberValue.flatMap { Int(exactly: $0) }
    }

    /// Why the collections in `qdrant.collections` cannot be used as configured, or nil: one that
    /// exists in Qdrant with vectors of another size would refuse every upsert.
    public func collectionProblem(_ collections: [String: CollectionSpec]) async throws -> ConfigurationError? {
        for spec in collections.values.sorted(by: { $0.name < $1.name }) {
            if let size = try await vectorSize(of: spec.name), size != spec.size {
                return ConfigurationError(
                    key: "qdrant.collections.\(spec.name).size",
                    problem: "is \(spec.size), but Qdrant's collection \(spec.name) holds vectors of size \(size): make them agree")
            }
        }
        return nil
    }

    /// Creates `spec` unless it exists; 409 (created meanwhile by someone else) counts as success.
    public func ensureCollection(_ spec: CollectionSpec) async throws -> Reply {
        let exists = try await call(.collectionExists(spec.name))
        if exists.status == 200, exists.result?["exists"] == .bool(true) { return exists }
        let body: JSONValue = ["vectors": ["size": .number(Double(spec.size)), "distance": .string(spec.distance)]]
        let created = try await call(.createCollection(spec.name), body: body)
        return created.status == 409 ? Reply(status: 200, result: .bool(true), error: nil, retryAfter: nil) : created
    }

    /// One hit of ``nearest(to:in:limit:)``: a point's id (a UUID, or an unsigned integer, as text),
    /// its score (for Cosine the similarity, 1 for the same direction) and its payload.
    public struct ScoredPoint: Sendable, Equatable {
        public let id: String
        public let score: Double
        public let payload: JSONValue?
    }

    /// A query Qdrant refused (an unknown collection, a vector of the wrong size), or answered
    /// with something other than `{"result": {"points": [...]}}`.
    public struct QueryError: Error, CustomStringConvertible, Sendable {
        public let collection: String
        public let status: Int
        public let message: String
        public var description: String { "query of Qdrant collection \(collection) failed (HTTP \(status)): \(message)" }
    }

    /// The `limit` points of `collection` nearest to `vector`, best first, with their payloads:
    /// `POST /collections/{collection}/points/query`, scored by the collection's distance.
    public func nearest(to vector: [Float], in collection: String, limit: Int) async throws -> [ScoredPoint] {
        let body: JSONValue = ["query": .array(vector.map { .number(Double($0)) }), "limit": .number(Double(limit)), "with_payload": true]
        let reply = try await call(.queryPoints(collection: collection), body: body)
        guard reply.status == 200, let points = reply.result?["points"]?.arrayValue else {
            throw QueryError(collection: collection, status: reply.status, message: reply.error ?? "the reply has no result.points")
        }
        return try points.map { point in
            let id: String? = switch point["id"] {
            case .string(let uuid): uuid
            case .number(let n): UInt64(exactly: n).map(String.init)
            default: nil
            }
            guard let id, let score = point["score"]?.numberValue else {
                throw QueryError(
                    collection: collection, status: reply.status, message: "a point without an id or a score: \(point.jsonText)")
            }
            return ScoredPoint(id: id, score: score, payload: point["payload"])
        }
    }

    /// Percent-escapes a collection name for a URL path segment. `.` and `..` are escaped whole:
    /// as literal dot segments libcurl would resolve them, sending the request to another path.
    package static func escape(_ name: String) -> String {
        if name == "." || name == ".." { return String(repeating: "%2E", count: name.count) }
        return name.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-_.~"))) ?? name
    }
}
