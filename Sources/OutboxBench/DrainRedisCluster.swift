import Foundation
import OutboxCore

extension Bench {
    /// drain-redis-cluster: the drain-redis backlog, each key's events into one of 64 streams (so
    /// the streams spread over the cluster's slots), drained by the relay from the single Redis,
    /// from the Redis Cluster of `scripts/services up redis-cluster`, and from that cluster with
    /// `redis.wait_replicas: 1`; alternated, `rounds` times. Redis CPU is the sum over every node
    /// the relay writes to (the cluster's replicas included: they apply the same writes).
    func drainRedisCluster(events: Int, keys: Int, rounds: Int) async throws -> [(String, String)] {
        guard let clusterURL = ProcessInfo.processInfo.environment["OUTBOX_REDIS_CLUSTER_URL"] else {
            throw BenchError("drain-redis-cluster needs the Redis Cluster: scripts/services up redis-cluster; eval \"$(scripts/services env)\"")
        }
        var clusterConfiguration = RedisConfiguration(url: clusterURL)
        clusterConfiguration.cluster = true
        let cluster = try await RedisCluster.connect(clusterConfiguration, logger: logger)
        let single = try await RedisConnection.connect(config.redis, logger: logger)
        var nodes: [RedisConnection] = []
        let text = try await cluster.seedConnection().command("CLUSTER", "NODES").string ?? ""
        for line in text.split(separator: "\n") {
            guard let address = RedisNodeAddress(line.split(separator: " ")[1].split(separator: "@")[0]) else { continue }
            nodes.append(try await cluster.connection(to: address))
        }
        let streams = 64
        let variants: [(name: String, extra: [String: String], redis: RedisConnection, nodes: [RedisConnection])] = [
            ("single Redis", [:], single, [single]),
            ("Redis Cluster", ["OUTBOX_REDIS_URL": clusterURL, "OUTBOX_REDIS_CLUSTER": "true"], try await cluster.seedConnection(), nodes),
            ("Redis Cluster, wait_replicas 1", [
                "OUTBOX_REDIS_URL": clusterURL, "OUTBOX_REDIS_CLUSTER": "true", "OUTBOX_REDIS_WAIT_REPLICAS": "1",
            ], try await cluster.seedConnection(), nodes),
        ]
        var drains = [[RelayDrain]](repeating: [], count: variants.count)
        for round in 0..<rounds {
            for (index, variant) in variants.enumerated() {
                FileHandle.standardError.write(Data("drain-redis-cluster: round \(round + 1) of \(rounds): \(variant.name)\n".utf8))
                let stream = "bench:" + UUID().uuidString.prefix(8)
                drains[index].append(try await drainByRelay(
                    events: events, keys: keys, stream: stream, redis: variant.redis, extra: variant.extra, streams: streams,
                    redisNodes: variant.nodes))
                for s in 0..<streams {
                    let name = "\(stream):\(s)"
                    if index == 0 {
                        try await single.command("DEL", name)
                    } else if let master = await cluster.master(of: RedisSlot.of(name)) {
                        try await cluster.connection(to: master).command("DEL", name)
                    }
                }
            }
        }
        let median = { (values: [Double]) in values.sorted()[values.count / 2] }
        var figures: [(String, String)] = [("rounds (each variant, alternated)", "\(rounds)")]
        for (variant, runs) in zip(variants, drains) {
            let perEvent = { (cpu: Double) in self.fmt(cpu / Double(events) * 1e6, 1) }
            figures += [
                ("\(variant.name): relay events/s (each round)", runs.map { fmt($0.rate) }.joined(separator: " / ")),
                ("\(variant.name): relay events/s (median)", fmt(median(runs.map(\.rate)))),
                ("\(variant.name): cpu µs/event relay / postgres / redis (medians)",
                 "\(perEvent(median(runs.map(\.cpu.relay)))) / \(perEvent(median(runs.map(\.cpu.postgres)))) / \(perEvent(median(runs.map(\.cpu.redis))))"),
            ]
        }
        return figures
    }
}
