import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// The files under ops/ as a team deploys them: the alert rules pass promtool and fire in a real
/// Prometheus scraping both daemons, the dashboard queries only what the daemons export, and the
/// systemd units pass systemd-analyze. promtool and prometheus come from Debian's `prometheus`
/// package: without them these tests fail, they never skip. One test at a time: a relay holds a
/// dozen Postgres sessions, and the whole test run comes close to the local Postgres' limit.
@Suite(.serialized) struct OpsTests {
    static let ops = TestEnvironment.repositoryRoot.appendingPathComponent("ops")
    static let rulesFile = ops.appendingPathComponent("prometheus/outbox-alerts.yml")

    /// promtool accepts the shipped rules and scrape configuration, and the rules' own unit tests
    /// (outbox-alerts.test.yml: every alert firing, and not firing where it should not) pass.
    @Test func promtoolAcceptsTheRulesAndTheirUnitTestsPass() async throws {
        let promtool = try Self.tool("promtool", package: "prometheus")
        for arguments in [
            ["check", "rules", "ops/prometheus/outbox-alerts.yml"], ["check", "config", "ops/prometheus/prometheus.yml"],
            ["test", "rules", "ops/prometheus/outbox-alerts.test.yml"],
        ] {
            let result = try await runProcess(promtool, arguments)
            #expect(result.status == 0, "promtool \(arguments.joined(separator: " ")) exited \(result.status):\n\(result.stdout)\(result.stderr)")
        }
    }

    /// Every alert Prometheus loads from the shipped file carries a severity, a summary, a
    /// description and a runbook link to a section of docs/OPERATING.md that exists.
    @Test func everyAlertHasASeverityAndARunbookSectionThatExists() async throws {
        let prometheus = try await PrometheusServer(configuration: "rule_files: [\(Self.rulesFile.path)]\n")
        let rules = try await prometheus.rules()
        #expect(rules.count >= 10, "\(rules.map(\.name))")
        let operating = try String(contentsOf: TestEnvironment.repositoryRoot.appendingPathComponent("docs/OPERATING.md"), encoding: .utf8)
        let anchors = Set(operating.split(separator: "\n").filter { $0.hasPrefix("#") }.map { Self.anchor(String($0)) })
        for rule in rules {
            #expect(["critical", "warning"].contains(rule.labels["severity"]), "\(rule.name): severity \(rule.labels["severity"] ?? "missing")")
            #expect(rule.annotations["summary"]?.isEmpty == false, "\(rule.name) has no summary")
            #expect(rule.annotations["description"]?.isEmpty == false, "\(rule.name) has no description")
            let runbook = rule.annotations["runbook"] ?? ""
            #expect(runbook.hasPrefix("docs/OPERATING.md#") && anchors.contains(String(runbook.drop { $0 != "#" }.dropFirst())),
                    "\(rule.name): runbook \"\(runbook)\" is not a heading of docs/OPERATING.md")
        }
    }

    /// A real Prometheus, with the shipped prometheus.yml (scrape and evaluation every second, the
    /// test daemons' ports) and the shipped rules file unchanged, scrapes a relay and a reconciler:
    /// a poison event fires OutboxDeadLettersRising for its destination, a reconciler alert fires
    /// OutboxReconcilerAlertFiring, every rule evaluates without error, the not-scraped alerts stay
    /// silent while both daemons answer, and a stopped reconciler is noticed under its job's name.
    @Test func aPoisonEventFiresTheDeadLettersAlertInAPrometheusScrapingBothDaemons() async throws {
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let relay = try DaemonProcess.relay(databaseURL: url)
            let reconciler = try DaemonProcess.reconciler(databaseURL: url)
            try await relay.waitUntilReady()
            try await reconciler.waitUntilReady()
            let prometheus = try await PrometheusServer(
                configuration: try Self.shippedScrapeConfiguration(relayPort: relay.port, reconcilerPort: reconciler.port))
            // Both scraped (the dead-letter counter seen at 0) before anything goes wrong.
            try await eventually("Prometheus scraping both daemons", timeout: .seconds(30)) {
                try await prometheus.targetHealth() == ["outbox-relay": "up", "outbox-reconciler": "up"]
            }

            // An xadd to a key that holds a string (WRONGTYPE: dead-lettered at once), and a row
            // whose embedding never came (the reconciler alerts on it: unembedded).
            let poisoned = "stream:" + TestEnvironment.uniqueName("ops_poison")
            let redis = try await TestEnvironment.redis()
            try await redis.command("SET", poisoned, "a string, not a stream")
            try await OutboxWriter.enqueue(.redisXAdd(stream: poisoned, fields: ["n": "1"], key: "poison"), on: db)
            try await db.query("""
                INSERT INTO extractions (source_id, content, created_at) VALUES ('ops', 'never embedded', now() - interval '1 hour')
                """)

            try await eventually("OutboxDeadLettersRising firing for redis", timeout: .seconds(60)) {
                try await prometheus.alerts().contains { $0.name == "OutboxDeadLettersRising" && $0.state == "firing" && $0.labels["destination"] == "redis" }
            }
            try await eventually("OutboxReconcilerAlertFiring firing for unembedded", timeout: .seconds(60)) {
                try await prometheus.alerts().contains {
                    $0.name == "OutboxReconcilerAlertFiring" && $0.state == "firing" && $0.labels["category"] == "unembedded"
                }
            }
            let alerts = try await prometheus.alerts()
            #expect(alerts.filter { $0.name == "OutboxDeadLettersRising" }.map { $0.labels["destination"] } == ["redis"], "\(alerts)")
            #expect(!alerts.contains { $0.name.hasSuffix("NotScraped") }, "\(alerts)")
            for rule in try await prometheus.rules() {
                #expect(rule.health == "ok", "\(rule.name): \(rule.health) \(rule.lastError)")
            }

            await reconciler.stop()
            try await eventually("OutboxReconcilerNotScraped pending for the stopped reconciler", timeout: .seconds(30)) {
                try await prometheus.alerts().contains {
                    $0.name == "OutboxReconcilerNotScraped" && $0.labels["instance"] == "127.0.0.1:\(reconciler.port)"
                }
            }
            #expect(try await !prometheus.alerts().contains { $0.name == "OutboxRelayNotScraped" })
            await relay.stop()
            try await redis.command("DEL", poisoned)
        }
    }

    /// Every query of the shipped dashboard names only metrics that a relay and a reconciler export,
    /// read from their /metrics once a delivery, a dead letter, a reconciler alert and a failed scan
    /// (a second reconciler, Postgres unreachable) have made every metric appear; every panel has a
    /// query; and Prometheus parses every query.
    @Test func everyDashboardQueryUsesOnlyMetricsTheDaemonsExport() async throws {
        #expect(Self.metricNames(in: #"histogram_quantile(0.99, sum by (destination, le) (rate(a_bucket{destination="x"}[5m]))) / on (job) b"#)
            == ["a_bucket", "b"])
        let dashboard = try JSONValue.parse(
            String(contentsOf: Self.ops.appendingPathComponent("grafana/outbox-dashboard.json"), encoding: .utf8))
        #expect((dashboard["schemaVersion"]?.numberValue ?? 0) >= 36)
        let datasource = dashboard["templating"]?["list"]?.arrayValue?.first { $0["name"] == "datasource" }
        #expect(datasource?["type"] == "datasource" && datasource?["query"] == "prometheus", "no ${datasource} Prometheus variable")
        let panels = (dashboard["panels"]?.arrayValue ?? []).flatMap { [$0] + ($0["panels"]?.arrayValue ?? []) }.filter { $0["type"] != "row" }
        #expect(panels.count >= 10)
        var queries: [(panel: String, expr: String)] = []
        for panel in panels {
            let title = panel["title"]?.stringValue ?? "untitled"
            let targets = panel["targets"]?.arrayValue ?? []
            #expect(!targets.isEmpty, "panel \(title) has no target")
            #expect(panel["datasource"]?["uid"] == "${datasource}", "panel \(title) does not use ${datasource}")
            queries += targets.map { (title, $0["expr"]?.stringValue ?? "") }
        }

        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let poisoned = "stream:" + TestEnvironment.uniqueName("ops_poison"), delivered = poisoned + ":ok"
            let redis = try await TestEnvironment.redis()
            try await redis.command("SET", poisoned, "a string, not a stream")
            try await OutboxWriter.enqueue(.redisXAdd(stream: poisoned, fields: ["n": "1"], key: "poison"), on: db)
            try await OutboxWriter.enqueue(.redisXAdd(stream: delivered, fields: ["n": "1"], key: "fine"), on: db)
            try await db.query("""
                INSERT INTO extractions (source_id, content, created_at) VALUES ('ops', 'never embedded', now() - interval '1 hour')
                """)
            let relay = try DaemonProcess.relay(databaseURL: url)
            let reconciler = try DaemonProcess.reconciler(databaseURL: url)
            let failing = try DaemonProcess.reconciler(databaseURL: "postgresql://outbox@127.0.0.1:\(try freePort())/outbox")
            try await eventually("a delivery, a dead letter, a reconciler alert and a failed scan", timeout: .seconds(60)) {
                let figures = [
                    await relay.metric("outbox_events_delivered_total"), await relay.metric("outbox_events_dead_lettered_total"),
                    await reconciler.metric("reconciler_alerts_total"), await failing.metric("reconciler_scan_errors_total"),
                ]
                return figures.allSatisfy { $0 > 0 }
            }
            // Sample names, so a histogram counts by its _bucket, _sum and _count series (its bare
            // name has no samples: a query on it would draw nothing).
            var exported = Set<String>()
            for daemon in [relay, reconciler, failing] {
                let metrics = try #require(await daemon.get("/metrics")?.body)
                exported.formUnion(metrics.split(separator: "\n").filter { !$0.hasPrefix("#") }
                    .map { String($0.prefix { $0 != "{" && $0 != " " }) })
            }
            for (panel, expr) in queries {
                let names = Self.metricNames(in: expr)
                #expect(!names.isEmpty, "panel \(panel): no metric in \(expr)")
                #expect(names.isSubset(of: exported), "panel \(panel) queries \(names.subtracting(exported).sorted()), which no daemon exports")
            }
            for daemon in [relay, reconciler, failing] { await daemon.stop() }
            try await redis.command("DEL", poisoned, delivered)
        }

        let prometheus = try await PrometheusServer(configuration: "global: {}\n")
        for (panel, expr) in queries {
            let grafanaFree = expr.replacingOccurrences(of: "$__rate_interval", with: "1m")
            let answer = try await prometheus.api("query?query=" + Self.percentEncoded(grafanaFree))
            #expect(answer["status"] == "success", "panel \(panel): Prometheus refuses \(expr): \(answer["error"] ?? "")")
        }
    }

    static let systemdAnalyze = try? tool("systemd-analyze", package: "systemd")

    /// The units pass `systemd-analyze verify` (an unknown key or a bad value is printed, and any
    /// output fails the test) and `systemd-analyze security` rates each service's exposure at most
    /// 2.0 ("OK"). The template outbox-relay@.service is verified as a file and as an instance
    /// (outbox-relay@orders.service, made from the template as systemd makes it), and its
    /// [Service] section is outbox-relay.service's plus the instance's environment file: the same
    /// command, restart policy and hardening. verify checks that ExecStart's binary exists, so it
    /// checks copies in a temporary folder whose /usr/local/bin/ is this build's folder; nothing
    /// else is changed. Without systemd-analyze this is skipped, except in CI (`CI` set), where it fails.
    @Test(.enabled(if: systemdAnalyze != nil || ProcessInfo.processInfo.environment["CI"] != nil, "systemd-analyze is not installed"))
    func systemdUnitsPassVerifyAndAreHardened() async throws {
        let analyze = try #require(Self.systemdAnalyze, "systemd-analyze not found: CI must check the units (apt-get install systemd)")
        let shipped = Self.ops.appendingPathComponent("systemd")
        let units = try FileManager.default.contentsOfDirectory(atPath: shipped.path).sorted()
        #expect(units == [
            "outbox-reconcile.service", "outbox-reconcile.timer", "outbox-reconciler.service", "outbox-relay.service", "outbox-relay@.service",
        ])
        let copies = FileManager.default.temporaryDirectory.appendingPathComponent(TestEnvironment.uniqueName("units"))
        try FileManager.default.createDirectory(at: copies, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: copies) }
        let binaries = try TestEnvironment.executable("outbox-relay").deletingLastPathComponent().path + "/"
        for unit in units {
            let text = try String(contentsOf: shipped.appendingPathComponent(unit), encoding: .utf8)
            if unit.hasSuffix(".service") {
                #expect(text.contains("ExecStart=/usr/local/bin/outbox-"), "\(unit)")
                #expect(text.contains("EnvironmentFile=/etc/outbox/outbox.env"), "\(unit): secrets come from the environment file")
                #expect(!text.contains("\nEnvironment="), "\(unit): no settings (secrets least of all) in the unit")
            }
            try text.replacingOccurrences(of: "/usr/local/bin/", with: binaries)
                .write(to: copies.appendingPathComponent(unit), atomically: true, encoding: .utf8)
        }
        // An instance has no file of its own: systemd-analyze loads it from the template beside it.
        let instance = copies.appendingPathComponent("outbox-relay@orders.service").path
        let paths = units.map { copies.appendingPathComponent($0).path }
        let verify = try await runProcess(analyze, ["verify", "--man=no"] + paths + [instance])
        #expect(verify.status == 0 && (verify.stdout + verify.stderr).isEmpty, "systemd-analyze verify:\n\(verify.stdout)\(verify.stderr)")
        for path in paths.map({ $0.hasSuffix("@.service") ? instance : $0 }) where path.hasSuffix(".service") {
            let security = try await runProcess(analyze, ["security", "--offline=true", "--threshold=20", path])
            #expect(security.status == 0, "\(path):\n\(security.stdout.split(separator: "\n").suffix(20).joined(separator: "\n"))\(security.stderr)")
        }

        // One relay per database: the template is the relay's unit plus the instance's own
        // environment file (after the shared one, so its settings win), required to be there.
        let relayUnit = try String(contentsOf: shipped.appendingPathComponent("outbox-relay.service"), encoding: .utf8)
        let template = try String(contentsOf: shipped.appendingPathComponent("outbox-relay@.service"), encoding: .utf8)
        let instanceFile = "EnvironmentFile=/etc/outbox/relay-%i.env"
        let service = Self.section("Service", of: template)
        #expect(service.filter { $0 != instanceFile } == Self.section("Service", of: relayUnit),
                "outbox-relay@.service's [Service] must be outbox-relay.service's plus \(instanceFile)")
        #expect((service.firstIndex(of: instanceFile) ?? -1) > (service.firstIndex(of: "EnvironmentFile=/etc/outbox/outbox.env") ?? .max),
                "\(instanceFile) must come after the shared EnvironmentFile, so the database's settings win")
        #expect(Self.section("Unit", of: template).contains("AssertFileNotEmpty=/etc/outbox/relay-%i.env"))
        #expect(Self.section("Install", of: template) == Self.section("Install", of: relayUnit))

        // SIGTERM gives the relay relay.shutdown_grace to finish its batch: systemd must wait longer.
        let config = try String(contentsOf: TestEnvironment.repositoryRoot.appendingPathComponent("config/outbox.yaml"), encoding: .utf8)
        let grace = try #require(Self.seconds(after: "shutdown_grace: ", in: config))
        for unit in [relayUnit, template] {
            let stopTimeout = try #require(Self.seconds(after: "TimeoutStopSec=", in: unit))
            #expect(stopTimeout > grace, "TimeoutStopSec=\(stopTimeout)s must exceed relay.shutdown_grace (\(grace)s)")
        }
    }

    /// The settings of a unit file's `[name]` section, in order, without comments and blank lines.
    static func section(_ name: String, of unit: String) -> [String] {
        var inside = false, lines: [String] = []
        for line in unit.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if line.hasPrefix("[") { inside = line == "[\(name)]"; continue }
            if inside, !line.isEmpty, !line.hasPrefix("#") { lines.append(line) }
        }
        return lines
    }

    // MARK: - Helpers

    /// An executable on PATH, or a failure that says what to install.
    static func tool(_ name: String, package: String) throws -> URL {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        where FileManager.default.isExecutableFile(atPath: directory + "/" + name) {
            return URL(fileURLWithPath: directory + "/" + name)
        }
        throw HarnessError("\(name) not found: apt-get install \(package)")
    }

    /// ops/prometheus/prometheus.yml as the tests run it: scrape and evaluate every second, the test
    /// daemons' ports, the shipped rules file by its absolute path. Each change applies exactly once.
    static func shippedScrapeConfiguration(relayPort: Int, reconcilerPort: Int) throws -> String {
        var text = try String(contentsOf: ops.appendingPathComponent("prometheus/prometheus.yml"), encoding: .utf8)
        for (shipped, tested) in [
            ("scrape_interval: 15s", "scrape_interval: 1s"), ("evaluation_interval: 15s", "evaluation_interval: 1s"),
            ("\"127.0.0.1:8470\"", "\"127.0.0.1:\(relayPort)\""), ("\"127.0.0.1:8471\"", "\"127.0.0.1:\(reconcilerPort)\""),
            ("- outbox-alerts.yml", "- \(rulesFile.path)"),
        ] {
            guard text.components(separatedBy: shipped).count == 2 else {
                throw HarnessError("ops/prometheus/prometheus.yml should contain \(shipped) once; the test rewrites it")
            }
            text = text.replacingOccurrences(of: shipped, with: tested)
        }
        return text
    }

    /// The metric names a PromQL expression selects: identifiers outside strings, label matchers,
    /// ranges and grouping clauses that are neither a function call nor a keyword.
    static func metricNames(in expr: String) -> Set<String> {
        var text = expr
        for pattern in [#""[^"]*""#, #"\{[^}]*\}"#, #"\[[^\]]*\]"#, #"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"#, #"\$\w+"#] {
            text = text.replacingOccurrences(of: pattern, with: " ", options: .regularExpression)
        }
        let keywords: Set<String> = ["and", "or", "unless", "offset", "bool"]
        return Set(matches(#"(?<![\w:.])[a-zA-Z_:][\w:]*(?![\w:])(?!\s*\()"#, in: text).map { $0[0] }.filter { !keywords.contains($0) })
    }

    /// The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens.
    static func anchor(_ heading: String) -> String {
        String(heading.drop { $0 == "#" }.trimmingCharacters(in: .whitespaces).lowercased()
            .filter { $0.isLetter || $0.isNumber || $0 == " " || $0 == "-" || $0 == "_" }.map { $0 == " " ? "-" : $0 })
    }

    static func percentEncoded(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")) ?? text
    }

    /// The number of seconds in `<key><number>s` in `text`.
    static func seconds(after key: String, in text: String) -> Int? {
        matches(NSRegularExpression.escapedPattern(for: key) + #"(\d+)s\b"#, in: text).first.flatMap { Int($0[1]) }
    }

    /// Each match of `pattern` in `text`: the whole match, then its groups.
    static func matches(_ pattern: String, in text: String) -> [[String]] {
        let regex = try! NSRegularExpression(pattern: pattern)
        return regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).map { match in
            (0..<match.numberOfRanges).map { Range(match.range(at: $0), in: text).map { String(text[$0]) } ?? "" }
        }
    }
}

/// Debian's `prometheus` server as a child of the test: its configuration and data in a temporary
/// folder, listening on a free loopback port (never the system's :9090); killed, and its folder
/// removed, when the test lets go of it.
///
/// The use of `@unchecked Sendable` is safe for this type because: the `Process` is only started,
/// signalled and read from the task that owns this object.
final class PrometheusServer: @unchecked Sendable {
    struct Rule { let name: String, health: String, lastError: String, labels: [String: String], annotations: [String: String] }
    struct Alert { let name: String, state: String, labels: [String: String] }

    let process = Process()
    let port: Int
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent(TestEnvironment.uniqueName("prometheus"))
    let http = HTTPConnection(logger: TestEnvironment.logger)

    init(configuration: String) async throws {
        port = try freePort()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let configFile = folder.appendingPathComponent("prometheus.yml"), logFile = folder.appendingPathComponent("prometheus.log")
        try configuration.write(to: configFile, atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
        process.executableURL = try OpsTests.tool("prometheus", package: "prometheus")
        process.arguments = [
            "--config.file=\(configFile.path)", "--storage.tsdb.path=\(folder.appendingPathComponent("data").path)",
            "--web.listen-address=127.0.0.1:\(port)",
        ]
        let log = try FileHandle(forWritingTo: logFile)
        process.standardOutput = log
        process.standardError = log
        try process.run()
        let deadline = ContinuousClock.now + .seconds(30)
        while (try? await http.perform(HTTPRequest(method: .GET, url: "http://127.0.0.1:\(port)/-/ready", timeout: .seconds(2))))?.status != 200 {
            guard process.isRunning, ContinuousClock.now < deadline else {
                throw HarnessError("prometheus did not become ready; its log ends:\n\(self.log.suffix(3000))")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: folder)
    }

    var log: String { (try? String(contentsOf: folder.appendingPathComponent("prometheus.log"), encoding: .utf8)) ?? "" }

    /// GET /api/v1/`path`: the answer, whose `status` is `success` or `error`.
    func api(_ path: String) async throws -> JSONValue {
        try JSONValue.parse(try await http.perform(HTTPRequest(method: .GET, url: "http://127.0.0.1:\(port)/api/v1/\(path)", timeout: .seconds(5))).bodyText)
    }

    /// Each scrape job's health (`up`, `down`, `unknown`).
    func targetHealth() async throws -> [String: String] {
        let targets = try await api("targets")["data"]?["activeTargets"]?.arrayValue ?? []
        return Dictionary(targets.map { (strings($0["labels"])["job"] ?? "", $0["health"]?.stringValue ?? "") }) { $1 }
    }

    /// Alerts pending or firing.
    func alerts() async throws -> [Alert] {
        (try await api("alerts")["data"]?["alerts"]?.arrayValue ?? []).map {
            let labels = strings($0["labels"])
            return Alert(name: labels["alertname"] ?? "", state: $0["state"]?.stringValue ?? "", labels: labels)
        }
    }

    /// The alerting rules loaded.
    func rules() async throws -> [Rule] {
        (try await api("rules")["data"]?["groups"]?.arrayValue ?? []).flatMap { $0["rules"]?.arrayValue ?? [] }.map {
            Rule(name: $0["name"]?.stringValue ?? "", health: $0["health"]?.stringValue ?? "", lastError: $0["lastError"]?.stringValue ?? "",
                 labels: strings($0["labels"]), annotations: strings($0["annotations"]))
        }
    }

    private func strings(_ value: JSONValue?) -> [String: String] {
        guard case .object(let object)? = value else { return [:] }
        return object.compactMapValues(\.stringValue)
    }
}
