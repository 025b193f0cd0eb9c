import Foundation

/// Qdrant's `ordering` query parameter of point writes (OpenAPI `WriteOrdering`): `weak` (Qdrant's
/// default: writes may be reordered), `medium` (through a dynamically elected leader of the shard),
/// `strong` (through the shard's permanent leader; unavailable while it is down).
public enum WriteOrdering: String, Sendable, Hashable, CaseIterable {
    case weak, medium, strong
}

/// A Qdrant shard key (OpenAPI `ShardKey`): a string or an unsigned 64-bit integer.
public enum ShardKey: Sendable, Hashable, CustomStringConvertible {
    case keyword(String)
    case number(UInt64)

    /// A non-empty string or a non-negative integer; nil for anything else.
    public init?(json: JSONValue) {
        switch json {
        case .string(let s) where !s.isEmpty: self = .keyword(s)
        case .number(let n): guard let u = UInt64(exactly: n) else { return nil }; self = .number(u)
        default: return nil
        }
    }

    public var json: JSONValue {
        switch self {
        case .keyword(let s): .string(s)
        case .number(let n): .number(Double(n))
        }
    }

    public var description: String { json.jsonText }
}

/// Where the shard key of a collection's writes comes from (`qdrant.collections.<name>.shard_key`
/// or `.shard_key_field`).
public enum ShardKeySource: Sendable, Hashable {
    /// The same key for every write.
    case fixed(ShardKey)
    /// The value of this field of each event's payload (top level; for `qdrant.upsert`, the point's
    /// `payload` when the top level has no such field).
    case field(String)
}

/// What a write to one collection carries: its `ordering` and where its `shard_key` comes from.
public struct QdrantWriteSettings: Sendable, Hashable {
    public var ordering: WriteOrdering
    public var shardKey: ShardKeySource?

    public init(ordering: WriteOrdering, shardKey: ShardKeySource? = nil) {
        self.ordering = ordering
        self.shardKey = shardKey
    }

    /// The settings of writes to `collection`: its own under `qdrant.collections`, else
    /// `qdrant.ordering` and no shard key.
    public static func of(_ collection: String, in collections: [String: CollectionSpec], defaultOrdering: WriteOrdering)
        -> QdrantWriteSettings
    {
        let spec = collections[collection]
        return QdrantWriteSettings(ordering: spec?.ordering ?? defaultOrdering, shardKey: spec?.shardKey)
    }

    /// The shard key of one event's write, read from `payload` (the event's payload) for a
    /// field-keyed collection; nil when the collection has none. `operation` is `upsert`,
    /// `delete`, … (an upsert's point payload is searched too). The failure names the field.
    public func shardKey(for payload: JSONValue, operation: String, collection: String) -> Result<ShardKey?, ShardKeyProblem> {
        switch shardKey {
        case nil: return .success(nil)
        case .fixed(let key): return .success(key)
        case .field(let field):
            let setting = "qdrant.collections.\(collection).shard_key_field"
            let value = payload[field] ?? (operation == "upsert" ? payload["payload"]?[field] : nil)
            guard let value else {
                let where_ = operation == "upsert" ? "neither in the payload nor in its \"payload\"" : "not in the payload"
                return .failure(ShardKeyProblem(message:
                    "qdrant.\(operation) to \(collection): the shard key field \"\(field)\" (\(setting)) is \(where_)"))
            }
            guard let key = ShardKey(json: value) else {
                return .failure(ShardKeyProblem(message:
                    "qdrant.\(operation) to \(collection): the shard key field \"\(field)\" (\(setting)) must be a non-empty string "
                        + "or an unsigned integer, got \(String(value.jsonText.prefix(100)))"))
            }
            return .success(key)
        }
    }
}

public struct ShardKeyProblem: Error, Sendable, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
