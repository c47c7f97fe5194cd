import Foundation
import WardenCore

/// A patch source: an apt repository the maintenance boot may reach, and nothing else.
///
/// - a **directory** on this host, served by Warden for the duration of the boot (each
///   connection of the appliance is answered by `warden internal mirror-pipe`, started by
///   QEMU's user network for that connection: no port is opened on the host);
/// - an **HTTP URL**, relayed to that host and port only.
///
/// Inside the appliance the mirror is always `http://10.0.2.100/…`, the one address QEMU's
/// restricted user network forwards.
public struct Mirror: Sendable, Equatable {
    public enum Source: Sendable, Equatable {
        case directory(String)
        case url(host: String, port: Int, path: String)
    }
    public var source: Source
    /// The apt suite: `./` for a flat repository, else a codename (`bookworm`).
    public var suite: String
    /// The components (empty for a flat repository).
    public var components: [String]
    /// An OpenPGP keyring the repository is signed with (`signed-by`); nil: `trusted=yes`.
    public var keyring: String?

    /// The address the appliance reaches the mirror at (QEMU's guestfwd).
    public static let applianceAddress = "10.0.2.100"

    /// How the ledger and policy name it: `dir:/srv/mirror` or the URL.
    public var name: String {
        switch source {
        case .directory(let d): return "dir:" + d
        case .url(let host, let port, let path):
            let h = host.contains(":") ? "[\(host)]" : host
            return "http://\(h)\(port == 80 ? "" : ":\(port)")\(path)"
        }
    }

    /// Parses `--mirror`: an `http://host[:port]/path` URL or an existing directory.
    /// `suite` nil: flat (`./`) when the directory (or URL path) holds a flat index, else
    /// `defaultSuite` with `components`.
    public static func parse(_ text: String, suite: String?, components: [String], keyring: String?,
                             defaultSuite: String?, allowUnsigned: Bool) throws -> Mirror {
        let source: Source
        if text.hasPrefix("http://") {
            guard let u = URLComponents(string: text), let host = u.host, !host.isEmpty, u.user == nil, u.password == nil,
                  u.query == nil, u.fragment == nil else {
                throw WardenError(.invalidArgument, "not a plain http://host[:port]/path URL (no credentials, query or fragment)", file: text)
            }
            let port = u.port ?? 80
            guard (1...65535).contains(port) else { throw WardenError(.invalidArgument, "bad port", file: text) }
            var path = u.percentEncodedPath.isEmpty ? "/" : u.percentEncodedPath
            if !path.hasSuffix("/") { path += "/" }
            guard Self.safeURLPath(path), Self.safeHost(host) else {
                throw WardenError(.invalidArgument, "the URL has characters a mirror URL does not need", file: text)
            }
            source = .url(host: host, port: port, path: path)
        } else if text.contains("://") {
            throw WardenError(.invalidArgument, "only http:// mirrors are relayed (apt checks the repository's signature; use --mirror-key)", file: text)
        } else {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: text, isDirectory: &isDir), isDir.boolValue else {
                throw WardenError(.notFound, "no such mirror directory", file: text)
            }
            guard let real = realpath(text, nil) else { throw WardenError(.io, "cannot resolve the mirror directory", file: text) }
            defer { free(real) }
            source = .directory(String(cString: real))
        }
        if keyring == nil && !allowUnsigned {
            if case .url = source {
                throw WardenError(.invalidArgument, "an HTTP mirror needs --mirror-key KEYRING (or --trust-mirror to accept it unsigned)", file: text)
            }
        }
        if let k = keyring {
            guard FileManager.default.isReadableFile(atPath: k) else { throw WardenError(.notFound, "no such keyring", file: k) }
            let size = (try? FileManager.default.attributesOfItem(atPath: k)[.size] as? Int) ?? 0
            guard size > 0, size <= 1 << 20 else { throw WardenError(.invalidArgument, "the keyring is empty or larger than 1 MiB", file: k) }
        }
        var m = Mirror(source: source, suite: "./", components: [], keyring: keyring)
        if let s = suite {
            m.suite = s
        } else if case .directory(let d) = source, ["Packages", "Packages.gz", "Packages.xz"].contains(where: { FileManager.default.fileExists(atPath: d + "/" + $0) }) {
            m.suite = "./"
        } else if let d = defaultSuite {
            m.suite = d
        }
        if m.suite != "./" { m.components = components.isEmpty ? ["main"] : components }
        guard m.suite == "./" || Self.safeWord(m.suite), m.components.allSatisfy(Self.safeWord) else {
            throw WardenError(.invalidArgument, "bad suite or component (letters, digits, . _ - /)", file: text)
        }
        return m
    }

    /// The apt sources line the appliance uses.
    public var sourcesLine: String {
        let path: String
        switch source {
        case .directory: path = "/"
        case .url(_, _, let p): path = p
        }
        let option = keyring == nil ? "[trusted=yes]" : "[signed-by=/run/warden/mirror.gpg]"
        return (["deb", option, "http://\(Self.applianceAddress)\(path)", suite] + components).joined(separator: " ")
    }

    /// The command QEMU runs for each connection to the mirror (`guestfwd=…-cmd:`).
    public func pipeCommand(executable: String) -> [String] {
        switch source {
        case .directory(let d): return [executable, "internal", "mirror-pipe", "--dir", d]
        case .url(let host, let port, _): return [executable, "internal", "mirror-pipe", "--connect", "\(host):\(port)"]
        }
    }

    static func safeWord(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 64 && s.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) && $0.isASCII || "._-/".unicodeScalars.contains($0) } && !s.contains("..")
    }

    static func safeURLPath(_ s: String) -> Bool {
        s.count <= 512 && s.hasPrefix("/") && !s.split(separator: "/").contains("..")
            && s.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "/._-~%+".unicodeScalars.contains($0)) }
    }

    static func safeHost(_ s: String) -> Bool {
        s.count <= 253 && s.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || ".-:".unicodeScalars.contains($0)) }
    }
}
