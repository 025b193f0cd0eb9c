/// A validated SQL identifier (schema, table or column name) taken from configuration.
///
/// Identifiers cannot be bound parameters, so they are validated when config is loaded and always
/// double-quoted when spliced into SQL. Values are never spliced: they are bound parameters.
public struct SQLIdentifier: Sendable, Hashable, CustomStringConvertible {
    public let name: String

    public struct Invalid: Error, CustomStringConvertible {
        public let name: String
        public let problem: String
        public var description: String { "invalid SQL identifier \"\(name)\": \(problem)" }
    }

    /// Accepts 1–63 bytes of letters, digits, `_` and `$`, not starting with a digit or `$`.
    /// Anything else (quotes, dots, spaces, NUL) is refused rather than escaped.
    public init(_ name: String) throws {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else { throw Invalid(name: name, problem: "it is empty") }
        guard bytes.count <= 63 else { throw Invalid(name: name, problem: "it is longer than 63 bytes") }
        func isLetter(_ b: UInt8) -> Bool { (b >= 97 && b <= 122) || (b >= 65 && b <= 90) || b == 95 }
        guard isLetter(bytes[0]) else {
            throw Invalid(name: name, problem: "it must start with a letter or underscore")
        }
        for b in bytes where !(isLetter(b) || (b >= 48 && b <= 57) || b == 36) {
            throw Invalid(name: name, problem: "only letters, digits, _ and $ are allowed")
        }
        self.name = name
    }

    /// The identifier double-quoted for SQL text.
    public var quoted: String { "\"" + name + "\"" }
    public var description: String { name }
}

/// A possibly schema-qualified table name such as `public.extractions`.
public struct SQLTableName: Sendable, Hashable, CustomStringConvertible {
    public let schema: SQLIdentifier?
    public let table: SQLIdentifier

    public init(_ text: String) throws {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        switch parts.count {
        case 1: (schema, table) = (nil, try SQLIdentifier(String(parts[0])))
        case 2: (schema, table) = (try SQLIdentifier(String(parts[0])), try SQLIdentifier(String(parts[1])))
        default: throw SQLIdentifier.Invalid(name: text, problem: "expected table or schema.table")
        }
    }

    public var quoted: String { schema.map { $0.quoted + "." + table.quoted } ?? table.quoted }
    public var description: String { schema.map { "\($0).\(table)" } ?? table.name }
}
