import Foundation

/// How the relay treats a failure: DESIGN §4's retry table, and whose fault it is.
package enum FailureClass: Equatable {
    /// A later attempt may succeed (overload, a restart, a timeout).
    case transient(retryAfter: Duration?)
    /// The destination refuses the relay itself, whatever the event (a wrong or rotated key, a
    /// revoked permission): nothing is wrong with the event, so it waits with backoff, never becomes a
    /// dead letter for it, and the destination is reported failing until an operator fixes it.
    case destination
    /// Something is wrong with the event: a dead letter.
    case permanent

    /// HTTP statuses: 408, 429 and 5xx are transient; 401 and 403 are the destination's (its
    /// credentials); other 4xx are permanent.
    package static func http(status: Int, retryAfterHeader: String?) -> FailureClass {
        switch status {
        case 408, 425, 429, 500...599:
            return .transient(retryAfter: retryAfterHeader.flatMap(parseRetryAfter))
        case 401, 403:
            return .destination
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

    /// Redis error replies that a later attempt can get past, those that refuse the relay's
    /// credentials or ACL user (`NOAUTH`, `WRONGPASS`, `NOPERM`); anything else (WRONGTYPE, ERR …) is
    /// a property of the event.
    package static func redis(errorReply: String) -> FailureClass {
        let transient = ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "OOM", "READONLY", "CLUSTERDOWN", "NOSCRIPT", "NOREPLICAS"]
        if transient.contains(where: { errorReply.hasPrefix($0) }) { return .transient(retryAfter: nil) }
        return ["NOAUTH", "WRONGPASS", "NOPERM"].contains(where: { errorReply.hasPrefix($0) }) ? .destination : .permanent
    }
}
