/// `# HELP` lines for the daemons' metrics. swift-prometheus emits metrics made through
/// swift-metrics without help text, so `/metrics` gets it added here, one line before each
/// metric's `# TYPE` line; a metric missing from this table is a test failure
/// (`HealthRoutesTests`, and the daemons' `/metrics` in `RelayTests` and `ReconcilerTests`).
public enum MetricHelp {
    public static let texts: [String: String] = [
        "outbox_build_info": "The running release (label version) and the git commit it was built from (label revision); always 1.",
        "outbox_backlog_events": "Events waiting in outbox.events, by destination.",
        "outbox_oldest_pending_seconds": "Age of the oldest event waiting in outbox.events, by destination.",
        "outbox_dead_letters": "Events in outbox.dead_letters, by destination.",
        "outbox_events_delivered_total": "Events delivered and acknowledged, by destination.",
        "outbox_events_failed_total": "Delivery attempts that failed and will be retried (destination faults included), by destination.",
        "outbox_events_dead_lettered_total": "Events moved to outbox.dead_letters by this relay, by destination.",
        "outbox_delivery_latency_seconds": "Time from an event's commit to its acknowledgement, by destination.",
        "outbox_relay_claims_total": "Claims by destination and whether they found events (result=events) or nothing (result=empty).",
        "outbox_relay_ready": "1 when /readyz answers 200, else 0.",
        "outbox_destination_failing_seconds": "Seconds since the destination began failing (nothing delivered while deliveries or idle probes fail); 0 while it works.",
        "outbox_trace_context_invalid_total": "Events whose traceparent header is not a valid W3C trace context (ignored for tracing; the event is delivered as usual), by destination.",
        "outbox_tracing_spans_dropped_total": "Spans not exported: the export queue was full (reason=queue_full) or the collector failed or timed out (reason=export_failed).",
        "reconciler_findings": "Rows or points found by the last scan, by table and category.",
        "reconciler_repairs_total": "Repairs enqueued, by table and category.",
        "reconciler_alerts_total": "Alerts raised, by category and state (firing, resolved).",
        "reconciler_rows_scanned_total": "Rows scanned by the reconciler.",
        "reconciler_scan_duration_seconds": "Duration of a reconciler scan.",
        "reconciler_scan_errors_total": "Scans that failed.",
    ]

    /// `exposition` with a `# HELP` line before every `# TYPE` line whose metric has a text here.
    public static func annotate(_ exposition: String) -> String {
        var out = ""
        out.reserveCapacity(exposition.utf8.count + 2048)
        for line in exposition.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE "), let name = line.dropFirst("# TYPE ".count).split(separator: " ").first,
                let help = texts[String(name)]
            {
                out += "# HELP \(name) \(help)\n"
            }
            out += line
            out += "\n"
        }
        if out.hasSuffix("\n\n") { out.removeLast() }
        return out
    }
}
