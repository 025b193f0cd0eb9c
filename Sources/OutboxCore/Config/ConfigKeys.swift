import Foundation

/// The keys a config file may hold, and the check that rejects every other key.
///
/// A typo (`relay.batch_sise`) would otherwise be ignored and its default used without a word, so
/// the file's shape is checked before any value is read: every key must be declared here, a
/// section must be a map and a setting a single value. The first problem is reported as one line
/// naming the key, with a suggestion when a known key is close (`did you mean relay.batch_size?`).
///
/// `ConfigurationTests.everyKeyTheCodeReadsIsDeclared` keeps this list and the code in step.
/// Environment variables (`OUTBOX_*`) are not checked: the environment is shared with other tools
/// (`OUTBOX_LOG_LEVEL`, scripts' own variables), so an unknown one cannot be told from a typo.
enum ConfigKeys {
    /// Fields of a map entry that hold a list (`tables.<name>.payload_columns`); the rest are single values.
    static let listFields: Set<String> = ["payload_columns"]

    /// Settings (single values), by full dotted path.
    static let settings: Set<String> = [
        "postgres.url", "postgres.password", "postgres.password_file", "postgres.connect_timeout",
        "redis.url", "redis.password", "redis.password_file", "redis.connect_timeout", "redis.command_timeout",
        "redis.dedupe_ttl", "redis.dedupe_prefix", "redis.cluster", "redis.wait_replicas", "redis.wait_timeout",
        "redis.ca_file", "redis.tls_server_name", "redis.client_cert_file", "redis.client_key_file",
        "qdrant.url", "qdrant.api_key", "qdrant.api_key_file", "qdrant.timeout", "qdrant.max_request_bytes", "qdrant.ca_file", "qdrant.client_cert_file",
        "qdrant.client_key_file", "qdrant.ordering",
        "schema.directory",
        "relay.http.host", "relay.http.port", "relay.batch_size", "relay.batch_events", "relay.max_per_key", "relay.batch_bytes",
        "relay.poll_interval", "relay.claim_idle_timeout", "relay.max_attempts", "relay.max_age", "relay.backoff_initial",
        "relay.backoff_max", "relay.shutdown_grace", "relay.qdrant_max_batch_bytes",
        "reconciler.http.host", "reconciler.http.port", "reconciler.interval", "reconciler.grace_period",
        "reconciler.stuck_after", "reconciler.stuck_attempts", "reconciler.page_size", "reconciler.repair",
        "reconciler.alert_webhook_url", "reconciler.alert_webhook_timeout", "reconciler.alert_redis_channel",
        "embedding.provider", "embedding.dimensions", "embedding.base_url", "embedding.model", "embedding.api_key",
        "embedding.api_key_file", "embedding.batch_size", "embedding.timeout",
        "tracing.endpoint", "tracing.sampler", "tracing.sampler_ratio", "tracing.service_name", "tracing.stream_field",
        "tracing.point_payload_key", "tracing.queue_size", "tracing.export_interval", "tracing.export_timeout",
    ]

    /// Sections whose entries are user-chosen names, each a map of these fields.
    static let maps: [String: Set<String>] = [
        "tables": ["table", "id_column", "text_column", "embedding_column", "created_at_column", "collection", "payload_columns", "vector_column"],
        "qdrant.collections": ["size", "distance", "ordering", "shard_key", "shard_key_field"],
    ]

    /// Sections: every proper prefix of a setting, and every map.
    static let sections: Set<String> = {
        var sections = Set(maps.keys)
        for key in settings.union(maps.keys) {
            var parts = key.split(separator: ".").dropLast()
            while !parts.isEmpty {
                sections.insert(parts.joined(separator: "."))
                parts = parts.dropLast()
            }
        }
        return sections
    }()

    /// Checks the parsed YAML document (`Yams.load`) against the declared keys.
    static func check(_ document: Any?) throws {
        guard let document else { return }
        guard let root = mapping(document) else {
            throw ConfigurationError(key: "", problem: "the file must be a map of sections (postgres:, redis:, qdrant:, relay:, …)")
        }
        var problems: [ConfigurationError] = []
        walk(root, path: [], into: &problems)
        guard let first = problems.first else { return }
        guard problems.count > 1 else { throw first }
        throw ConfigurationError(key: first.key, problem: first.problem + " (and \(problems.count - 1) more problem(s))")
    }

    private static func walk(_ map: [(String, Any)], path: [String], into problems: inout [ConfigurationError]) {
        for (name, value) in map.sorted(by: { $0.0 < $1.0 }) {
            // swift-configuration reads `relay.batch_size: 5` at the top level as the nested key.
            let full = path + name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            let key = full.joined(separator: ".")
            if full.count > path.count + 1, let map = maps.keys.first(where: { key.hasPrefix($0 + ".") || key == $0 }) {
                problems.append(ConfigurationError(key: key, problem: "write \(map) as nested maps; dotted keys work for settings only"))
            } else if let fields = maps[key] {
                guard !isNull(value) else { continue }
                guard let entries = mapping(value) else {
                    problems.append(ConfigurationError(key: key, problem: "must be a map of name: {\(fields.sorted().joined(separator: ", "))}"))
                    continue
                }
                for (entry, spec) in entries.sorted(by: { $0.0 < $1.0 }) {
                    let entryKey = key + "." + entry
                    guard let specFields = mapping(spec) else {
                        problems.append(ConfigurationError(key: entryKey, problem: "must be a map with \(fields.sorted().joined(separator: ", "))"))
                        continue
                    }
                    for (field, fieldValue) in specFields.sorted(by: { $0.0 < $1.0 }) {
                        let fieldKey = entryKey + "." + field
                        if !fields.contains(field) {
                            problems.append(unknown(fieldKey, candidates: fields.map { entryKey + "." + $0 }))
                        } else if listFields.contains(field) {
                            if !(fieldValue is [Any]) {
                                problems.append(ConfigurationError(key: fieldKey, problem: "expected a list"))
                            }
                        } else if let kind = nonScalarKind(fieldValue) {
                            problems.append(ConfigurationError(key: fieldKey, problem: "expected a single value, got \(kind)"))
                        }
                    }
                }
            } else if settings.contains(key) {
                if let kind = nonScalarKind(value) {
                    problems.append(ConfigurationError(key: key, problem: "expected a single value, got \(kind)"))
                }
            } else if sections.contains(key) {
                guard !isNull(value) else { continue }
                guard let children = mapping(value) else {
                    let members = settings.union(sections).filter { $0.hasPrefix(key + ".") && !$0.dropFirst(key.count + 1).contains(".") }
                        .map { String($0.dropFirst(key.count + 1)) }.sorted()
                    problems.append(ConfigurationError(key: key, problem: "must be a map (\(members.joined(separator: ", ")))"))
                    continue
                }
                walk(children, path: full, into: &problems)
            } else {
                problems.append(unknown(key, candidates: Array(settings.union(sections))))
            }
        }
    }

    private static func unknown(_ key: String, candidates: [String]) -> ConfigurationError {
        if let suggestion = suggestion(for: key, among: candidates) {
            return ConfigurationError(key: key, problem: "unknown key; did you mean \(suggestion)?")
        }
        let parent = key.split(separator: ".").dropLast().joined(separator: ".")
        let siblings = candidates.filter {
            parent.isEmpty ? !$0.contains(".") : ($0.hasPrefix(parent + ".") && !$0.dropFirst(parent.count + 1).contains("."))
        }.map { parent.isEmpty ? $0 : String($0.dropFirst(parent.count + 1)) }.sorted()
        let known = siblings.isEmpty ? "" : " (known here: \(siblings.joined(separator: ", ")))"
        return ConfigurationError(key: key, problem: "unknown key\(known)")
    }

    /// The closest known key: a small edit distance to the whole key, or the same last part in
    /// another section (`relay.dedupe_ttl` → `redis.dedupe_ttl`).
    static func suggestion(for key: String, among candidates: [String]) -> String? {
        let budget = max(1, min(3, key.split(separator: ".").last.map { $0.count / 4 } ?? 1))
        let scored = candidates.map { ($0, editDistance(key, $0)) }.filter { $0.1 <= budget }
        if let best = scored.min(by: { $0.1 != $1.1 ? $0.1 < $1.1 : $0.0 < $1.0 }) { return best.0 }
        let last = key.split(separator: ".").last.map(String.init) ?? key
        return candidates.filter { $0.split(separator: ".").last.map(String.init) == last }.sorted().first
    }

    /// Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var beforePrevious = [Int](repeating: 0, count: b.count + 1)
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                    current[j] = min(current[j], beforePrevious[j - 2] + 1)
                }
            }
            (beforePrevious, previous, current) = (previous, current, beforePrevious)
        }
        return previous[b.count]
    }

    /// A YAML mapping as (key, value) pairs with its keys as text, or nil when `value` is not a map.
    static func mapping(_ value: Any) -> [(String, Any)]? {
        if let map = value as? [String: Any] { return map.map { ($0.key, $0.value) } }
        if let map = value as? [AnyHashable: Any] { return map.map { ("\($0.key.base)", $0.value) } }
        return nil
    }

    private static func isNull(_ value: Any) -> Bool { value is NSNull }

    private static func nonScalarKind(_ value: Any) -> String? {
        if mapping(value) != nil { return "a map" }
        if value is [Any] { return "a list" }
        return nil
    }
}
