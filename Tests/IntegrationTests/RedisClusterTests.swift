import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// The relay against a real Redis Cluster: 3 masters + 3 replicas of Debian's redis-server, started
/// by `scripts/services up redis-cluster` (`make test` and CI start it). The tests change the
/// cluster's shape (failovers, a killed master, moved slots), so they run one at a time, and each
/// leaves it healthy (`scripts/services up redis-cluster` restarts a killed node and waits until
/// every node agrees).
@Suite(.serialized) struct RedisClusterTests {
    /// 10,000 events over 250 keys into 64 streams, cache keys and cross-slot deletes, written
    /// while the cluster fails over (`CLUSTER FAILOVER`), loses a master to `kill -9` until its
    /// replica takes over, and moves 1,000 slots between masters (`redis-cli --cluster reshard`).
    /// Every event is applied once, each key's in order, none is dead-lettered.
    @Test func tenThousandEventsLandOnceAndInKeyOrderThroughFailoversAndAReshard() async throws {
        let cluster = try await LocalRedisCluster()
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let relay = try DaemonProcess.relay(databaseURL: url, environment: [
                "OUTBOX_REDIS_URL": cluster.url, "OUTBOX_REDIS_CLUSTER": "true",
                // Replication is asynchronous: a master killed with -9 may take writes its replica
                // never saw. With WAIT, an event counts as delivered only once a replica holds it.
                "OUTBOX_REDIS_WAIT_REPLICAS": "1", "OUTBOX_REDIS_WAIT_TIMEOUT": "500ms",
                "OUTBOX_RELAY_BACKOFF_INITIAL": "100ms", "OUTBOX_RELAY_BACKOFF_MAX": "2s",
            ])
            try await relay.waitUntilReady()
            let workload = ClusterWorkload(keys: 250, eventsPerKey: 40)
            var written = 0
            for round in 0..<10 {
                written += try await workload.write(round: round, of: 10, db)
                switch round {
                case 2: try await cluster.failover()
                case 4: try await cluster.killMasterAndRestartIt()
                case 6: try await cluster.reshard(slots: 1000)
                default: try await Task.sleep(for: .milliseconds(300))
                }
            }
            #expect(written == 10_000)
            try await eventually("the backlog to drain", timeout: .seconds(180)) { try await db.count("outbox.events") == 0 }
            #expect(try await db.count("outbox.dead_letters") == 0)
            let problems = try await workload.verify(on: cluster)
            #expect(problems.isEmpty, "\(problems.count) problems, first: \(problems.prefix(10))")
            // The relay learned the new slot map (a MOVED after the reshard, or a refresh after the
            // killed master's connection broke) instead of retrying at the old node.
            #expect(relay.log.components(separatedBy: "Redis Cluster slot map read").count > 2, "\(relay.log.suffix(3000))")
            try await workload.clean(on: cluster)
            await relay.stop()
        }
    }

    /// With `redis.cluster` unset, a relay pointed at a cluster node stops at start with an error
    /// naming the setting, instead of failing every event with `Script attempted to access a non
    /// local key` forever.
    @Test func aRelayNotToldItIsAClusterStopsNamingTheSetting() async throws {
        let cluster = try await LocalRedisCluster()
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, _ in
            let relay = try DaemonProcess.relay(databaseURL: url, environment: ["OUTBOX_REDIS_URL": cluster.url])
            #expect(await relay.waitForExit(timeout: .seconds(20)) == 2)
            #expect(relay.log.contains("config: redis.cluster: redis.url names a Redis Cluster node (cluster_enabled:1): set redis.cluster: true"), "\(relay.log)")
            #expect(!relay.log.contains(cluster.password))
        }
    }

    /// `redis.wait_replicas`: a single Redis without replicas never acknowledges, so its events are
    /// retried with a reason saying so (and land as soon as a replica would have acknowledged:
    /// on the cluster, whose masters each have one).
    @Test func waitReplicasHoldsEventsUntilAReplicaAcknowledgesThem() async throws {
        let cluster = try await LocalRedisCluster()
        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            let stream = "stream:" + TestEnvironment.uniqueName("wait")
            let wait = ["OUTBOX_REDIS_WAIT_REPLICAS": "1", "OUTBOX_REDIS_WAIT_TIMEOUT": "100ms"]
            let single = try DaemonProcess.relay(databaseURL: url, environment: wait)
            try await single.waitUntilReady()
            try await db.query(
                "SELECT outbox.enqueue('redis', 'xadd', 'k', jsonb_build_object('stream', $1::text, 'fields', jsonb_build_object('n', '1')))",
                [.text(stream)])
            try await eventually("a retry naming the replicas", timeout: .seconds(20)) {
                let error = try await db.query("SELECT last_error FROM outbox.events").first?.decode("last_error", as: String?.self) ?? nil
                return error?.contains("0 of 1 replicas acknowledged") == true
            }
            await single.stop()

            let clustered = try DaemonProcess.relay(
                databaseURL: url, environment: wait.merging(["OUTBOX_REDIS_URL": cluster.url, "OUTBOX_REDIS_CLUSTER": "true"]) { $1 })
            try await eventually("delivery through the cluster", timeout: .seconds(30)) { try await db.count("outbox.events") == 0 }
            // The single Redis got the entry too (WAIT came after it): the event is in both, once each.
            try await cluster.cluster.refresh()
            let node = try await cluster.connection(for: stream)
            #expect(try await node.command("XLEN", stream).integer == 1)
            try await node.command("DEL", stream)
            try await TestEnvironment.redis().command("DEL", stream)
            await clustered.stop()
        }
    }

    /// `outbox-relay check` reports the cluster's masters and slots.
    @Test func checkReportsTheCluster() async throws {
        let cluster = try await LocalRedisCluster()
        let result = try await runProcess(
            try TestEnvironment.executable("outbox-relay"), ["check", "--config", "config/outbox.yaml"],
            environment: ["OUTBOX_REDIS_URL": cluster.url, "OUTBOX_REDIS_CLUSTER": "true"])
        #expect(result.stdout.contains("Redis Cluster of 3 masters, all 16384 slots served"), "\(result.stdout)\(result.stderr)")
        #expect(!(result.stdout + result.stderr).contains(cluster.password))
    }
}

/// The events of ``RedisClusterTests``: per key, in a fixed pattern, `xadd`s to one of 64 streams,
/// `set`s of two keys of its own and a `del` of both (which live in different slots, mostly), so a
/// key's events keep changing slot. ``verify(on:)`` replays the pattern and compares.
struct ClusterWorkload {
    let keys: Int
    let eventsPerKey: Int
    let prefix = TestEnvironment.uniqueName("cluster")

    func stream(_ key: Int) -> String { "\(prefix):s\(key % 64)" }
    func cache(_ key: Int) -> String { "\(prefix):cache:\(key)" }
    func aux(_ key: Int) -> String { "\(prefix):aux:\(key)" }

    enum Operation { case xadd(Int), setCache(String), setAux(String), del }

    func operation(_ n: Int) -> Operation {
        switch n % 5 {
        case 2: .setCache("v\(n)")
        case 3: .setAux("a\(n)")
        case 4: .del
        default: .xadd(n)
        }
    }

    /// Writes events `round * eventsPerKey / rounds ..<` of every key, one transaction per key.
    func write(round: Int, of rounds: Int, _ db: PostgresConnection) async throws -> Int {
        let perRound = eventsPerKey / rounds
        var written = 0
        for key in 0..<keys {
            var operations: [String] = [], payloads: [String] = []
            for n in (round * perRound)..<((round + 1) * perRound) {
                let payload: JSONValue
                switch operation(n) {
                case .xadd(let seq):
                    operations.append("xadd")
                    payload = ["stream": .string(stream(key)), "fields": ["k": .string("\(key)"), "seq": .string("\(seq)")]]
                case .setCache(let value):
                    operations.append("set")
                    payload = ["key": .string(cache(key)), "value": .string(value)]
                case .setAux(let value):
                    operations.append("set")
                    payload = ["key": .string(aux(key)), "value": .string(value)]
                case .del:
                    operations.append("del")
                    payload = ["keys": [.string(cache(key)), .string(aux(key))]]
                }
                payloads.append(payload.jsonText)
            }
            try await db.query(
                """
                SELECT outbox.enqueue('redis', op, $1, payload::jsonb)
                FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS e(op, payload, n) ORDER BY n
                """, [.text("key-\(key)"), .textArray(operations), .textArray(payloads)])
            written += operations.count
        }
        return written
    }

    /// What differs from applying every key's events once, in order.
    func verify(on cluster: LocalRedisCluster) async throws -> [String] {
        try await cluster.cluster.refresh()
        var problems: [String] = []
        var seen: [Int: [Int]] = [:]
        for s in 0..<min(64, keys) {
            let name = "\(prefix):s\(s)"
            for entry in try await cluster.connection(for: name).command("XRANGE", name, "-", "+").array ?? [] {
                let fields = entry.array?[1].array?.compactMap(\.string) ?? []
                var map: [String: String] = [:]
                for i in stride(from: 0, to: fields.count - 1, by: 2) { map[fields[i]] = fields[i + 1] }
                guard let key = map["k"].flatMap(Int.init), let seq = map["seq"].flatMap(Int.init) else {
                    problems.append("\(name): an entry without k or seq: \(map)")
                    continue
                }
                seen[key, default: []].append(seq)
            }
        }
        for key in 0..<keys {
            var expectedSeqs: [Int] = []
            var cacheValue: String?, auxValue: String?
            for n in 0..<eventsPerKey {
                switch operation(n) {
                case .xadd(let seq): expectedSeqs.append(seq)
                case .setCache(let value): cacheValue = value
                case .setAux(let value): auxValue = value
                case .del: (cacheValue, auxValue) = (nil, nil)
                }
            }
            if seen[key] ?? [] != expectedSeqs { problems.append("key-\(key): stream entries \(seen[key] ?? []), expected \(expectedSeqs)") }
            for (name, expected) in [(cache(key), cacheValue), (aux(key), auxValue)] {
                let actual = try await cluster.connection(for: name).command("GET", name).string
                if actual != expected { problems.append("\(name) is \(actual ?? "absent"), expected \(expected ?? "absent")") }
            }
        }
        return problems
    }

    func clean(on cluster: LocalRedisCluster) async throws {
        try await cluster.cluster.refresh()
        for s in 0..<64 { try await cluster.connection(for: "\(prefix):s\(s)").command("DEL", "\(prefix):s\(s)") }
        for key in 0..<keys {
            for name in [cache(key), aux(key)] { try await cluster.connection(for: name).command("DEL", name) }
        }
    }
}

/// The cluster `scripts/services up redis-cluster` runs (`OUTBOX_REDIS_CLUSTER_URL`), and what the
/// tests do to it.
struct LocalRedisCluster {
    let url: String
    let password: String
    let cluster: RedisCluster

    /// Every node's address, masters and replicas (any of them answers `CLUSTER NODES`).
    let addresses: [RedisNodeAddress]

    init() async throws {
        url = try TestEnvironment.variable("OUTBOX_REDIS_CLUSTER_URL")
        password = URLParts(url)?.password ?? ""
        var configuration = RedisConfiguration(url: url)
        configuration.cluster = true
        cluster = try await RedisCluster.connect(configuration, logger: TestEnvironment.logger)
        let text = try await cluster.seedConnection().command("CLUSTER", "NODES").string ?? ""
        addresses = text.split(separator: "\n").compactMap { RedisNodeAddress($0.split(separator: " ")[1].split(separator: "@")[0]) }
    }

    /// The master serving `key` as last read (``RedisCluster/refresh()`` after changing the cluster;
    /// a read per key kept the cooperative pool busy for seconds in a debug build).
    func connection(for key: String) async throws -> RedisConnection {
        guard let master = await cluster.master(of: RedisSlot.of(key)) else {
            throw RedisError(code: .server, message: "no master serves \(key)")
        }
        return try await cluster.connection(to: master)
    }

    struct Node {
        let id: String
        let address: RedisNodeAddress
        let isMaster: Bool
        let masterID: String?
        let slots: Int
    }

    /// `CLUSTER NODES` as the first node that answers sees it.
    func nodes() async throws -> [Node] {
        var answer: String?
        for address in addresses where answer == nil {
            answer = try? await cluster.connection(to: address).command("CLUSTER", "NODES").string
        }
        guard let text = answer else { throw RedisError(code: .connectionFailed, message: "no cluster node answers") }
        return text.split(separator: "\n").map { line in
            let f = line.split(separator: " ").map(String.init)
            let address = RedisNodeAddress(f[1].split(separator: "@")[0])!
            let slots = f.dropFirst(8).filter { !$0.hasPrefix("[") }.reduce(0) { total, range in
                let bounds = range.split(separator: "-").compactMap { Int($0) }
                return total + (bounds.count == 2 ? bounds[1] - bounds[0] + 1 : 1)
            }
            return Node(id: f[0], address: address, isMaster: f[2].contains("master"), masterID: f[3] == "-" ? nil : f[3], slots: slots)
        }
    }

    /// A replica takes over from its master (`CLUSTER FAILOVER`, the graceful kind).
    func failover() async throws {
        let replica = try await nodes().first { !$0.isMaster }!
        try await cluster.connection(to: replica.address).command("CLUSTER", "FAILOVER")
        try await waitUntil("\(replica.address) to be a master") { try await nodes().first { $0.id == replica.id }?.isMaster == true }
    }

    /// `kill -9` of a master; once its replica is promoted, `scripts/services up redis-cluster`
    /// starts it again (it rejoins as a replica) and waits until the cluster is whole.
    func killMasterAndRestartIt() async throws {
        let nodes = try await nodes()
        let master = nodes.first { master in master.isMaster && master.slots > 0 && nodes.contains { $0.masterID == master.id } }!
        let replica = nodes.first { $0.masterID == master.id }!
        let info = try await cluster.connection(to: master.address).command("INFO", "server").string ?? ""
        let pid = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("process_id:") }.flatMap { Int32($0.dropFirst(11)) }!
        kill(pid, SIGKILL)
        try await waitUntil("\(replica.address) to replace \(master.address)") {
            try await self.nodes().contains { $0.id == replica.id && $0.isMaster && $0.slots == master.slots }
        }
        try await services("up", "redis-cluster")
    }

    /// Moves `slots` slots from the master with most to another (`redis-cli --cluster reshard`).
    func reshard(slots: Int) async throws {
        let masters = try await nodes().filter { $0.isMaster && $0.slots > 0 }.sorted { $0.slots > $1.slots }
        let result = try await runProcess(
            URL(fileURLWithPath: "/usr/bin/redis-cli"),
            ["--cluster", "reshard", masters[0].address.description, "--cluster-from", masters[0].id, "--cluster-to", masters[1].id,
             "--cluster-slots", String(slots), "--cluster-yes"],
            environment: ["REDISCLI_AUTH": password])
        #expect(result.status == 0, "reshard: \(result.stdout.suffix(2000)) \(result.stderr)")
        try await cluster.refresh()
    }

    func services(_ arguments: String...) async throws {
        // Through a shell that closes every descriptor but 0-2 first: Foundation's Process learns
        // that its child ended when a socket the child inherited closes, and the Redis node that
        // scripts/services starts (a daemon) would otherwise inherit it and keep it open for ever.
        let closeInherited = #"for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$@""#
        let result = try await runProcess(
            URL(fileURLWithPath: "/bin/bash"),
            ["-c", closeInherited, "services", TestEnvironment.repositoryRoot.appendingPathComponent("scripts/services").path] + arguments)
        #expect(result.status == 0, "scripts/services \(arguments.joined(separator: " ")): \(result.stdout) \(result.stderr)")
    }

    private func waitUntil(_ what: String, _ condition: () async throws -> Bool) async throws {
        try await eventually(what, timeout: .seconds(30)) { (try? await condition()) ?? false }
    }
}
