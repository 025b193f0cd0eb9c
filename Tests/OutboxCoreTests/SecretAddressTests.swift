import Foundation
import Testing

@testable import OutboxCore
import OutboxTestSupport

/// Secrets in every address form the configuration accepts never survive redaction: property
/// tests over random secrets (reserved characters, quotes, spaces, Unicode) in each form.
@Suite struct SecretAddressTests {
    static let alphabet = Array("abcXYZ0189") + Array("@:/?#&=%'\" \\;+!~*()[]{}é日😀")

    /// A secret that starts and ends with a letter (so it is not a substring of the form around
    /// it by accident), with reserved characters inside.
    static func secret(_ rng: inout SplitMix64, allowing: (Character) -> Bool = { _ in true }) -> String {
        let inner = (0..<Int.random(in: 6...18, using: &rng)).map { _ in
            var c: Character
            repeat { c = alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] } while !allowing(c)
            return c
        }
        return "sK" + String(inner) + "qZ"
    }

    static func percentEncoded(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }

    /// Every form, for one secret: (address, the forms the secret takes in it).
    static func forms(_ secret: String) -> [String] {
        let encoded = percentEncoded(secret)
        let quoted = "'" + secret.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
        var forms = [
            "postgresql://outbox:\(encoded)@db.example:5432/outbox",
            "postgres://outbox:\(encoded)@[::1]:5432/outbox?sslmode=verify-full",
            "postgresql://outbox@db.example/outbox?password=\(encoded)",
            "postgresql://outbox@db.example/outbox?sslmode=require&PASSWORD=\(encoded)&application_name=x",
            "host=db.example port=5432 user=outbox password=\(quoted) dbname=outbox",
            "host=db.example user=outbox password = \(quoted)",
            "host=db.example sslpassword=\(quoted) sslkey=/etc/key.pem dbname=outbox",
            "redis://:\(encoded)@cache.example:6379/0",
            "redis://default:\(encoded)@cache.example/1?password=\(encoded)",
            "http://admin:\(encoded)@qdrant.example:6333",
            "https://qdrant.example/?api-key=\(encoded)",
            "https://hooks.example/alert?token=\(encoded)#frag",
        ]
        if !secret.contains(where: { " '\\".contains($0) }) {
            forms.append("host=db.example user=outbox password=\(secret) dbname=outbox")
        }
        return forms
    }

    @Test func noSecretSurvivesRedactionInAnyForm() {
        var rng = SplitMix64(seed: 0x5EC2E7)
        for _ in 0..<300 {
            let secret = Self.secret(&rng)
            for address in Self.forms(secret) {
                let shown = SecretAddress.redacted(address)
                #expect(!shown.contains(secret) && !shown.contains(Self.percentEncoded(secret)), "\(address) -> \(shown)")
                #expect(shown.contains(".example") || shown.contains("::1"), "the host is still shown: \(shown)")
                #expect(shown.contains("***"), "\(shown)")
                let found = SecretAddress.secrets(in: address)
                #expect(found.contains(secret), "\(address): found \(found)")
                // A driver's message that echoes the address or the secret is cleaned too.
                let message = Redactor(secrets: found).redact("could not connect to \(address) with \(secret)")
                #expect(!message.contains(secret) && !message.contains(Self.percentEncoded(secret)), "\(message)")
            }
        }
    }

    @Test func addressesWithoutSecretsAreShownAsTheyAre() {
        for address in [
            "postgresql://outbox@127.0.0.1:55432/outbox", "host=127.0.0.1 port=55432 user=outbox dbname=outbox sslmode=disable",
            "redis://127.0.0.1:56379/0", "http://127.0.0.1:56333", "https://api.openai.com/v1?model=text-embedding-3-small",
        ] {
            #expect(SecretAddress.redacted(address) == address)
            #expect(SecretAddress.secrets(in: address).isEmpty, "\(address)")
        }
    }

    @Test func theShownFormKeepsEverythingButTheSecret() {
        #expect(SecretAddress.redacted("postgresql://outbox:pa%40ss@db:5432/outbox?sslmode=require&password=x1y2z3")
            == "postgresql://outbox:***@db:5432/outbox?sslmode=require&password=***")
        #expect(SecretAddress.redacted("host=db user=outbox password='a \\' secret' dbname=outbox")
            == "host=db user=outbox password=*** dbname=outbox")
        #expect(SecretAddress.redacted("host=db password=s3cret dbname=outbox") == "host=db password=*** dbname=outbox")
        #expect(SecretAddress.redacted("http://user:hunter22@qdrant:6333/") == "http://user:***@qdrant:6333/")
    }
}
