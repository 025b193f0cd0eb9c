import Testing

@testable import OutboxCore
@testable import Reconciler

/// Values from Qdrant that the reconciler must read without trapping.
@Suite struct HostileReconcilerInputTests {
    @Test func pointIdAtTheTopOfUInt64DoesNotTrapTheReconciler() {
        // 2^64 - 1 arrives from Qdrant's JSON as the double 2^64, which UInt64 cannot hold.
        #expect(TableScan.pointText(.number(18_446_744_073_709_551_615)) == "1.8446744073709552e+19")
        #expect(TableScan.pointText(.number(42)) == "42")
    }
}
