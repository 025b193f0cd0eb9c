import Logging

/// A Redis node's address as the cluster announces it.
public struct RedisNodeAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `host:port` (`[v6]:port` for an IPv6 literal).
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses the `host:port` of a `MOVED`/`ASK` reply or of configuration.
    public init?(_ text: some StringProtocol) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            return nil
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.init(host: host, port: port)
    }
}

/// Redis Cluster's key → slot function: CRC16 (XMODEM) of the key's hash tag, modulo 16384.
public enum RedisSlot {
    public static let count = 16384

    /// The slot of `key`: of the part between the first `{` and the next `}` when that part is
    /// not empty (the hash tag), else of the whole key.
    public static func of(_ key: String) -> Int {
        var key = key
        return key.withUTF8 { of(bytes: $0) }
    }

    static func of(bytes key: UnsafeBufferPointer<UInt8>) -> Int {
        var hashed = key[...]
        if let open = key.firstIndex(of: UInt8(ascii: "{")),
            let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
        {
            hashed = key[(open + 1)..<close]
        }
        var crc: UInt16 = 0
        for byte in hashed { crc = (crc << 8) ^ crcTable[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)] }
        return Int(crc) & (count - 1)
    }

    /// A short hash tag (1–3 letters or digits) whose slot is `slot`: `{tag}` in a key name puts
    /// the key in that slot, so the relay's own keys can share a slot with the user's key they
    /// guard, whatever that key's name (braces in it included).
    public static func tag(for slot: Int) -> String { tags[slot] }

    private static let tags: [String] = {
        // Every slot has a tag of at most 3 of these 62 characters (62³ candidates for 16,384
        // slots): shortest first, in a fixed order, hashed in place (~2 ms, once).
        let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        var tags = [String?](repeating: nil, count: count)
        var found = 0
        var candidate: [UInt8] = []
        func visit(length: Int) {
            if candidate.count == length {
                let slot = candidate.withUnsafeBufferPointer { of(bytes: $0) }
                if tags[slot] == nil {
                    tags[slot] = String(decoding: candidate, as: UTF8.self)
                    found += 1
                }
                return
            }
            for character in alphabet where found < count {
                candidate.append(character)
                visit(length: length)
                candidate.removeLast()
            }
        }
        for length in 1...3 where found < count { visit(length: length) }
        precondition(found == count, "a slot without a 1-3 character tag")
        return tags.map { $0! }
    }()

    private static let crcTable: [UInt16] = (0..<256).map { byte in
        var crc = UInt16(byte) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}

/// A redirection in a Redis Cluster error reply: `MOVED <slot> <host:port>` (the slot lives there
/// now) or `ASK <slot> <host:port>` (this one key is being migrated there: send `ASKING` first).
public struct RedisRedirect: Sendable, Equatable {
    public enum Kind: Sendable { case moved, ask }
    public let kind: Kind
    public let slot: Int
    public let address: RedisNodeAddress

    public init?(errorReply message: String) {
        let parts = message.split(separator: " ")
        guard parts.count == 3, let slot = Int(parts[1]), (0..<RedisSlot.count).contains(slot),
            let address = RedisNodeAddress(parts[2])
        else { return nil }
        switch parts[0] {
        case "MOVED": kind = .moved
        case "ASK": kind = .ask
        default: return nil
        }
        self.slot = slot
        self.address = address
    }
}

/// A Redis Cluster as a client sees it: which node serves each slot, and one connection per node.
///
/// `redis.url` names one node (the seed); `CLUSTER SLOTS` names the rest, each reached with the
/// seed's credentials, timeouts and TLS settings. The map is read at start and again whenever a
/// caller reports it stale (``moved(_:)``, ``refresh()``): after a `MOVED`, a lost connection or
/// `CLUSTERDOWN`. Connections are ``RedisConnection``s: each on its own thread, reconnecting itself.
public actor RedisCluster {
    private let configuration: RedisConfiguration
    private let logger: Logger
    private let seed: RedisNodeAddress
    /// The master serving each slot; nil while no node is known to.
    private var masters: [RedisNodeAddress?] = Array(repeating: nil, count: RedisSlot.count)
    private var connections: [RedisNodeAddress: RedisConnection] = [:]
    private var refreshing: Task<Void, any Error>?

    /// Whether `redis` is a node of a Redis Cluster (`INFO cluster`: `cluster_enabled:1`).
    static func isClusterNode(_ redis: RedisConnection) async throws -> Bool {
        try await redis.command("INFO", "cluster").string?.contains("cluster_enabled:1") ?? false
    }

    /// Why a cluster node cannot be used with `redis.cluster` unset: scripts that touch keys of
    /// other nodes' slots fail there, every time.
    static let unsetProblem =
        "redis.url names a Redis Cluster node (cluster_enabled:1): set redis.cluster: true (OUTBOX_REDIS_CLUSTER=true)"

    /// What `configuration` names: a cluster (with its seed node's connection) when `cluster` is
    /// set, else the one node. Throws ``ConfigurationError`` for `redis.cluster` when an unset
    /// `cluster` names a cluster node (``unsetProblem``).
    public static func open(_ configuration: RedisConfiguration, logger: Logger) async throws
        -> (connection: RedisConnection, cluster: RedisCluster?)
    {
        if configuration.cluster {
            let cluster = try await connect(configuration, logger: logger)
            return (try await cluster.seedConnection(), cluster)
        }
        let connection = try await RedisConnection.connect(configuration, logger: logger)
        if try await isClusterNode(connection) { throw ConfigurationError(key: "redis.cluster", problem: unsetProblem) }
        return (connection, nil)
    }

    /// Connects to the seed node and reads the slot map. Throws when no node answers `CLUSTER
    /// SLOTS`, or when the seed is not a cluster node.
    public static func connect(_ configuration: RedisConfiguration, logger: Logger) async throws -> RedisCluster {
        let endpoint = try configuration.endpoint()
        guard endpoint.database == 0 else {
            throw RedisError(code: .connectionFailed, message: "a Redis Cluster has only database 0; redis.url names database \(endpoint.database)")
        }
        let cluster = RedisCluster(configuration: configuration, seed: RedisNodeAddress(host: endpoint.host, port: Int(endpoint.port)), logger: logger)
        try await cluster.refresh()
        return cluster
    }

    private init(configuration: RedisConfiguration, seed: RedisNodeAddress, logger: Logger) {
        self.configuration = configuration
        self.seed = seed
        self.logger = logger
    }

    /// The master serving `slot`, as last read.
    public func master(of slot: Int) -> RedisNodeAddress? { masters[slot] }

    /// Every master in the map, in address order.
    public var knownMasters: [RedisNodeAddress] {
        Set(masters.compactMap { $0 }).sorted { ($0.host, $0.port) < ($1.host, $1.port) }
    }

    /// Slots no master serves in the map (0 in a healthy cluster).
    public var unservedSlots: Int { masters.count { $0 == nil } }

    /// The connection to `address`, opened on first use.
    public func connection(to address: RedisNodeAddress) async throws -> RedisConnection {
        if let known = connections[address] { return known }
        var node = configuration
        node.node = address
        let opened = try await RedisConnection.connect(node, logger: logger)
        // Another caller may have opened one while this one connected: keep the first.
        if let known = connections[address] {
            await opened.close()
            return known
        }
        connections[address] = opened
        return opened
    }

    /// The seed node's connection (for server-wide questions such as `CONFIG GET`).
    public func seedConnection() async throws -> RedisConnection {
        try await connection(to: masters.lazy.compactMap { $0 }.first ?? seed)
    }

    /// A `MOVED` reply: the slot is served elsewhere from now on.
    public func moved(_ redirect: RedisRedirect) {
        masters[redirect.slot] = redirect.address
    }

    /// Reads the slot map again from the first node that answers (known masters first, then the
    /// seed). Concurrent callers share one read.
    public func refresh() async throws {
        if let refreshing { return try await refreshing.value }
        let task = Task { try await self.readSlots() }
        refreshing = task
        defer { refreshing = nil }
        try await task.value
    }

    private func readSlots() async throws {
        var candidates = knownMasters
        if !candidates.contains(seed) { candidates.append(seed) }
        var lastError: (any Error)?
        for address in candidates {
            do {
                let reply = try await connection(to: address).command("CLUSTER", "SLOTS")
                let map = try Self.slotMap(reply, answeredBy: address)
                if map != masters {
                    let before = Set(masters.compactMap { $0 })
                    masters = map
                    logger.info("Redis Cluster slot map read", metadata: [
                        "redis.node": "\(address)", "redis.masters": "\(knownMasters.count)", "redis.unserved_slots": "\(unservedSlots)",
                    ])
                    // Connections to nodes that serve no slot any more are closed.
                    for gone in before.subtracting(map.compactMap { $0 }) where gone != seed {
                        await connections.removeValue(forKey: gone)?.close()
                    }
                }
                return
            } catch let error as RedisError where error.code == .server && error.message.hasPrefix("ERR This instance has cluster support disabled") {
                throw RedisError(code: .server, message: "\(address) is not a Redis Cluster node (cluster support disabled): unset redis.cluster")
            } catch {
                lastError = error
            }
        }
        throw lastError ?? RedisError(code: .connectionFailed, message: "no Redis Cluster node answered")
    }

    /// `CLUSTER SLOTS` → the master of each slot. A node announced with an empty host is the node
    /// that answered (Redis' convention for "the address you reached me on").
    static func slotMap(_ reply: RedisReply, answeredBy answering: RedisNodeAddress) throws -> [RedisNodeAddress?] {
        var map = [RedisNodeAddress?](repeating: nil, count: RedisSlot.count)
        for range in reply.array ?? [] {
            guard let entry = range.array, entry.count >= 3, let first = entry[0].integer, let last = entry[1].integer,
                let node = entry[2].array, node.count >= 2, let host = node[0].string, let port = node[1].integer,
                0 <= first, first <= last, last < RedisSlot.count
            else {
                throw RedisError(code: .server, message: "CLUSTER SLOTS from \(answering) answered in an unknown form")
            }
            guard host != "?" else { continue }  // the node's endpoint is not known yet
            let address = host.isEmpty ? RedisNodeAddress(host: answering.host, port: Int(port)) : RedisNodeAddress(host: host, port: Int(port))
            for slot in Int(first)...Int(last) { map[slot] = address }
        }
        return map
    }

    public func close() async {
        for connection in connections.values { await connection.close() }
        connections = [:]
    }
}
