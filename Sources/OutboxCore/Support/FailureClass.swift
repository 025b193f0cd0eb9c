import Foundation

/// How the relay treats a failure: DESIGN §4's retry table.
package enum FailureClass: Equatable {
    case transient(retryAfter: Duration?)
    case permanent

    /// HTTP statuses: 408, 429 and 5xx are transient; other 4xx are permanent.
    package static func http(status: Int, retryAfterHeader: String?) -> FailureClass {
        switch status {
        case 408, 425, 429, 500...599:
            return .transient(retryAfter: retryAfterHeader.flatMap(parseRetryAfter))
        default:
            return .permanent
        }
    }

    /// `Retry-After` in seconds (the HTTP-date form is rare for APIs; treated as absent).
    package static func parseRetryAfter(_ text: String) -> Duration? {
        guard let seconds = Double(text.trimmingCharacters(in: .whitespaces)), seconds >= 0, seconds.isFinite else {
            return nil
        }
        return .milliseconds(Int64(min(seconds, 3600) * 1000))
    }

    /// Redis error replies that a later attempt can get past; anything else (WRONGTYPE, ERR …)
    /// is a property of the event.
    package static func redis(errorReply: String) -> FailureClass {
        let transient = ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "OOM", "READONLY", "CLUSTERDOWN", "NOSCRIPT", "NOREPLICAS"]
        return transient.contains(where: { errorReply.hasPrefix($0) }) ? .transient(retryAfter: nil) : .permanent
    }
}
