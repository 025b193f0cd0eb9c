import OutboxCore

extension PostgresConnection {
    /// `SELECT count(*) FROM <from>`: `from` is a relation, optionally with a WHERE clause whose
    /// values are `parameters` (`db.count("outbox.events WHERE key = $1", [.text(key)])`).
    public func count(_ from: String, _ parameters: [PostgresValue] = []) async throws -> Int {
        guard let row = try await query("SELECT count(*) AS n FROM \(from)", parameters).first else { return 0 }
        return try row.decode("n")
    }
}
