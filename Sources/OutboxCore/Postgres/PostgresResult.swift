import Foundation

/// Rows and row count of one statement, decoded from the text result format.
public struct PostgresResult: Sendable {
    public let columns: [String]
    public let rows: [PostgresRow]
    /// Rows affected by INSERT/UPDATE/DELETE (`PQcmdTuples`), or 0.
    public let affectedRows: Int

    public var first: PostgresRow? { rows.first }

    /// The position of column `name`, for ``PostgresRow/decode(at:as:)`` over many rows.
    public func index(of name: String) throws -> Int {
        guard let index = columns.firstIndex(of: name) else {
            throw PostgresError(code: .decoding, message: "no column \"\(name)\" in the result")
        }
        return index
    }
}

public struct PostgresRow: Sendable {
    let columnIndex: [String: Int]
    public let values: [PostgresValue]

    /// The value of column `name`, or `.null` when there is no such column.
    public subscript(_ name: String) -> PostgresValue {
        columnIndex[name].map { values[$0] } ?? .null
    }

    /// Decodes column `name`; throws a ``PostgresError`` naming the column when the value
    /// is missing or of another type.
    public func decode<T: PostgresDecodable>(_ name: String, as type: T.Type = T.self) throws -> T {
        guard let index = columnIndex[name] else {
            throw PostgresError(code: .decoding, message: "no column \"\(name)\" in the result")
        }
        return try decode(at: index, as: type)
    }

    /// Decodes the column at `index` (``PostgresResult/index(of:)``), without looking its name up.
    public func decode<T: PostgresDecodable>(at index: Int, as type: T.Type = T.self) throws -> T {
        guard let value = T(postgresValue: values[index]) else {
            let name = columnIndex.first { $0.value == index }?.key ?? "#\(index)"
            throw PostgresError(code: .decoding, message: "column \"\(name)\" holds \(values[index].typeName), not \(T.self)")
        }
        return value
    }
}

extension PostgresValue {
    var typeName: String {
        switch self {
        case .null: "NULL"
        case .text: "text"
        case .int: "an integer"
        case .bool: "a boolean"
        case .double: "a float"
        case .uuid: "a uuid"
        case .jsonb: "json"
        case .timestamptz: "a timestamp"
        case .bytea: "bytea"
        case .textArray, .intArray, .doubleArray: "an array"
        case .untyped: "untyped text"
        }
    }
}

/// A Swift type that a result column decodes into.
public protocol PostgresDecodable {
    init?(postgresValue: PostgresValue)
}

extension String: PostgresDecodable {
    public init?(postgresValue: PostgresValue) {
        switch postgresValue {
        case .text(let s), .jsonb(let s): self = s
        case .uuid(let u): self = PostgresText.uuid(u)
        default: return nil
        }
    }
}

extension Int64: PostgresDecodable {
    public init?(postgresValue: PostgresValue) {
        guard case .int(let i) = postgresValue else { return nil }
        self = i
    }
}

extension Int: PostgresDecodable {
    public init?(postgresValue: PostgresValue) {
        guard case .int(let i) = postgresValue else { return nil }
        self = Int(i)
    }
}

extension Bool: PostgresDecodable {
    public init?(postgresValue: PostgresValue) {
        guard case .bool(let b) = postgresValue else { return nil }
        self = b
    }
}

extension Double: PostgresDecodable {
    public init?(postgresValue: PostgresValue) {
        switch postgresValue {
        case .double(let d): self = d
        case .int(let i): self = Double(i)
        default: return nil
        }
    }
}

extension UUID: PostgresDecodable {
    public init?(postgresValue: PostgresValue) {
        guard case .uuid(let u) = postgresValue else { return nil }
        self = u
    }
}

extension Date: PostgresDecodable {
    public init?(postgresValue: PostgresValue) {
        guard case .timestamptz(let d) = postgresValue else { return nil }
        self = d
    }
}

extension Array: PostgresDecodable where Element == UInt8 {
    public init?(postgresValue: PostgresValue) {
        guard case .bytea(let b) = postgresValue else { return nil }
        self = b
    }
}

extension Optional: PostgresDecodable where Wrapped: PostgresDecodable {
    public init?(postgresValue: PostgresValue) {
        if case .null = postgresValue {
            self = .none
        } else if let wrapped = Wrapped(postgresValue: postgresValue) {
            self = .some(wrapped)
        } else {
            return nil
        }
    }
}

/// A notification received on a LISTENed channel.
public struct PostgresNotification: Sendable, Equatable {
    public let channel: String
    public let payload: String
    public let backendPID: Int32
}

/// One statement of a ``PostgresConnection/pipeline(_:)-([PostgresStatement])``.
///
/// A `prepared` statement is parsed and planned once per session: the first use sends it as a
/// named server-side statement, later uses only bind and execute it. Worth it for a short
/// statement a hot path runs many times whose plan does not depend on its values (the writer's
/// `outbox.enqueue` call); parse and plan are most of such a statement's server time.
public struct PostgresStatement: Sendable {
    public var sql: String
    public var parameters: [PostgresValue]
    public var prepared: Bool

    public init(_ sql: String, _ parameters: [PostgresValue] = [], prepared: Bool = false) {
        self.sql = sql
        self.parameters = parameters
        self.prepared = prepared
    }
}
