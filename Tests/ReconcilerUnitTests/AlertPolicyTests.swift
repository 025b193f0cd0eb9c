import Testing

@testable import OutboxCore
@testable import Reconciler

/// When the reconciler alerts, with no server: fire on change, resolve when cleared, silence between.
@Suite struct AlertPolicyTests {
    func report(_ counts: [String: Int]) -> ReconcileReport {
        var report = ReconcileReport()
        for (table, count) in counts {
            var finding = ReconcileReport.Finding()
            finding.count = count
            report.findings[table, default: [:]][.unembedded] = finding
        }
        return report
    }

    @Test func firesOnChangeReFiresOnDoublingOrHalvingAndResolvesOnce() {
        var policy = AlertPolicy()
        func states(_ count: Int) -> [String] {
            policy.alerts(for: report(["extractions": count])).map { "\($0.state) \($0.previousCount)→\($0.count)" }
        }
        #expect(states(0) == [])
        #expect(states(10) == ["firing 0→10"])
        #expect(states(10) == [])
        #expect(states(19) == [])
        #expect(states(20) == ["firing 10→20"])
        #expect(states(11) == [])
        #expect(states(10) == ["firing 20→10"])
        #expect(states(0) == ["resolved 10→0"])
        #expect(states(0) == [])
    }

    @Test func eachTableAndCategoryIsItsOwnAlert() {
        var policy = AlertPolicy()
        #expect(policy.alerts(for: report(["a": 1, "b": 0])).map(\.table) == ["a"])
        #expect(policy.alerts(for: report(["a": 1, "b": 3])).map(\.table) == ["b"])
        #expect(policy.alerts(for: report(["a": 0, "b": 3])).map { "\($0.table) \($0.state)" } == ["a resolved"])
    }
}
