import Dispatch
import Synchronization

/// A serial executor backed by a private `DispatchQueue`.
///
/// Every driver connection (libpq, hiredis, libcurl) is an actor whose `unownedExecutor` is one of
/// these. Blocking C calls then run on the connection's own queue thread, never on Swift's
/// cooperative pool (DESIGN §6). User-created serial queues target libdispatch's overcommit root
/// queue, so a thread parked in `poll(2)` does not starve other queues.
public final class BlockingExecutor: SerialExecutor {
    let queue: DispatchQueue

    public init(label: String) {
        self.queue = DispatchQueue(label: label)
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedSerialExecutor()
        queue.async {
            job.runSynchronously(on: executor)
        }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    public func checkIsolated() {
        dispatchPrecondition(condition: .onQueue(queue))
    }

    /// Traps unless called on this executor's queue. Every blocking helper starts with it, so a
    /// call that would block the cooperative pool fails loudly in tests instead.
    func preconditionOnQueue() {
        dispatchPrecondition(condition: .onQueue(queue))
    }
}

/// A cancellation hook that a `withTaskCancellationHandler` `onCancel` closure can fire from any
/// thread while the connection's queue is blocked in a C call.
///
/// The action is installed right before the blocking call and removed right after, under a lock,
/// so a late cancellation never touches a freed C handle.
final class CancellationHook: Sendable {
    private let state = Mutex<(action: (@Sendable () -> Void)?, cancelled: Bool)>((nil, false))

    /// Runs `body` with `action` armed. A task cancelled before arming does not start `body`: a
    /// cancel request sent before the call (`PQcancel` ahead of the query it should stop) would
    /// find nothing to cancel, and the call would run to its end (a `pg_sleep(30)` did).
    func armed<T>(_ action: @escaping @Sendable () -> Void, _ body: () throws -> T) throws -> T {
        let alreadyCancelled = state.withLock { state in
            if !state.cancelled { state.action = action }
            return state.cancelled
        }
        if alreadyCancelled { throw CancellationError() }
        defer { state.withLock { $0.action = nil } }
        return try body()
    }

    func fire() {
        state.withLock { state in
            state.cancelled = true
            state.action?()
        }
    }

    func reset() {
        state.withLock { $0 = (nil, false) }
    }

    var isCancelled: Bool { state.withLock { $0.cancelled } }
}
