import Foundation

import OutboxTestSupport

// Raw HTTP clients for `HostileHTTPClientTests` (non-blocking sockets polled from async code, never a
// blocked thread): bytes on the wire exactly as written, which no HTTP library would send (unknown
// methods, oversized headers, garbage, a byte every 200 ms).

/// A TCP connection to 127.0.0.1 that never blocks: every call returns at once, and waiting is
/// done with `Task.sleep` between polls.
final class RawSocket: @unchecked Sendable {
    // @unchecked Sendable: the descriptor is only used by the task that owns this object (or, for
    // the trickle task, handed over once); closing happens in deinit.
    let fd: Int32

    init(port: Int) async throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestEnvironment.Missing(name: "a socket (errno \(errno))") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if result != 0 && errno != EINPROGRESS { throw TestEnvironment.Missing(name: "a connection to port \(port) (errno \(errno))") }
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            var fds = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&fds, 1, 0) == 1 {
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                guard error == 0 else { throw TestEnvironment.Missing(name: "a connection to port \(port) (error \(error))") }
                return
            }
            guard ContinuousClock.now < deadline else { throw TestEnvironment.Missing(name: "a connection to port \(port) (timeout)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    deinit { close(fd) }

    /// Sends what the socket takes right now; false when the peer is gone.
    func sendNow(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) } >= 0
            || errno == EAGAIN
    }

    func sendAll(_ bytes: [UInt8], timeout: Duration = .seconds(10)) async throws {
        var offset = 0
        let deadline = ContinuousClock.now + timeout
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
            if n > 0 {
                offset += n
            } else if n < 0 && errno != EAGAIN {
                return  // the server closed the connection (e.g. after refusing oversized headers)
            } else {
                guard ContinuousClock.now < deadline else { return }
                try await Task.sleep(for: .milliseconds(2))
            }
        }
    }

    /// Reads what has arrived; `nil` once the peer has closed (EOF or reset) and nothing is left.
    func receiveNow() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n > 0 { return Array(buffer[..<n]) }
        if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) { return nil }
        return []
    }

    /// True when the server has closed the connection (nothing more to read, EOF or reset).
    func isClosedByPeer() -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }
}

enum RawHTTP {
    struct Reply {
        let status: Int
        let head: String
        let body: [UInt8]
        /// The server closed the connection after replying.
        let closed: Bool

        func header(_ name: String) -> String? {
            for line in head.split(separator: "\r\n").dropFirst() {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2, parts[0].lowercased() == name { return parts[1].trimmingCharacters(in: .whitespaces) }
            }
            return nil
        }
    }

    /// Sends `request` as raw bytes on a new connection and reads one reply (head, and a
    /// Content-Length body unless `expectBody` is false), then watches briefly for a close.
    static func exchange(port: Int, _ request: String, expectBody: Bool = true, timeout: Duration = .seconds(5)) async throws -> Reply {
        let socket = try await RawSocket(port: port)
        try await socket.sendAll(Array(request.utf8))
        var data: [UInt8] = []
        var closed = false
        let deadline = ContinuousClock.now + timeout
        let separator = Array("\r\n\r\n".utf8)
        var headEnd: Int?
        var bodyLength = 0
        while ContinuousClock.now < deadline {
            guard let chunk = socket.receiveNow() else {
                closed = true
                break
            }
            data += chunk
            if headEnd == nil, let end = data.firstRange(of: separator)?.upperBound {
                headEnd = end
                let head = String(decoding: data[..<end], as: UTF8.self)
                bodyLength = expectBody ? Reply(status: 0, head: head, body: [], closed: false).header("content-length").flatMap(Int.init) ?? 0 : 0
            }
            if let end = headEnd, data.count >= end + bodyLength {
                // Give the server a moment to send anything more (a body after HEAD) or to close.
                try await Task.sleep(for: .milliseconds(150))
                if let more = socket.receiveNow() { data += more } else { closed = true }
                if !closed { closed = socket.isClosedByPeer() }
                break
            }
            if chunk.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
        }
        let end = headEnd ?? data.count
        let head = String(decoding: data[..<end], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n").first ?? ""
        let status = statusLine.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return Reply(status: status, head: head, body: Array(data[end...]), closed: closed)
    }
}
