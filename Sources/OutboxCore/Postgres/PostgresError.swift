/// An error from the Postgres driver. Its text never carries the connection string or password.
public struct PostgresError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: String
        /// Could not connect (refused, timeout, authentication).
        public static let connectionFailed = Code(raw: "connection failed")
        /// The connection broke during a call; the call's outcome is unknown.
        public static let connectionLost = Code(raw: "connection lost")
        /// The server rejected the statement; see `sqlState`.
        public static let server = Code(raw: "server error")
        /// A result could not be decoded into the requested type.
        public static let decoding = Code(raw: "decoding error")
        /// A statement in a pipeline was skipped because an earlier one failed.
        public static let pipelineAborted = Code(raw: "pipeline aborted")
        /// A parameter value Postgres cannot take (a NUL byte in text); nothing was sent.
        public static let invalidParameter = Code(raw: "invalid parameter")
        /// The driver was used wrongly (e.g. a statement after a lost transaction).
        public static let usage = Code(raw: "usage error")
        public var description: String { raw }
    }

    public let code: Code
    /// Five-character SQLSTATE for server errors (`23505` unique violation, `57014` cancelled, …).
    public let sqlState: String?
    public let message: String
    public let detail: String?
    public let hint: String?

    init(code: Code, sqlState: String? = nil, message: String, detail: String? = nil, hint: String? = nil) {
        self.code = code
        self.sqlState = sqlState
        self.message = message
        self.detail = detail
        self.hint = hint
    }

    /// True when retrying on a fresh connection may succeed.
    public var isConnectionError: Bool { code == .connectionFailed || code == .connectionLost }

    public var description: String {
        var text = "postgres \(code)"
        if let sqlState { text += " [\(sqlState)]" }
        text += ": \(message)"
        if let detail { text += " (detail: \(detail))" }
        if let hint { text += " (hint: \(hint))" }
        return text
    }
}
