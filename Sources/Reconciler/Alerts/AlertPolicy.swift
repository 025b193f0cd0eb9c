import Foundation
import OutboxCore

/// When the reconciler alerts: per table and category, an alert fires when the category turns
/// non-empty, fires again when its count changes materially (doubles, or halves while still
/// non-empty), and one resolve notice is sent when it returns to zero. A category that stays the
/// same sends nothing, scan after scan. A value with no I/O; `AlertManager` sends what it decides.
public struct AlertPolicy: Sendable {
    public struct Alert: Sendable, Equatable {
        public let table: String
        public let category: String
        public let state: String  // "firing" | "resolved"
        public let count: Int
        public let previousCount: Int
        public let sampleIDs: [String]
    }

    /// The count each firing alert last reported, by "table.category".
    private var active: [String: Int] = [:]

    public init() {}

    /// The alerts `report` causes, given the ones sent before; remembers them.
    public mutating func alerts(for report: ReconcileReport) -> [Alert] {
        var alerts: [Alert] = []
        for (table, categories) in report.findings.sorted(by: { $0.key < $1.key }) {
            for (category, finding) in categories.sorted(by: { $0.key < $1.key }) {
                let key = "\(table).\(category.rawValue)"
                let previous = active[key] ?? 0
                let now = finding.count
                let material = previous == 0 ? now > 0 : (now == 0 || now >= previous * 2 || now * 2 <= previous)
                guard material else { continue }
                alerts.append(Alert(
                    table: table, category: category.rawValue, state: now == 0 ? "resolved" : "firing", count: now,
                    previousCount: previous, sampleIDs: finding.ids))
                active[key] = now == 0 ? nil : now
            }
        }
        return alerts
    }
}
