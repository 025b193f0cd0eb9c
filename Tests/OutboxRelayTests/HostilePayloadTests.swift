import Foundation
import Logging
import Testing

@testable import OutboxCore
@testable import OutboxRelay

/// Payloads that passed the exact parser: the deliverers turn what they cannot carry into a
/// payload problem (a dead letter with the reason), never a trap.
@Suite struct HostileDeliveryPayloadTests {
    var qdrant: QdrantDeliverer {
        QdrantDeliverer(
            client: QdrantClient(configuration: QdrantConfiguration(url: "http://127.0.0.1:1"), logger: Logger(label: "t")),
            embedder: HashingEmbedder(dimensions: 4), tables: ["extractions": .extractions], sourceTypes: SourceColumnTypes(),
            collections: [:], maxBatchBytes: 1 << 20, logger: Logger(label: "t"))
    }

    func event(_ destination: OutboxEvent.Destination, _ operation: String, _ payload: JSONValue) -> ClaimedEvent {
        ClaimedEvent(id: 1, destination: destination, operation: operation, key: "k", payload: payload, createdAt: Date(), attempts: 0)
    }

    @Test(arguments: [1e300, -1e300, 1.5, 9.3e18])
    func outOfRangeSourceIdIsAPayloadProblemNotATrap(id: Double) {
        let result = qdrant.parse(event(.qdrant, "upsert", [
            "collection": "c", "id": 1, "vector": [1], "source": ["table": "extractions", "id": .number(id)],
        ]))
        guard case .failure(let problem) = result else {
            Issue.record("accepted source.id \(id)")
            return
        }
        #expect(problem.message.contains(#""source.id" must be a string or an integer"#))
    }

    @Test(arguments: [1e300, -1e300, 0, 2.5])
    func outOfRangeRedisNumbersAreAPayloadProblemNotATrap(n: Double) {
        let redis = RedisDelivererCommands()
        guard case .failure(let ttl) = redis.command(for: event(.redis, "set", ["key": "k", "value": "v", "ttl_seconds": .number(n)])),
            case .failure(let maxlen) = redis.command(for: event(.redis, "xadd", ["stream": "s", "fields": ["a": "b"], "maxlen": .number(n)]))
        else {
            Issue.record("accepted \(n)")
            return
        }
        #expect(ttl.message.contains(#""ttl_seconds" must be a positive integer"#))
        #expect(maxlen.message.contains(#""maxlen" must be a positive integer"#))
    }
}
