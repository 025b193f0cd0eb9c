/// What Postgres says of one replication slot: what an operator watches so that a slot neither
/// fills the disk (WAL it retains) nor falls behind unnoticed, and whether it still exists at all.
/// From `pg_replication_slots` (Postgres 13+ for `wal_status` and `safe_wal_size`).
public struct ReplicationSlotStatus: Equatable, Sendable {
    public var active: Bool
    /// `reserved`, `extended`, `unreserved` (WAL past `max_slot_wal_keep_size` may go at the next
    /// checkpoint) or `lost` (gone: the slot can never stream again).
    public var walStatus: String
    /// Bytes of WAL the slot keeps from being removed (the server's end of WAL − `restart_lsn`).
    public var retainedBytes: Int64
    /// Bytes between the server's end of WAL and what the slot's reader confirmed.
    public var confirmedLagBytes: Int64
    /// Bytes that can still be written before the slot would be `lost`; nil when
    /// `max_slot_wal_keep_size` is -1 (no limit).
    public var safeBytes: Int64?
    public var confirmed: LogSequenceNumber?

    /// The slot can no longer stream: its WAL was removed. Its events that were not delivered are
    /// only found by the reconciler (`unembedded`) from here on.
    public var isLost: Bool { walStatus == "lost" }

    /// The status of `slot` in the database `connection` is connected to, nil when there is no
    /// such slot.
    public static func read(_ slot: String, on connection: PostgresConnection) async throws -> ReplicationSlotStatus? {
        let rows = try await connection.query("""
            SELECT active, coalesce(wal_status, 'lost') AS wal_status,
                   coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint AS retained,
                   coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint AS lag,
                   safe_wal_size, confirmed_flush_lsn::text AS confirmed
            FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()
            """, [.text(slot)])
        guard let row = rows.first else { return nil }
        return ReplicationSlotStatus(
            active: try row.decode("active"), walStatus: try row.decode("wal_status"),
            retainedBytes: try row.decode("retained"), confirmedLagBytes: try row.decode("lag"),
            safeBytes: try row.decode("safe_wal_size", as: Int64?.self),
            confirmed: try row.decode("confirmed", as: String?.self).flatMap { LogSequenceNumber($0) })
    }
}
