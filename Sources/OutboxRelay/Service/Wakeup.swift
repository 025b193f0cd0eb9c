import Foundation
import OutboxCore
import Synchronization

/// A one-slot wake-up signal with an optional deadline.
actor Wakeup {
    private var signalled = false
    private var waiter: CheckedContinuation<Void, Never>?
    /// Counts waits, so that a timer from an earlier wait cannot end a later one.
    private var generation = 0
    private var expired = false

    func signal() {
        signalled = true
        waiter?.resume()
        waiter = nil
    }

    private func expire(_ wait: Int) {
        guard wait == generation else { return }
        expired = true
        waiter?.resume()
        waiter = nil
    }

    /// Returns when signalled (at once if a signal is pending), at `deadline`, or on cancellation:
    /// true when it was signalled (or cancelled), false when the deadline came first.
    @discardableResult
    func wait(until deadline: ContinuousClock.Instant?) async -> Bool {
        if signalled {
            signalled = false
            return true
        }
        generation += 1
        expired = false
        let timer = deadline.map { [generation] deadline in
            Task { [weak self] in
                // A cancelled timer must not end the wait.
                guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
                await self?.expire(generation)
            }
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if signalled || expired || Task.isCancelled {
                    continuation.resume()
                } else {
                    waiter = continuation
                }
            }
        } onCancel: {
            Task { await self.signal() }
        }
        timer?.cancel()
        defer { signalled = false }
        return signalled || !expired
    }
}

/// A flag set once, read from any task.
final class StopFlag: Sendable {
    private let state = Synchronization.Atomic<Bool>(false)
    func set() { state.store(true, ordering: .relaxed) }
    var isSet: Bool { state.load(ordering: .relaxed) }
}
