import Foundation
import Logging

/// Turns texts into vectors: for the relay, `qdrant.upsert` events that carry `text` and no
/// `vector`; for searches (`outbox-demo --query`), the query text, so both land in one space.
public protocol Embedder: Sendable {
    var dimensions: Int { get }
    /// One vector per text, in order. Throws ``EmbeddingError``.
    func embed(_ texts: [String]) async throws -> [[Float]]
}

public struct EmbeddingError: Error, CustomStringConvertible, Sendable {
    public let message: String
    /// Whether a later attempt may succeed (transport error, 429, 5xx), the endpoint refuses the
    /// relay's key (401, 403), or the texts themselves are the problem.
    package let failure: FailureClass
    /// A later attempt may succeed (transport error, 429, 5xx).
    public var isTransient: Bool { if case .transient = failure { true } else { false } }
    public var retryAfter: Duration? { if case .transient(let after) = failure { after } else { nil } }
    public var description: String { "embedding failed: \(message)" }
}

/// Deterministic feature hashing of word unigrams and bigrams into `dimensions` buckets,
/// L2-normalised. Lexical, not semantic: texts sharing words land near each other, paraphrases
/// do not. Needs no model and no network, so the local demo and tests work anywhere.
public struct HashingEmbedder: Embedder {
    public let dimensions: Int

    public init(dimensions: Int) {
        self.dimensions = dimensions
    }

    public func embed(_ texts: [String]) async throws -> [[Float]] {
        texts.map(vector)
    }

    func vector(_ text: String) -> [Float] {
        var v = [Float](repeating: 0, count: dimensions)
        let words = text.lowercased().split(whereSeparator: { !$0.isLetter && !$0.isNumber }).map(String.init)
        var features = words
        if words.count > 1 { features += zip(words, words.dropFirst()).map { $0 + " " + $1 } }
        for feature in features {
            let h = Self.fnv1a(feature)
            let sign: Float = (h >> 63) == 0 ? 1 : -1
            v[Int(h % UInt64(dimensions))] += sign
        }
        let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        if norm > 0 {
            for i in v.indices { v[i] /= norm }
        } else {
            v[0] = 1  // an empty text still needs a valid (non-zero) cosine vector
        }
        return v
    }

    static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        return h
    }
}

/// An OpenAI-compatible `POST {base_url}/v1/embeddings` client over libcurl.
public struct OpenAIEmbedder: Embedder {
    public let dimensions: Int
    let settings: EmbeddingSettings
    let http: HTTPConnection

    public init(settings: EmbeddingSettings, logger: Logger) {
        self.settings = settings
        self.dimensions = settings.dimensions
        self.http = HTTPConnection(logger: logger, secrets: [settings.apiKey].compactMap { $0 } + SecretAddress.secrets(in: settings.baseURL))
    }

    struct Request: Encodable {
        let model: String
        let input: [String]
        let dimensions: Int
    }

    struct Response: Decodable {
        struct Item: Decodable {
            let index: Int
            let embedding: [Float]
        }
        let data: [Item]
    }

    public func embed(_ texts: [String]) async throws -> [[Float]] {
        var vectors: [[Float]] = []
        vectors.reserveCapacity(texts.count)
        var start = 0
        while start < texts.count {
            let chunk = Array(texts[start..<min(texts.count, start + settings.batchSize)])
            vectors += try await embedChunk(chunk)
            start += chunk.count
        }
        return vectors
    }

    private func embedChunk(_ texts: [String]) async throws -> [[Float]] {
        var headers: [(name: String, value: String)] = []
        if let key = settings.apiKey { headers.append(("Authorization", "Bearer \(key)")) }
        let base = settings.baseURL.hasSuffix("/") ? String(settings.baseURL.dropLast()) : settings.baseURL
        let request = try HTTPRequest.json(
            .POST, base + "/v1/embeddings", body: Request(model: settings.model, input: texts, dimensions: dimensions),
            headers: headers, timeout: settings.timeout)
        let response: HTTPResponse
        do {
            response = try await http.perform(request)
        } catch let error as HTTPTransportError {
            throw EmbeddingError(message: error.description, failure: .transient(retryAfter: nil))
        }
        guard response.status == 200 else {
            throw EmbeddingError(
                message: "embeddings endpoint answered \(response.status): \(response.bodyText.prefix(300))",
                failure: FailureClass.http(status: response.status, retryAfterHeader: response.headers["retry-after"]))
        }
        guard let decoded = try? response.decode(Response.self), decoded.data.count == texts.count else {
            throw EmbeddingError(message: "embeddings endpoint returned an unexpected body", failure: .transient(retryAfter: nil))
        }
        let vectors = decoded.data.sorted { $0.index < $1.index }.map(\.embedding)
        if let wrong = vectors.first(where: { $0.count != dimensions }) {
            throw EmbeddingError(
                message: "embeddings have \(wrong.count) dimensions, config says embedding.dimensions = \(dimensions)",
                failure: .permanent)
        }
        return vectors
    }
}

extension EmbeddingSettings {
    public func makeEmbedder(logger: Logger) -> any Embedder {
        switch provider {
        case .hashing: HashingEmbedder(dimensions: dimensions)
        case .openai: OpenAIEmbedder(settings: self, logger: logger)
        }
    }
}
