import CCurl
import Foundation
import Logging
import Synchronization

public struct HTTPRequest: Sendable {
    public enum Method: String, Sendable { case GET, POST, PUT, DELETE, PATCH, HEAD }

    public var method: Method
    public var url: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]?
    /// Whole-request timeout (connect + send + wait + receive).
    public var timeout: Duration

    public init(
        method: Method, url: String, headers: [(name: String, value: String)] = [], body: [UInt8]? = nil,
        timeout: Duration = .seconds(30)
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
    }

    /// A request with a JSON body and `Content-Type: application/json`.
    public static func json(
        _ method: Method, _ url: String, body: some Encodable, headers: [(name: String, value: String)] = [],
        timeout: Duration = .seconds(30)
    ) throws -> HTTPRequest {
        HTTPRequest(
            method: method, url: url, headers: headers + [("Content-Type", "application/json")],
            body: Array(try JSONEncoder().encode(body)), timeout: timeout)
    }
}

public struct HTTPResponse: Sendable {
    public let status: Int
    /// Header names lowercased; a repeated header keeps its last value.
    public let headers: [String: String]
    public let body: [UInt8]

    public var bodyText: String { String(decoding: body, as: UTF8.self) }

    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(body))
    }
}

/// A transport failure: the request got no HTTP status (refused, reset, timeout, DNS).
/// HTTP error statuses are not errors: they come back as a response.
public struct HTTPTransportError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: String
        public static let couldNotConnect = Code(raw: "could not connect")
        public static let timedOut = Code(raw: "timed out")
        /// The connection broke after the request was (partly) sent; its effect is unknown.
        public static let connectionLost = Code(raw: "connection lost")
        public static let other = Code(raw: "transport error")
        public var description: String { raw }
    }

    public let code: Code
    /// The libcurl error code (`CURLcode`).
    public let curlCode: Int
    public let message: String

    public var description: String { "http \(code): \(message)" }
}

/// One libcurl easy handle, reused across requests (keep-alive), driven from its own serial queue
/// (DESIGN §6). Cancellation sets a flag that curl's progress callback reads, which aborts the
/// transfer within a few milliseconds.
public actor HTTPConnection {
    private let executor: BlockingExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    private let handle: UnsafeMutableRawPointer
    private let redactor: Redactor
    private let logger: Logger
    private let tls: TLSFiles

    /// Files for HTTPS beyond the system's trust store: a CA to verify the server with (a private
    /// CA), and a client certificate and key for servers that require one. Paths, PEM.
    public struct TLSFiles: Sendable, Equatable {
        public var caFile: String?
        public var clientCertificateFile: String?
        public var clientKeyFile: String?

        public init(caFile: String? = nil, clientCertificateFile: String? = nil, clientKeyFile: String? = nil) {
            (self.caFile, self.clientCertificateFile, self.clientKeyFile) = (caFile, clientCertificateFile, clientKeyFile)
        }
    }

    /// - Parameter secrets: values (api keys, tokens) to scrub from every error message.
    /// - Parameter tls: CA and client certificate files for HTTPS; the server is always verified.
    public init(logger: Logger, secrets: [String] = [], tls: TLSFiles = TLSFiles()) {
        CurlGlobal.initialize()
        self.executor = BlockingExecutor(label: "outbox.http")
        self.handle = curl_easy_init()!
        self.redactor = Redactor(secrets: secrets)
        self.logger = logger
        self.tls = tls
    }

    isolated deinit {
        curl_easy_cleanup(handle)
    }

    /// Performs `request`. Returns any HTTP status as a response; throws ``HTTPTransportError``
    /// when no response arrived, or `CancellationError`. Inside a span (the task's
    /// `ServiceContext`), the request carries its `traceparent`.
    public func perform(_ request: HTTPRequest) async throws -> HTTPResponse {
        var request = request
        TraceHeaders.injectCurrent(into: &request.headers)
        let hook = CancellationHook()
        return try await withTaskCancellationHandler {
            try self.performBlocking(request, hook: hook)
        } onCancel: {
            hook.fire()
        }
    }

    private func performBlocking(_ request: HTTPRequest, hook: CancellationHook) throws -> HTTPResponse {
        executor.preconditionOnQueue()
        let h = handle
        curl_easy_reset(h)
        let transfer = Transfer(hook: hook, upload: request.body ?? [])
        let context = Unmanaged.passRetained(transfer)
        defer { context.release() }

        var headerList: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(headerList) }
        for (name, value) in request.headers {
            headerList = curl_slist_append(headerList, "\(name): \(value)")
        }
        // Qdrant and most APIs do not need 100-continue; it costs a round trip on larger bodies.
        headerList = curl_slist_append(headerList, "Expect:")

        ccurl_easy_setopt_cstr(h, CURLOPT_URL, request.url)
        if let ca = tls.caFile { ccurl_easy_setopt_cstr(h, CURLOPT_CAINFO, ca) }
        if let certificate = tls.clientCertificateFile { ccurl_easy_setopt_cstr(h, CURLOPT_SSLCERT, certificate) }
        if let key = tls.clientKeyFile { ccurl_easy_setopt_cstr(h, CURLOPT_SSLKEY, key) }
        ccurl_easy_setopt_long(h, CURLOPT_NOSIGNAL, 1)
        ccurl_easy_setopt_long(h, CURLOPT_TIMEOUT_MS, Int(max(1, request.timeout.milliseconds)))
        ccurl_easy_setopt_long(h, CURLOPT_CONNECTTIMEOUT_MS, Int(min(10_000, max(1, request.timeout.milliseconds))))
        ccurl_easy_setopt_long(h, CURLOPT_TCP_KEEPALIVE, 1)
        ccurl_easy_setopt_slist(h, CURLOPT_HTTPHEADER, headerList)
        ccurl_easy_setopt_ptr(h, CURLOPT_WRITEDATA, context.toOpaque())
        ccurl_easy_setopt_data_function(h, CURLOPT_WRITEFUNCTION, writeCallback)
        ccurl_easy_setopt_ptr(h, CURLOPT_HEADERDATA, context.toOpaque())
        ccurl_easy_setopt_data_function(h, CURLOPT_HEADERFUNCTION, headerCallback)
        ccurl_easy_setopt_long(h, CURLOPT_NOPROGRESS, 0)
        ccurl_easy_setopt_ptr(h, CURLOPT_XFERINFODATA, context.toOpaque())
        ccurl_easy_setopt_xferinfo_function(h, progressCallback)

        switch request.method {
        case .GET:
            ccurl_easy_setopt_long(h, CURLOPT_HTTPGET, 1)
        case .HEAD:
            ccurl_easy_setopt_long(h, CURLOPT_NOBODY, 1)
        default:
            ccurl_easy_setopt_cstr(h, CURLOPT_CUSTOMREQUEST, request.method.rawValue)
        }
        if request.body != nil {
            ccurl_easy_setopt_long(h, CURLOPT_UPLOAD, 1)
            ccurl_easy_setopt_off(h, CURLOPT_INFILESIZE_LARGE, curl_off_t(transfer.upload.count))
            ccurl_easy_setopt_ptr(h, CURLOPT_READDATA, context.toOpaque())
            ccurl_easy_setopt_data_function(h, CURLOPT_READFUNCTION, readCallback)
            // Lets curl rewind the body and resend it on a fresh connection when a kept-alive one
            // turns out dead mid-request (else: "rewinding of the data stream failed").
            ccurl_easy_setopt_ptr(h, CURLOPT_SEEKDATA, context.toOpaque())
            ccurl_easy_setopt_seek_function(h, seekCallback)
        }

        let code = curl_easy_perform(h)
        if code != CURLE_OK {
            if hook.isCancelled { throw CancellationError() }
            throw transportError(code, errorBuffer: nil)
        }
        var status = 0
        ccurl_easy_getinfo_long(h, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, headers: transfer.headers, body: transfer.body)
    }

    private func transportError(_ code: CURLcode, errorBuffer: String?) -> HTTPTransportError {
        let kind: HTTPTransportError.Code
        switch code {
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY:
            kind = .couldNotConnect
        case CURLE_OPERATION_TIMEDOUT:
            kind = .timedOut
        case CURLE_GOT_NOTHING, CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_PARTIAL_FILE:
            kind = .connectionLost
        default:
            kind = .other
        }
        let text = redactor.redact(String(cString: curl_easy_strerror(code)))
        return HTTPTransportError(code: kind, curlCode: Int(code.rawValue), message: text)
    }
}

/// Per-request state reached from curl's C callbacks through an `Unmanaged` pointer.
/// Only the connection's queue thread touches it, inside `curl_easy_perform`.
private final class Transfer {
    let hook: CancellationHook
    let upload: [UInt8]
    var uploadOffset = 0
    var body: [UInt8] = []
    var headers: [String: String] = [:]

    init(hook: CancellationHook, upload: [UInt8]) {
        self.hook = hook
        self.upload = upload
    }
}

private let writeCallback: ccurl_data_callback = { pointer, size, count, userdata in
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata!).takeUnretainedValue()
    let length = size * count
    if let pointer, length > 0 {
        transfer.body.append(contentsOf: UnsafeRawBufferPointer(start: pointer, count: length))
    }
    return length
}

private let headerCallback: ccurl_data_callback = { pointer, size, count, userdata in
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata!).takeUnretainedValue()
    let length = size * count
    guard let pointer, length > 0 else { return length }
    let line = String(decoding: UnsafeRawBufferPointer(start: pointer, count: length), as: UTF8.self)
    if line.hasPrefix("HTTP/") {
        transfer.headers.removeAll()  // a new response (e.g. after a redirect or 100 Continue)
    } else if let colon = line.firstIndex(of: ":") {
        let name = line[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
        let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
        transfer.headers[name] = value
    }
    return length
}

private let readCallback: ccurl_data_callback = { pointer, size, count, userdata in
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata!).takeUnretainedValue()
    let remaining = transfer.upload.count - transfer.uploadOffset
    let length = min(remaining, size * count)
    guard let pointer, length > 0 else { return 0 }
    transfer.upload.withUnsafeBytes { raw in
        UnsafeMutableRawPointer(pointer).copyMemory(from: raw.baseAddress! + transfer.uploadOffset, byteCount: length)
    }
    transfer.uploadOffset += length
    return length
}

private let seekCallback: ccurl_seek_callback = { userdata, offset, origin in
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata!).takeUnretainedValue()
    guard origin == SEEK_SET, offset >= 0, offset <= transfer.upload.count else { return CURL_SEEKFUNC_CANTSEEK }
    transfer.uploadOffset = Int(offset)
    return CURL_SEEKFUNC_OK
}

/// Returning non-zero aborts the transfer with `CURLE_ABORTED_BY_CALLBACK`.
private let progressCallback: ccurl_xferinfo_callback = { userdata, _, _, _, _ in
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata!).takeUnretainedValue()
    return transfer.hook.isCancelled ? 1 : 0
}

/// `curl_global_init` must run once before any handle is created, and is not thread-safe.
enum CurlGlobal {
    private static let once: Void = {
        curl_global_init(Int(CURL_GLOBAL_ALL))
    }()

    static func initialize() { _ = once }
}
