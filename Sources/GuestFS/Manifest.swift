import Crypto
import WardenCore

/// Escapes guest bytes (names, link targets) for one-line, tab-separated output.
///
/// Valid UTF-8 is kept, except that `\` becomes `\\`, tab `\t`, newline `\n`,
/// carriage return `\r`, and any other control byte, invalid UTF-8 byte or byte of a C1 or
/// bidirectional control character (``TerminalText/isUnsafe(_:)``) becomes `\xNN`. The result
/// never contains a tab or a newline.
public enum ManifestEscaping {
    public static func escape(_ bytes: [UInt8]) -> String {
        // Fast path: plain printable ASCII.
        if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F && $0 != 0x5C }) {
            return String(decoding: bytes, as: UTF8.self)
        }
        var out = ""
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            switch b {
            case 0x5C: out += "\\\\"; i += 1; continue
            case 0x09: out += "\\t"; i += 1; continue
            case 0x0A: out += "\\n"; i += 1; continue
            case 0x0D: out += "\\r"; i += 1; continue
            case 0..<0x20, 0x7F: out += hexByte(b); i += 1; continue
            case 0x20..<0x7F: out.unicodeScalars.append(Unicode.Scalar(b)); i += 1; continue
            default: break
            }
            // Multi-byte UTF-8: validate the sequence length and continuation bytes.
            let len = b >= 0xF0 && b <= 0xF4 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 && b <= 0xDF ? 2 : 0
            if len > 0, i + len <= bytes.count {
                let seq = Array(bytes[i..<i + len])
                if seq.dropFirst().allSatisfy({ $0 & 0xC0 == 0x80 }),
                   let s = String(validating: seq, as: UTF8.self) {
                    // C1 and bidi controls are valid UTF-8 but act on terminals: their bytes as \xNN.
                    if s.unicodeScalars.contains(where: TerminalText.isUnsafe) {
                        for byte in seq { out += hexByte(byte) }
                    } else {
                        out += s
                    }
                    i += len
                    continue
                }
            }
            out += hexByte(b)
            i += 1
        }
        return out
    }

    static func hexByte(_ b: UInt8) -> String {
        let d = Array("0123456789abcdef")
        return "\\x" + String(d[Int(b >> 4)]) + String(d[Int(b & 0xF)])
    }
}

/// One line of a manifest.
public struct ManifestEntry: Sendable, Equatable {
    public var type: FileType
    public var permissions: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Byte size for regular files and symlinks, 0 otherwise.
    public var size: UInt64
    /// sha256 (lowercase hex) of a regular file, the escaped target of a symlink, `-` otherwise.
    public var digest: String
    /// Absolute guest path, raw bytes.
    public var path: [UInt8]

    /// `TYPE<TAB>MODE<TAB>UID<TAB>GID<TAB>SIZE<TAB>DIGEST<TAB>PATH`
    public var line: String {
        var mode = String(permissions, radix: 8)
        if mode.count < 4 { mode = String(repeating: "0", count: 4 - mode.count) + mode }
        return "\(type.rawValue)\t\(mode)\t\(uid)\t\(gid)\t\(size)\t\(digest)\t\(ManifestEscaping.escape(path))"
    }
}

/// Walks a filesystem and produces its manifest, sorted by path (byte order),
/// streaming: memory grows with the depth and the widest directory, not the tree.
public struct ManifestBuilder {
    public let fs: any FileSystem
    /// Deepest directory nesting walked.
    public var maxDepth = 1024
    /// Per-entry failures (unreadable files, directory cycles); the walk goes on.
    public private(set) var errors: [WardenError] = []

    public init(_ fs: any FileSystem) { self.fs = fs }

    private enum Item {
        case entry(DirectoryEntry)
        case subtree(DirectoryEntry)
    }

    /// Walks the whole tree from `/`, calling `emit` for each entry in sorted order.
    public mutating func build(_ emit: (ManifestEntry) throws -> Void) throws {
        let rootStat = try fs.stat(fs.rootInode)
        guard rootStat.type == .directory else {
            throw WardenError.corrupt("the root inode \(fs.rootInode) is not a directory")
        }
        try emit(ManifestEntry(type: .directory, permissions: rootStat.permissions, uid: rootStat.uid,
                               gid: rootStat.gid, size: 0, digest: "-", path: [0x2F]))
        var visited: Set<UInt64> = [fs.rootInode]
        try walk(fs.rootInode, prefix: [0x2F], depth: 0, visited: &visited, emit)
    }

    private mutating func walk(_ dir: UInt64, prefix: [UInt8], depth: Int, visited: inout Set<UInt64>,
                               _ emit: (ManifestEntry) throws -> Void) throws {
        guard depth < maxDepth else {
            errors.append(WardenError.limit("\(ManifestEscaping.escape(prefix)): directories nested deeper than \(maxDepth) levels"))
            return
        }
        let entries: [DirectoryEntry]
        do {
            entries = try fs.readDirectory(dir)
        } catch let e as WardenError {
            errors.append(WardenError(e.code, "\(ManifestEscaping.escape(prefix)): \(e.message)"))
            return
        }
        var items: [([UInt8], Item)] = []
        items.reserveCapacity(entries.count * 2)
        var stats: [UInt64: FileStat] = [:]
        for e in entries {
            guard !e.nameBytes.isEmpty, !e.nameBytes.contains(0x2F), !e.nameBytes.contains(0) else {
                errors.append(WardenError.corrupt("\(ManifestEscaping.escape(prefix)): directory entry with an invalid name"))
                continue
            }
            items.append((e.nameBytes, .entry(e)))
            let st: FileStat
            do { st = try fs.stat(e.inode) } catch let err as WardenError {
                errors.append(WardenError(err.code, "\(ManifestEscaping.escape(prefix + e.nameBytes)): \(err.message)"))
                continue
            }
            stats[e.inode] = st
            if st.type == .directory { items.append((e.nameBytes + [0x2F], .subtree(e))) }
        }
        items.sort { $0.0.lexicographicallyPrecedes($1.0) }
        for (_, item) in items {
            switch item {
            case .entry(let e):
                guard let st = stats[e.inode] else { continue }
                let path = prefix + e.nameBytes
                var digest = "-"
                var size: UInt64 = 0
                switch st.type {
                case .regular:
                    size = st.size
                    do {
                        var h = SHA256()
                        try fs.forEachChunk(e.inode, chunkSize: 1 << 20) { h.update(data: $0) }
                        digest = h.finalize().map { String(format2: $0) }.joined()
                    } catch let err as WardenError {
                        errors.append(WardenError(err.code, "\(ManifestEscaping.escape(path)): \(err.message)"))
                        digest = "?"
                    }
                case .symlink:
                    size = st.size
                    do { digest = ManifestEscaping.escape(try fs.readLink(e.inode)) } catch let err as WardenError {
                        errors.append(WardenError(err.code, "\(ManifestEscaping.escape(path)): \(err.message)"))
                        digest = "?"
                    }
                default: break
                }
                try emit(ManifestEntry(type: st.type, permissions: st.permissions, uid: st.uid, gid: st.gid,
                                       size: size, digest: digest, path: path))
            case .subtree(let e):
                guard visited.insert(e.inode).inserted else {
                    errors.append(WardenError.corrupt("\(ManifestEscaping.escape(prefix + e.nameBytes)): directory inode \(e.inode) is linked more than once (cycle); not descending"))
                    continue
                }
                try walk(e.inode, prefix: prefix + e.nameBytes + [0x2F], depth: depth + 1, visited: &visited, emit)
            }
        }
    }
}

extension String {
    /// Two lowercase hex digits.
    init(format2 b: UInt8) {
        let d = Array("0123456789abcdef")
        self = String(d[Int(b >> 4)]) + String(d[Int(b & 0xF)])
    }
}
