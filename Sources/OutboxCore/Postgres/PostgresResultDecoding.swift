import CLibPQ
import Foundation

extension PostgresConnection {
    /// Turns a finished `PGresult` into rows, or throws its error. A missing result means the
    /// connection broke.
    func check(_ result: OpaquePointer?, conn: OpaquePointer) throws(PostgresError) -> PostgresResult {
        guard let result else { throw connectionError(conn) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            return PostgresResult(columns: [], rows: [], affectedRows: affectedRows(result))
        case PGRES_TUPLES_OK, PGRES_SINGLE_TUPLE:
            return decodeRows(result)
        default:
            if PQstatus(conn) != CONNECTION_OK { throw connectionError(conn) }
            throw PostgresError.server(result, redactor: redactor)
        }
    }

    private func affectedRows(_ result: OpaquePointer) -> Int {
        Int(String(cString: PQcmdTuples(result))) ?? 0
    }

    private func decodeRows(_ result: OpaquePointer) -> PostgresResult {
        let rowCount = Int(PQntuples(result))
        let columnCount = Int(PQnfields(result))
        var names: [String] = []
        var index: [String: Int] = [:]
        var types: [UInt32] = []
        for c in 0..<columnCount {
            let name = String(cString: PQfname(result, Int32(c)))
            names.append(name)
            if index[name] == nil { index[name] = c }
            types.append(PQftype(result, Int32(c)))
        }
        var rows: [PostgresRow] = []
        rows.reserveCapacity(rowCount)
        for r in 0..<rowCount {
            var values: [PostgresValue] = []
            values.reserveCapacity(columnCount)
            for c in 0..<columnCount {
                if PQgetisnull(result, Int32(r), Int32(c)) == 1 {
                    values.append(.null)
                    continue
                }
                let length = Int(PQgetlength(result, Int32(r), Int32(c)))
                let raw = UnsafeRawPointer(PQgetvalue(result, Int32(r), Int32(c))!)
                let bytes = UnsafeBufferPointer(start: raw.assumingMemoryBound(to: UInt8.self), count: length)
                values.append(Self.decodeText(bytes, type: types[c]))
            }
            rows.append(PostgresRow(columnIndex: index, values: values))
        }
        return PostgresResult(columns: names, rows: rows, affectedRows: affectedRows(result))
    }

    static func decodeText(_ bytes: UnsafeBufferPointer<UInt8>, type: UInt32) -> PostgresValue {
        let text = { String(decoding: bytes, as: UTF8.self) }
        switch type {
        case PostgresOID.int2, PostgresOID.int4, PostgresOID.int8, PostgresOID.oid:
            return Int64(text()).map(PostgresValue.int) ?? .text(text())
        case PostgresOID.bool:
            return .bool(bytes.first == UInt8(ascii: "t"))
        case PostgresOID.float4, PostgresOID.float8:
            switch text() {
            case "NaN": return .double(.nan)
            case "Infinity": return .double(.infinity)
            case "-Infinity": return .double(-.infinity)
            case let s: return Double(s).map(PostgresValue.double) ?? .text(s)
            }
        case PostgresOID.uuid:
            return UUID(uuidString: text()).map(PostgresValue.uuid) ?? .text(text())
        case PostgresOID.json, PostgresOID.jsonb:
            return .jsonb(text())
        case PostgresOID.timestamptz, PostgresOID.timestamp:
            return PostgresText.parseTimestamp(bytes).map(PostgresValue.timestamptz) ?? .text(text())
        case PostgresOID.bytea:
            return PostgresText.parseByteaHex(bytes).map(PostgresValue.bytea) ?? .text(text())
        default:
            return .text(text())
        }
    }
}

extension PostgresError {
    /// The server's error in `result`: SQLSTATE, message, detail and hint, secrets redacted.
    static func server(_ result: OpaquePointer, redactor: Redactor) -> PostgresError {
        func field(_ code: Int32) -> String? {
            PQresultErrorField(result, code).map { redactor.redact(String(cString: $0)) }
        }
        return PostgresError(
            code: .server,
            sqlState: field(Int32(UInt8(ascii: "C"))),
            message: field(Int32(UInt8(ascii: "M"))) ?? redactor.redact(String(cString: PQresultErrorMessage(result))),
            detail: field(Int32(UInt8(ascii: "D"))),
            hint: field(Int32(UInt8(ascii: "H"))))
    }
}
