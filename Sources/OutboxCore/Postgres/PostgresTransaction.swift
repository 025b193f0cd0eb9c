import Logging

extension PostgresConnection {
    // MARK: Transactions

    /// Runs `body` inside BEGIN … COMMIT. Any error or cancellation rolls back and rethrows.
    /// Statements from other tasks on this connection wait until the transaction ends.
    nonisolated(nonsending) public func transaction<T>(
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let token = try await begin()
        let value: T
        do {
            value = try await Self.$transactionToken.withValue(token) {
                try await body(self)
            }
        } catch {
            try? await finish(token, commit: false)
            throw error
        }
        try await finish(token, commit: true)
        return value
    }

    private func begin() async throws -> UInt64 {
        try await awaitTurn()
        let token = nextTransactionToken
        nextTransactionToken += 1
        activeTransaction = token
        do {
            try runCommand("BEGIN")
        } catch {
            endTransaction()
            throw error
        }
        return token
    }

    /// COMMIT or ROLLBACK. Neither is cancellable: a cancelled COMMIT would leave the outcome unknown.
    private func finish(_ token: UInt64, commit: Bool) throws {
        precondition(activeTransaction == token, "transaction finished twice")
        defer { endTransaction() }
        if transactionBroken {
            if commit { throw lostInTransaction() }
            return
        }
        if commit {
            try runCommand("COMMIT")
        } else {
            do {
                try runCommand("ROLLBACK")
            } catch {
                // The server rolls back by itself when the session ends.
                logger.debug("Rollback failed", metadata: ["postgres.error": "\(error)"])
            }
        }
    }

    private func endTransaction() {
        activeTransaction = nil
        transactionBroken = false
        let waiters = transactionWaiters
        transactionWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    /// Waits while another task's transaction holds the connection.
    func awaitTurn() async throws {
        while let active = activeTransaction, active != Self.transactionToken {
            await withCheckedContinuation { transactionWaiters.append($0) }
        }
        if transactionBroken { throw lostInTransaction() }
    }

    func lostInTransaction() -> PostgresError {
        PostgresError(code: .connectionLost, message: "the connection was lost inside a transaction; it was rolled back")
    }
}
