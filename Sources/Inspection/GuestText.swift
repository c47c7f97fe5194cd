import WardenCore
import GuestFS

/// The outcome of loading one guest file for a reader: absent, loaded, or failed with a reason.
enum GuestLoad {
    case absent
    case bytes([UInt8])
    case failed(String)

    var text: String? {
        if case .bytes(let b) = self { return String(decoding: b, as: UTF8.self) }
        return nil
    }
}

/// Limits applied to guest text so hostile files cannot exhaust memory or time.
enum TextLimits {
    static let maxLines = 200_000
    static let maxLineLength = 64 * 1024
    static let maxEntries = 100_000
}

extension GuestFiles {
    /// Loads `path` (following guest symlinks) without throwing: errors become a reason.
    func load(_ path: String, maxBytes: Int? = nil) -> GuestLoad {
        do {
            var g = self
            if let maxBytes { g.maxFileSize = min(maxFileSize, maxBytes) }
            guard let b = try g.read(path) else { return .absent }
            return .bytes(b)
        } catch {
            return .failed("\(path): \(error)")
        }
    }

    /// The first `count` bytes of the regular file at `path` (or fewer), or nil if absent.
    func readPrefix(_ path: String, count: Int) throws -> [UInt8]? {
        let r: GuestPathResolver.Resolved
        do { r = try GuestPathResolver(fs).resolve(path) } catch let e as WardenError where e.code == .notFound {
            return nil
        }
        guard r.stat.type == .regular else {
            throw WardenError(.invalidArgument, "\(path) is not a regular file")
        }
        let n = Int(min(UInt64(count), r.stat.size))
        return try fs.read(r.inode, at: 0, count: n)
    }

    /// Names in the directory at `path`, sorted bytewise; empty if absent or unreadable.
    func names(in path: String, limit: Int = TextLimits.maxEntries) -> [String] {
        guard let entries = try? list(path) else { return [] }
        return Array(entries.map(\.name).sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }.prefix(limit))
    }

    /// True if `path` exists (without following a final symlink).
    func exists(_ path: String) -> Bool { ((try? lstat(path)) ?? nil) != nil }

    /// The entry type at `path` after following symlinks, or nil.
    func resolvedType(_ path: String) -> FileType? {
        (try? GuestPathResolver(fs).resolve(path))?.stat.type
    }

    /// The canonical guest path of `path` after following symlinks, or nil.
    func canonical(_ path: String) -> String? {
        (try? GuestPathResolver(fs).resolve(path)).map { String(decoding: $0.canonicalPath, as: UTF8.self) }
    }
}

/// Splits text into at most `TextLimits.maxLines` lines (LF or CRLF), each capped in length.
func boundedLines(_ text: String) -> [Substring] {
    var out: [Substring] = []
    for line in text.split(separator: "\n", maxSplits: TextLimits.maxLines, omittingEmptySubsequences: false) {
        if out.count >= TextLimits.maxLines { break }
        var l = line
        if l.hasSuffix("\r") { l = l.dropLast() }
        if l.utf8.count > TextLimits.maxLineLength { l = l.prefix(TextLimits.maxLineLength) }
        out.append(l)
    }
    return out
}

extension StringProtocol {
    var trimmedWS: String {
        let s = self.drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" })
        var e = s.endIndex
        while e > s.startIndex {
            let p = s.index(before: e)
            if s[p] == " " || s[p] == "\t" || s[p] == "\r" || s[p] == "\n" { e = p } else { break }
        }
        return String(s[s.startIndex..<e])
    }
}

/// Formats a permission mode like `0600`.
func octalMode(_ mode: UInt32) -> String {
    let s = String(mode & 0o7777, radix: 8)
    return String(repeating: "0", count: max(0, 4 - s.count)) + s
}

/// Shell-style glob matching of one path component (`*`, `?`, `[...]`), iterative, no backtracking blowup.
func globMatch(_ pattern: String, _ name: String) -> Bool {
    let p = Array(pattern.unicodeScalars), n = Array(name.unicodeScalars)
    var pi = 0, ni = 0, starP = -1, starN = 0
    func matchClass(_ at: Int, _ c: Unicode.Scalar) -> (Bool, Int)? {
        // Returns (matched, index after ']') or nil if not a valid class.
        var i = at + 1
        var negate = false
        if i < p.count, p[i] == "!" || p[i] == "^" { negate = true; i += 1 }
        var matched = false, first = true
        while i < p.count, p[i] != "]" || first {
            first = false
            if i + 2 < p.count, p[i + 1] == "-", p[i + 2] != "]" {
                if p[i].value <= c.value && c.value <= p[i + 2].value { matched = true }
                i += 3
            } else {
                if p[i] == c { matched = true }
                i += 1
            }
        }
        guard i < p.count else { return nil }
        return (matched != negate, i + 1)
    }
    while ni < n.count {
        if pi < p.count {
            if p[pi] == "*" { starP = pi; starN = ni; pi += 1; continue }
            if p[pi] == "?" { pi += 1; ni += 1; continue }
            if p[pi] == "[", let (ok, next) = matchClass(pi, n[ni]) {
                if ok { pi = next; ni += 1; continue }
            } else if p[pi] == n[ni] { pi += 1; ni += 1; continue }
        }
        if starP >= 0 { pi = starP + 1; starN += 1; ni = starN; continue }
        return false
    }
    while pi < p.count, p[pi] == "*" { pi += 1 }
    return pi == p.count
}
