import Foundation
import Synchronization

/// A free TCP port on 127.0.0.1, below Linux' ephemeral range (32768–60999): a port the kernel
/// picked (bind to port 0) could be handed out again, as the local port of one of the many
/// client connections a test opens, before the process meant to listen on it had bound it.
public func freePort() throws -> Int {
    for _ in 0..<100 {
        let port = Int.random(in: 20_000..<32_000)
        // A port handed out is free only until its user binds it: never hand it out twice in this
        // process (two daemons of concurrent tests once got the same port, and one exited with
        // "Address already in use").
        guard handedOut.withLock({ $0.insert(port).inserted }) else { continue }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        if bound { return port }
    }
    throw HarnessError("no free TCP port found on 127.0.0.1")
}

private let handedOut = Mutex<Set<Int>>([])
