import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// Qdrant over HTTPS, as managed Qdrant runs it: a stand-in served with a certificate of a private
/// CA that requires a client certificate, and the relay verifying it with `qdrant.ca_file` and
/// presenting `qdrant.client_cert_file` / `qdrant.client_key_file`.
@Suite struct QdrantTLSTests {
    /// A CA, a server certificate it signs for localhost and 127.0.0.1, and a client certificate.
    static func makeCertificates(in directory: String) async throws {
        let openssl = URL(fileURLWithPath: "/usr/bin/openssl")
        func at(_ name: String) -> String { directory + "/" + name }
        func run(_ arguments: [String]) async throws {
            let result = try await runProcess(openssl, arguments)
            #expect(result.status == 0, "openssl \(arguments.joined(separator: " ")): \(result.stderr)")
        }
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(toFile: at("server.ext"), atomically: true, encoding: .utf8)
        try await run(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=outbox test CA",
                       "-keyout", at("ca.key"), "-out", at("ca.crt")])
        for name in ["server", "client"] {
            try await run(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=\(name == "server" ? "localhost" : "outbox-relay")",
                           "-keyout", at("\(name).key"), "-out", at("\(name).csr")])
            try await run(["x509", "-req", "-in", at("\(name).csr"), "-CA", at("ca.crt"), "-CAkey", at("ca.key"), "-CAcreateserial",
                           "-days", "2", "-out", at("\(name).crt")] + (name == "server" ? ["-extfile", at("server.ext")] : []))
        }
    }

    @Test func theRelayVerifiesQdrantWithTheConfiguredCAAndPresentsItsClientCertificate() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await Self.makeCertificates(in: directory)
        let port = try freePort()
        let python = URL(fileURLWithPath: try TestEnvironment.variable("OUTBOX_VENV")).appendingPathComponent("bin/python")
        let standin = try await startProcess(python, [
            TestEnvironment.repositoryRoot.appendingPathComponent("scripts/qdrant-standin/standin.py").path,
            "--host", "127.0.0.1", "--port", String(port), "--data", directory + "/data", "--api-key", try TestEnvironment.qdrantAPIKey(),
            "--tls-cert", directory + "/server.crt", "--tls-key", directory + "/server.key", "--tls-client-ca", directory + "/ca.crt",
        ], readyLine: "listening on https://")
        defer { kill(standin.processIdentifier, SIGKILL) }

        try await TestEnvironment.withFreshDatabase(migrated: true) { url, db in
            try await OutboxWriter.enqueue(
                .qdrantUpsert(collection: "extractions", id: .uuid(UUID()), vector: (0..<384).map { $0 == 0 ? 1 : 0 }, key: "tls"), on: db)
            let tls = [
                "OUTBOX_POSTGRES_URL": url, "OUTBOX_QDRANT_URL": "https://localhost:\(port)", "OUTBOX_QDRANT_CA_FILE": directory + "/ca.crt",
                "OUTBOX_QDRANT_CLIENT_CERT_FILE": directory + "/client.crt", "OUTBOX_QDRANT_CLIENT_KEY_FILE": directory + "/client.key",
            ]
            let check = try await runProcess(try TestEnvironment.executable("outbox-relay"), ["check", "--config", "config/outbox.yaml"], environment: tls)
            #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
            #expect(check.stdout.contains("ok   qdrant    https://localhost:\(port)"), "\(check.stdout)")

            // Without the CA the server cannot be verified; without the client certificate the server
            // refuses the relay. Either way Qdrant is unreachable to it, and nothing is sent.
            for missing in ["OUTBOX_QDRANT_CA_FILE", "OUTBOX_QDRANT_CLIENT_CERT_FILE"] {
                var environment = tls
                environment[missing] = nil
                if missing == "OUTBOX_QDRANT_CLIENT_CERT_FILE" { environment["OUTBOX_QDRANT_CLIENT_KEY_FILE"] = nil }
                let relay = try DaemonProcess.relay(databaseURL: url, environment: environment)
                try await eventually("readyz 503 without \(missing)", timeout: .seconds(20)) {
                    guard let ready = await relay.get("/readyz"), ready.status == 503 else { return false }
                    return ready.body.contains("qdrant unreachable")
                }
                await relay.stop()
                #expect(try await db.count("outbox.events") == 1, "delivered without \(missing)")
            }

            let relay = try DaemonProcess.relay(databaseURL: url, environment: tls)
            try await eventually("delivered over HTTPS", timeout: .seconds(30)) { try await db.count("outbox.events") == 0 }
            #expect(try await db.count("outbox.dead_letters") == 0)
            try await relay.waitUntilReady()
        }
    }
}
