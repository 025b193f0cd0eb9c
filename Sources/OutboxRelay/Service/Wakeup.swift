import Foundation
import OutboxCore
import Synchronization

/// A one-slot wake-up signal with an optional deadline.
actor Wakeup {
    private var signalled = false
    private var waiter: CheckedContinuation<Void, Never>?

    func signal() {
        signalled = true
        waiter?.resume()
        waiter = nil
    }

    /// Returns when signalled (at once if a signal is pending), at `deadline`, or on cancellation.
    func wait(until deadline: ContinuousClock.Instant?) async {
        if signalled {
            signalled = false
            return
        }
        let timer = deadline.map { deadline in
            Task { [weak self] in
                // A cancelled timer must not signal: that would wake the next wait for nothing.
                guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
                await self?.signal()
            }
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if signalled || Task.isCancelled {
                    continuation.resume()
                } else {
                    waiter = continuation
                }
            }
        } onCancel: {
            Task { await self.signal() }
        }
        signalled = false
        timer?.cancel()
    }
}

/// A flag set once, read from any task.
final class StopFlag: Sendable {
    private let state = Synchronization.Atomic<Bool>(false)
    func set() { state.store(true, ordering: .relaxed) }
    var isSet: Bool { state.load(ordering: .relaxed) }
}
