import Foundation
import Testing

@testable import OutboxCore

/// Config files are loaded as users write them: YAML on disk plus OUTBOX_* environment overrides.
@Suite struct ConfigurationTests {
    func load(_ yaml: String, environment: [String: String] = [:], files: [String: String] = [:]) async throws
        -> OutboxConfiguration
    {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for (name, contents) in files {
            try contents.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        let path = dir.appendingPathComponent("outbox.yaml").path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return try await OutboxConfiguration.load(path: path, environment: environment)
    }

    func problem(_ yaml: String, environment: [String: String] = [:]) async -> ConfigurationError? {
        do {
            _ = try await load(yaml, environment: environment)
            return nil
        } catch {
            return error as? ConfigurationError
        }
    }

    @Test func defaultsMatchTheLocalServices() async throws {
        let config = try await load("{}")
        #expect(config.postgres.url == "postgresql://outbox@127.0.0.1:55432/outbox")
        #expect(config.redis.url == "redis://127.0.0.1:56379/0")
        #expect(config.qdrant.url == "http://127.0.0.1:56333")
        #expect(config.postgres.connectTimeout == .seconds(5))
    }

    @Test func readsNestedKeysAndSecretFilesRelativeToTheConfig() async throws {
        let config = try await load(
            """
            postgres:
              url: postgresql://app@db.internal/app
              password_file: pg-password
              connect_timeout: 1500ms
            qdrant:
              api_key_file: qdrant-key
            """, files: ["pg-password": "s3cret\n", "qdrant-key": "k-123"])
        #expect(config.postgres.url == "postgresql://app@db.internal/app")
        #expect(config.postgres.password == "s3cret")
        #expect(config.postgres.connectTimeout == .milliseconds(1500))
        #expect(config.qdrant.apiKey == "k-123")
    }

    @Test func environmentOverridesTheFile() async throws {
        let config = try await load(
            "postgres:\n  url: postgresql://file@h/db\n",
            environment: ["OUTBOX_POSTGRES_URL": "postgresql://env@h/db", "OUTBOX_QDRANT_API_KEY": "from-env",
                          "OUTBOX_REDIS_COMMAND_TIMEOUT": "3s"])
        #expect(config.postgres.url == "postgresql://env@h/db")
        #expect(config.qdrant.apiKey == "from-env")
        #expect(config.redis.commandTimeout == .seconds(3))
    }

    @Test func negativeDurationNamesTheKey() async {
        let error = await problem("postgres:\n  connect_timeout: -5s\n")
        #expect(error?.key == "postgres.connect_timeout")
        #expect(error?.description == #"config: postgres.connect_timeout: must be positive, got "-5s""#)
    }

    @Test func wrongTypeNamesTheKey() async {
        let error = await problem("redis:\n  command_timeout: soon\n")
        #expect(error?.key == "redis.command_timeout")
        #expect(error?.problem.contains("expected a duration") == true)
    }

    @Test func badRedisURLNamesTheKey() async {
        let error = await problem("redis:\n  url: http://127.0.0.1:6379\n")
        #expect(error?.key == "redis.url")
    }

    @Test func unreadableSecretFileNamesTheKeyNotTheSecret() async {
        let error = await problem("postgres:\n  password_file: /nonexistent/pw\n")
        #expect(error?.key == "postgres.password_file")
    }

    @Test func missingFileIsAClearError() async {
        await #expect(throws: ConfigurationError.self) {
            try await OutboxConfiguration.load(path: "/nonexistent/outbox.yaml", environment: [:])
        }
    }

    @Test func invalidYAMLIsAClearError() async {
        let error = await problem("postgres: [unclosed\n")
        #expect(error?.problem.contains("not valid YAML") == true)
    }
}
