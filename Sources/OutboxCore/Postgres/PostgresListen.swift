import CLibPQ
import Dispatch
import Foundation
import Glibc

extension PostgresConnection {
    // MARK: LISTEN / NOTIFY

    /// Subscribes this session to `channel`. Channels are re-subscribed after a reconnect.
    public func listen(_ channel: String) async throws {
        try await awaitTurn()
        try runCommand("LISTEN " + quoteIdentifier(channel))
        listenChannels.insert(channel)
    }

    public func unlisten(_ channel: String) async throws {
        try await awaitTurn()
        try runCommand("UNLISTEN " + quoteIdentifier(channel))
        listenChannels.remove(channel)
    }

    /// Returns the notifications that arrived, waiting up to `timeout` for the first one.
    /// Returns `[]` on timeout. Cancellation ends the wait with `CancellationError`.
    public func waitForNotifications(timeout: Duration) async throws -> [PostgresNotification] {
        try await awaitTurn()
        let hook = CancellationHook()
        return try await withTaskCancellationHandler {
            try self.runNotificationWait(timeout: timeout, hook: hook)
        } onCancel: {
            hook.fire()
        }
    }

    // MARK: Blocking implementation (connection queue only)

    private func runNotificationWait(timeout: Duration, hook: CancellationHook) throws -> [PostgresNotification] {
        executor.preconditionOnQueue()
        let conn = try liveConnection()
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, timeout.milliseconds)) * 1_000_000
        let fd = wakeFD
        return try hook.armed({ var one: UInt64 = 1; _ = write(fd, &one, 8) }) {
            defer { var drained: UInt64 = 0; _ = read(fd, &drained, 8) }
            while true {
                if PQconsumeInput(conn) == 0 { throw connectionError(conn) }
                drainNotifications(conn)
                if !pendingNotifications.isEmpty {
                    defer { pendingNotifications.removeAll() }
                    return pendingNotifications
                }
                if hook.isCancelled { throw CancellationError() }
                let now = DispatchTime.now().uptimeNanoseconds
                if now >= deadline { return [] }
                var fds = [
                    pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0),
                    pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                ]
                let waitMs = Int32(min(UInt64(Int32.max), (deadline - now + 999_999) / 1_000_000))
                let ready = poll(&fds, 2, waitMs)
                if ready < 0, errno != EINTR {
                    throw PostgresError(code: .connectionLost, message: "poll failed: \(String(cString: strerror(errno)))")
                }
            }
        }
    }

    private func drainNotifications(_ conn: OpaquePointer) {
        while let notify = PQnotifies(conn) {
            pendingNotifications.append(PostgresNotification(
                channel: String(cString: notify.pointee.relname),
                payload: String(cString: notify.pointee.extra),
                backendPID: notify.pointee.be_pid))
            PQfreemem(notify)
        }
    }
}

/// Quotes `name` as a SQL identifier (for LISTEN channel names, which cannot be parameters).
func quoteIdentifier(_ name: String) -> String {
    "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}
