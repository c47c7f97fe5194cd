import Foundation
import WardenCore

/// A registry login, read from the files `podman login` and `docker login` write. The secret is
/// never printed: `description` names only the user and where the login came from.
public struct RegistryCredential: Sendable, CustomStringConvertible {
    public var username: String
    let password: String
    /// The file it came from.
    public var source: String

    public init(username: String, password: String, source: String) {
        self.username = username; self.password = password; self.source = source
    }

    /// `Basic <base64(user:password)>`.
    var basicAuthorization: String { "Basic " + Data((username + ":" + password).utf8).base64EncodedString() }

    public var description: String { "\(username) (from \(source))" }

    /// The login for `registry` from the usual auth files, in containers-auth.json(5)'s order:
    /// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `~/.config/containers/auth.json`, then Docker's `$DOCKER_CONFIG/config.json` (or
    /// `~/.docker/config.json`). A file given explicitly (`--auth-file`) is the only one read.
    /// Credential helpers (`credHelpers`, `credsStore`) are not run: they are named in the error.
    public static func lookup(registry: String, authFile: String? = nil,
                              environment: [String: String] = ProcessInfo.processInfo.environment) throws -> RegistryCredential? {
        var files: [String] = []
        if let authFile {
            files = [authFile]
        } else {
            if let f = environment["REGISTRY_AUTH_FILE"], !f.isEmpty { files.append(f) }
            if let r = environment["XDG_RUNTIME_DIR"], !r.isEmpty { files.append(r + "/containers/auth.json") }
            let home = environment["HOME"] ?? NSHomeDirectory()
            files.append(home + "/.config/containers/auth.json")
            files.append((environment["DOCKER_CONFIG"].map { $0 + "/config.json" }) ?? home + "/.docker/config.json")
        }
        for file in files {
            guard FileManager.default.fileExists(atPath: file) else {
                if authFile != nil { throw WardenError(.notFound, "no such auth file", file: file) }
                continue
            }
            if let c = try read(file: file, registry: registry) { return c }
        }
        return nil
    }

    static func read(file: String, registry: String) throws -> RegistryCredential? {
        guard let data = FileManager.default.contents(atPath: file) else { throw WardenError(.io, "cannot read the auth file", file: file) }
        struct Entry: Decodable { var auth: String?; var username: String?; var password: String? }
        struct Doc: Decodable { var auths: [String: Entry]?; var credHelpers: [String: String]? }
        let doc = try BoundedJSON.decode(Doc.self, from: Array(data), limit: RegistryLimits.smallBody, what: "auth file \(file)")
        if let helper = doc.credHelpers?[registry] {
            throw WardenError(.unsupported, "the login for \(registry) is kept by the credential helper \(helper.debugDescription), which Warden does not run; use --auth-file", file: file)
        }
        // Keys may be `host`, `host/path`, or a URL (`https://host/v1/`, Docker's old form).
        for (key, entry) in doc.auths ?? [:] {
            var k = key
            for p in ["https://", "http://"] where k.hasPrefix(p) { k.removeFirst(p.count) }
            if let slash = k.firstIndex(of: "/") { k = String(k[..<slash]) }
            guard k == registry else { continue }
            if let auth = entry.auth, !auth.isEmpty {
                guard let raw = Data(base64Encoded: auth), let text = String(data: raw, encoding: .utf8),
                      let colon = text.firstIndex(of: ":") else {
                    throw WardenError(.corrupt, "the login for \(registry) is not base64 of user:password", file: file)
                }
                return RegistryCredential(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]), source: file)
            }
            if let u = entry.username, let p = entry.password { return RegistryCredential(username: u, password: p, source: file) }
        }
        return nil
    }
}
