import Foundation
import Logging
import OutboxCore
import Synchronization

/// `OUTBOX_LOG_FORMAT=json`: one JSON object per line on stderr, for log shippers.
///
/// `{"time": "2026-12-07T15:16:25.123Z", "level": "warning", "logger": "outbox-relay",
/// "message": "Event dead-lettered", "trace_id": "…", "span_id": "…", "metadata": {…}}` — `trace_id`
/// and `span_id` on the lines logged inside a traced delivery (docs/OPERATING.md), taken out of the
/// metadata so a shipper finds them where OpenTelemetry's log data model puts them.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    private static let output = Mutex(())

    func log(event: LogEvent) {
        var all = metadataProvider?.get() ?? [:]
        all.merge(metadata) { $1 }
        if let extra = event.metadata { all.merge(extra) { $1 } }
        var object: [String: JSONValue] = [
            "time": .string(Self.timestamp()), "level": .string(event.level.rawValue), "logger": .string(label),
            "message": .string("\(event.message)"),
        ]
        for key in ["trace_id", "span_id"] {
            if let value = all.removeValue(forKey: key) { object[key] = Self.json(value) }
        }
        all.removeValue(forKey: "trace_flags")
        if !all.isEmpty { object["metadata"] = .object(all.mapValues(Self.json)) }
        let line = JSONValue.object(object).jsonText + "\n"
        Self.output.withLock { _ in FileHandle.standardError.write(Data(line.utf8)) }
    }

    private static func json(_ value: Logger.Metadata.Value) -> JSONValue {
        switch value {
        case .string(let text): .string(text)
        case .stringConvertible(let convertible): .string(convertible.description)
        case .array(let values): .array(values.map(json))
        case .dictionary(let values): .object(values.mapValues(json))
        }
    }

    private static let timeFormat = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt)

    private static func timestamp() -> String { timeFormat.format(Date()) }
}
