import WardenCore

extension VMDK {
    /// A parsed VMDK text descriptor.
    public struct Descriptor: Sendable, Equatable {
        public enum Access: String, Sendable, Equatable {
            case readWrite = "RW", readOnly = "RDONLY", noAccess = "NOACCESS"
        }
        public enum ExtentType: String, Sendable, Equatable {
            case flat = "FLAT", sparse = "SPARSE", zero = "ZERO", vmfs = "VMFS"
            case vmfsSparse = "VMFSSPARSE", vmfsRDM = "VMFSRDM", vmfsRaw = "VMFSRAW", seSparse = "SESPARSE"
        }
        public struct ExtentLine: Sendable, Equatable {
            public var access: Access
            /// Size of the extent in 512-byte sectors.
            public var sectors: UInt64
            public var type: ExtentType
            /// The extent file as written (relative to the descriptor); nil for ZERO.
            public var fileName: String?
            /// Start of the extent inside a FLAT file, in sectors.
            public var offset: UInt64
        }

        public var version: String?
        public var cid: String?
        public var parentCID: String?
        public var createType: String?
        public var parentFileNameHint: String?
        public var extents: [ExtentLine] = []

        /// Parses descriptor text. Unknown lines are ignored; malformed extent lines throw.
        public init(parsing bytes: [UInt8], file: String? = nil) throws {
            // An embedded descriptor is NUL-padded to whole sectors.
            let end = bytes.firstIndex(of: 0) ?? bytes.count
            let text = String(decoding: bytes[..<end], as: UTF8.self)
            var lineNo = 0
            for raw in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r" }) {
                lineNo += 1
                let line = raw.trimmingSpaces()
                if line.isEmpty || line.hasPrefix("#") { continue }
                if let eq = line.firstIndex(of: "="), !Descriptor.startsWithAccess(line) {
                    let key = String(line[..<eq]).trimmingSpaces()
                    let value = Descriptor.unquote(String(line[line.index(after: eq)...]).trimmingSpaces())
                    switch key {
                    case "version": version = value
                    case "CID": cid = value
                    case "parentCID": parentCID = value
                    case "createType": createType = value
                    case "parentFileNameHint": parentFileNameHint = value
                    default: break
                    }
                    continue
                }
                if Descriptor.startsWithAccess(line) {
                    guard extents.count < VMDK.maxExtents else {
                        throw WardenError.limit("VMDK descriptor lists more than \(VMDK.maxExtents) extents", file: file)
                    }
                    extents.append(try Descriptor.parseExtent(line, lineNo: lineNo, file: file))
                }
            }
        }

        static func startsWithAccess(_ line: String) -> Bool {
            for a in ["RW ", "RDONLY ", "NOACCESS ", "RW\t", "RDONLY\t", "NOACCESS\t"] where line.hasPrefix(a) { return true }
            return false
        }

        static func unquote(_ s: String) -> String {
            if s.count >= 2, s.hasPrefix("\""), s.hasSuffix("\"") { return String(s.dropFirst().dropLast()) }
            return s
        }

        /// `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`; the file name may contain spaces.
        static func parseExtent(_ line: String, lineNo: Int, file: String?) throws -> ExtentLine {
            func bad(_ why: String) -> WardenError {
                WardenError.corrupt("VMDK descriptor line \(lineNo): \(why)", file: file)
            }
            var rest = Substring(line)
            func word() -> String? {
                rest = rest.drop(while: { $0 == " " || $0 == "\t" })
                guard !rest.isEmpty else { return nil }
                let w = rest.prefix(while: { $0 != " " && $0 != "\t" })
                rest = rest.dropFirst(w.count)
                return String(w)
            }
            guard let a = word(), let access = Access(rawValue: a) else { throw bad("unknown extent access mode") }
            guard let s = word(), let sectors = UInt64(s) else { throw bad("extent size is not a number") }
            guard let t = word() else { throw bad("missing extent type") }
            guard let type = ExtentType(rawValue: t) else { throw bad("unknown extent type \"\(t.prefix(16))\"") }
            var fileName: String?
            var offset: UInt64 = 0
            rest = rest.drop(while: { $0 == " " || $0 == "\t" })
            if rest.hasPrefix("\"") {
                rest = rest.dropFirst()
                guard let close = rest.firstIndex(of: "\"") else { throw bad("unterminated extent file name") }
                fileName = String(rest[..<close])
                rest = rest[rest.index(after: close)...]
                if let o = word() {
                    guard let v = UInt64(o) else { throw bad("extent offset is not a number") }
                    offset = v
                }
            } else if !rest.isEmpty {
                throw bad("extent file name is not quoted")
            }
            if type != .zero && fileName == nil { throw bad("\(type.rawValue) extent has no file name") }
            return ExtentLine(access: access, sectors: sectors, type: type, fileName: fileName, offset: offset)
        }
    }
}

extension StringProtocol {
    func trimmingSpaces() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = lastIndex(where: { !isSpace($0) })!
        return String(self[first...last])
    }
}
