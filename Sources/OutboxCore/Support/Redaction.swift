import Foundation

/// Removes secrets from text that may reach a log line, an error or `/status`.
///
/// Drivers know their secrets (a password, a URL's userinfo, an api-key) and pass every C library
/// message through `redact` before it leaves the driver.
public struct Redactor: Sendable {
    private let secrets: [String]

    public init(secrets: [String?]) {
        // Longest first, so a secret that contains another is removed whole.
        self.secrets = secrets.compactMap { $0 }.filter { $0.count >= 3 }.sorted { $0.count > $1.count }
    }

    public func redact(_ text: String) -> String {
        var out = text
        for secret in secrets where out.contains(secret) {
            out = out.replacingOccurrences(of: secret, with: "***")
        }
        return out
    }
}

/// Pieces of a `scheme://user:password@host:port/path?query` URL, parsed without Foundation's
/// `URL` so that a password with reserved characters is still found (and redacted).
public struct URLParts: Sendable, Equatable {
    public var scheme: String
    public var user: String?
    public var password: String?
    public var host: String
    public var port: Int?
    public var path: String
    public var query: [(String, String)]

    public static func == (a: URLParts, b: URLParts) -> Bool {
        a.scheme == b.scheme && a.user == b.user && a.password == b.password && a.host == b.host
            && a.port == b.port && a.path == b.path && a.query.elementsEqual(b.query, by: { $0 == $1 })
    }

    /// Parses `text`, or returns nil when it is not a `scheme://` URL.
    public init?(_ text: String) {
        guard let schemeEnd = text.range(of: "://") else { return nil }
        scheme = String(text[..<schemeEnd.lowerBound]).lowercased()
        var rest = Substring(text[schemeEnd.upperBound...])
        var queryPart: Substring = ""
        if let q = rest.firstIndex(of: "?") {
            queryPart = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        var authority = rest
        path = ""
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            path = String(rest[slash...])
        }
        if let at = authority.lastIndex(of: "@") {
            let userinfo = authority[..<at]
            authority = authority[authority.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                user = Self.percentDecode(userinfo[..<colon])
                password = Self.percentDecode(userinfo[userinfo.index(after: colon)...])
            } else {
                user = Self.percentDecode(userinfo)
            }
        }
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()) else { return nil }
                port = p
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let p = Int(authority[authority.index(after: colon)...]) else { return nil }
            port = p
        } else {
            host = String(authority)
        }
        query = queryPart.split(separator: "&").map { pair in
            let kv = pair.split(separator: "=", maxSplits: 1)
            return (Self.percentDecode(kv[0]), kv.count > 1 ? Self.percentDecode(kv[1]) : "")
        }
    }

    static func percentDecode(_ s: Substring) -> String {
        var bytes: [UInt8] = []
        var i = s.utf8.startIndex
        let u = s.utf8
        while i != u.endIndex {
            let c = u[i]
            if c == UInt8(ascii: "%"), let h1 = u.index(i, offsetBy: 1, limitedBy: u.endIndex), h1 != u.endIndex,
                let h2 = u.index(h1, offsetBy: 1, limitedBy: u.endIndex), h2 != u.endIndex,
                let v = UInt8(String(decoding: [u[h1], u[h2]], as: UTF8.self), radix: 16)
            {
                bytes.append(v)
                i = u.index(after: h2)
            } else {
                bytes.append(c)
                i = u.index(after: i)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Where secrets hide in the address forms the configuration accepts, and the address with them
/// masked. The forms: a URL's userinfo (`scheme://user:secret@host`, percent-encoded or not), a
/// URL's query parameters (`?password=secret`, `?api-key=secret`, …), and libpq's conninfo
/// (`host=… password=secret`, `password='a secret'`, `sslpassword=…`). Every address a user can
/// see — a log line, an error, `/status`, `check` — goes through ``redacted(_:)``, and every
/// driver's ``Redactor`` knows the values ``secrets(in:)`` finds.
public enum SecretAddress {
    /// Parameter names (query or conninfo, any case) whose values are secrets.
    public static let secretParameters: Set<String> = [
        "password", "passwd", "pass", "pwd", "sslpassword", "api-key", "api_key", "apikey", "token", "access_token",
        "auth", "secret",
    ]

    static func isSecret(_ name: some StringProtocol) -> Bool { secretParameters.contains(name.lowercased()) }

    /// The secret values in `address`, as written and percent-decoded.
    public static func secrets(in address: String) -> [String] {
        var found: [String] = []
        for range in secretRanges(in: address) {
            var value = Substring(address[range])
            if value.count >= 2, value.first == "'", value.last == "'" {
                value = value.dropFirst().dropLast()
                found.append(value.replacingOccurrences(of: "\\'", with: "'").replacingOccurrences(of: "\\\\", with: "\\"))
            }
            found.append(String(value))
            found.append(URLParts.percentDecode(value))
        }
        return Array(Set(found.filter { !$0.isEmpty }))
    }

    /// `address` with each secret value replaced by `***`.
    public static func redacted(_ address: String) -> String {
        var out = address
        for range in secretRanges(in: address).sorted(by: { $0.lowerBound > $1.lowerBound }) {
            out.replaceSubrange(range, with: "***")
        }
        return out
    }

    /// Where the secret values lie in `address`: in a URL, the userinfo's password and secret query
    /// values; otherwise, conninfo `keyword=value` pairs with a secret keyword.
    static func secretRanges(in address: String) -> [Range<String.Index>] {
        guard let schemeEnd = address.range(of: "://"),
            !address[..<schemeEnd.lowerBound].contains(where: { $0 == " " || $0 == "=" })
        else { return conninfoSecretRanges(in: address) }
        var ranges: [Range<String.Index>] = []
        let afterScheme = address[schemeEnd.upperBound...]
        let authorityEnd = afterScheme.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? afterScheme.endIndex
        let authority = afterScheme[..<authorityEnd]
        if let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":"), authority.index(after: colon) < at {
            ranges.append(authority.index(after: colon)..<at)
        }
        if let question = address[authorityEnd...].firstIndex(of: "?") {
            let queryEnd = address[question...].firstIndex(of: "#") ?? address.endIndex
            var start = address.index(after: question)
            while start < queryEnd {
                let end = address[start..<queryEnd].firstIndex(of: "&") ?? queryEnd
                if let equals = address[start..<end].firstIndex(of: "="), isSecret(URLParts.percentDecode(address[start..<equals])),
                    address.index(after: equals) < end
                {
                    ranges.append(address.index(after: equals)..<end)
                }
                start = end < queryEnd ? address.index(after: end) : queryEnd
            }
        }
        return ranges
    }

    /// libpq's conninfo: `keyword = value` pairs separated by whitespace; a value is a run of
    /// non-space characters or single-quoted, with `\'` and `\\` escaped.
    static func conninfoSecretRanges(in text: String) -> [Range<String.Index>] {
        var ranges: [Range<String.Index>] = []
        var i = text.startIndex
        func skipSpaces() { while i < text.endIndex, text[i].isWhitespace { i = text.index(after: i) } }
        while i < text.endIndex {
            skipSpaces()
            let keyStart = i
            while i < text.endIndex, text[i] != "=", !text[i].isWhitespace { i = text.index(after: i) }
            let key = text[keyStart..<i]
            skipSpaces()
            guard i < text.endIndex, text[i] == "=" else {
                // Not conninfo after all (or a malformed one): mask nothing more than found so far,
                // but a word that names a secret keyword masks the rest, to be safe.
                if isSecret(key), i < text.endIndex { ranges.append(i..<text.endIndex) }
                break
            }
            i = text.index(after: i)
            skipSpaces()
            let valueStart = i
            if i < text.endIndex, text[i] == "'" {
                i = text.index(after: i)
                while i < text.endIndex, text[i] != "'" {
                    if text[i] == "\\", text.index(after: i) < text.endIndex { i = text.index(after: i) }
                    i = text.index(after: i)
                }
                if i < text.endIndex { i = text.index(after: i) }
            } else {
                while i < text.endIndex, !text[i].isWhitespace { i = text.index(after: i) }
            }
            if isSecret(key), valueStart < i { ranges.append(valueStart..<i) }
        }
        return ranges
    }
}
