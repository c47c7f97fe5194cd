import ArgumentParser
import Foundation
import WardenConfig
import WardenCore
import Advisories
import Ledger
import AdvisoryStorage

extension AdvisoriesCommand {
    /// `warden advisories update`: fetch the canonical feeds and import them.
    struct Update: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "update",
            abstract: "Fetch the canonical advisory feeds and import them.",
            discussion: """
            Sources: `debian` (the Debian Security Tracker JSON), `osv:ECOSYSTEM` (OSV's all.zip for \
            one ecosystem, e.g. osv:Debian, osv:Alpine, "osv:Rocky Linux"), `alpine:vX.Y[/REPO]` \
            (Alpine secdb), or an http(s) URL of any supported file. Without --source: the Debian \
            tracker plus the OSV and secdb feeds of every stored inventory's distro (OSV Debian when \
            there are none). Base URLs can be overridden with WARDEN_OSV_URL, WARDEN_DEBIAN_TRACKER_URL \
            and WARDEN_ALPINE_SECDB_URL. Downloads use curl; an unreachable feed fails within the timeout \
            with exit code 4.
            
            Examples:
              warden advisories update
              warden advisories update --source debian --source osv:Debian:12
            """
        )
        @OptionGroup var database: DatabaseOption
        @Flag(help: "Print JSON.") var json = false
        @Option(name: .customLong("source"), help: ArgumentHelp("A feed name or URL (repeatable).", valueName: "name|url"))
        var sources: [String] = []
        @Option(help: ArgumentHelp("Seconds allowed for each download.", valueName: "seconds"))
        var timeout: Int = 120

        func validate() throws {
            if timeout < 1 || timeout > 86_400 { throw ValidationError("--timeout must be between 1 and 86400 seconds") }
        }

        struct Feed { var name: String; var url: String; var fileName: String }

        static func feed(_ spec: String) throws -> Feed {
            if spec.hasPrefix("http://") || spec.hasPrefix("https://") {
                let last = spec.split(separator: "/").last.map(String.init) ?? "feed"
                return Feed(name: spec, url: spec, fileName: last.hasSuffix(".zip") ? "feed.zip" : "feed.json")
            }
            if spec == "debian" || spec == "debian-tracker" {
                return Feed(name: spec, url: ConfigKey.debianTrackerURL.value()!, fileName: "tracker.json")
            }
            if spec.hasPrefix("osv:") {
                let eco = String(spec.dropFirst(4)).split(separator: ":").first.map(String.init) ?? ""
                guard !eco.isEmpty, eco.allSatisfy({ $0.isLetter || $0.isNumber || $0 == " " || $0 == "." || $0 == "-" }) else {
                    throw WardenError(.invalidArgument, "bad OSV ecosystem in --source \(spec)")
                }
                let path = eco.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? eco
                return Feed(name: spec, url: ConfigKey.osvURL.value()! + "/\(path)/all.zip", fileName: "all.zip")
            }
            if spec.hasPrefix("alpine:") {
                let rest = String(spec.dropFirst(7))
                let parts = rest.split(separator: "/")
                guard let branch = parts.first, branch.range(of: #"^v[0-9]+\.[0-9]+$"#, options: .regularExpression) != nil,
                      parts.count <= 2 else {
                    throw WardenError(.invalidArgument, "bad Alpine branch in --source \(spec) (expected alpine:v3.18 or alpine:v3.18/community)")
                }
                let repo = parts.count == 2 ? String(parts[1]) : "main"
                guard repo.allSatisfy({ $0.isLetter || $0.isNumber }) else { throw WardenError(.invalidArgument, "bad Alpine repository in --source \(spec)") }
                return Feed(name: spec, url: ConfigKey.alpineSecdbURL.value()! + "/\(branch)/\(repo).json", fileName: "secdb.json")
            }
            throw WardenError(.invalidArgument, "unknown advisory source \(spec) (debian, osv:ECOSYSTEM, alpine:vX.Y, or a URL)")
        }

        /// Default feeds: Debian tracker plus what the stored inventories need.
        static func defaultFeeds(_ store: AdvisoryStore) throws -> [String] {
            var out = ["debian"]
            var osv = Set<String>()
            for inv in try store.inventories() {
                guard let eco = inv.ecosystem?.names.first else { continue }
                let base = eco.split(separator: ":").first.map(String.init) ?? eco
                osv.insert("osv:" + base)
                if base == "Alpine" { out.append("alpine:" + eco.dropFirst("Alpine:".count)) }
            }
            if osv.isEmpty { osv.insert("osv:Debian") }
            return out + osv.sorted()
        }

        /// Downloads `url` to `dest` with curl; failures are `.unavailable` with curl's reason.
        static func download(_ url: String, to dest: String, timeout: Int) throws {
            let curl = try ToolProcess.find("curl", package: "curl")
            let r = try ToolProcess.run(curl, ["--fail", "--silent", "--show-error", "--location",
                                               "--proto", "=http,https", "--proto-redir", "=http,https",
                                               "--connect-timeout", String(min(timeout, 10)), "--max-time", String(timeout),
                                               "--max-filesize", String(1 << 30), "-o", dest, url],
                                        timeout: TimeInterval(timeout) + 10)
            guard r.status == 0 else {
                let why = String(decoding: r.stderr, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? "curl exited \(r.status)"
                throw WardenError(.unavailable, "cannot fetch \(url): \(oneLine(why))")
            }
        }

        func run() throws {
            let store = SQLiteAdvisoryStore(try database.open())
            let specs = sources.isEmpty ? try Self.defaultFeeds(store) : sources
            let feeds = try specs.map(Self.feed)
            let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("warden-update-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
            try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            defer { try? FileManager.default.removeItem(atPath: tmp) }
            var results: [ImportResult] = []
            var failures: [WardenError] = []
            let meter = ProgressMeter("advisories update", total: UInt64(feeds.count), unit: .items("feeds"))
            defer { meter.finish() }
            for (i, f) in feeds.enumerated() {
                defer { meter.advance() }
                let dest = "\(tmp)/\(i)-\(f.fileName)"
                do {
                    try Self.download(f.url, to: dest, timeout: timeout)
                    results.append(try AdvisoriesCommand.importPath(dest, location: f.url, store: store))
                    try? FileManager.default.removeItem(atPath: dest)
                } catch let e as WardenError {
                    var e = e
                    if e.file == dest { e.file = f.url }
                    failures.append(e)
                }
            }
            struct Doc: Encodable { var schema = "warden.advisories-import/v1"; var imports: [ImportResult]; var advisories: Int; var failed: [String] }
            try Output.render(Doc(imports: results, advisories: try store.advisoryCount(), failed: failures.map(\.description)), json: json) {
                results.forEach(AdvisoriesCommand.printImport)
            }
            Output.stdout.flush()
            for e in failures { Output.error(e.description) }
            if let worst = failures.max(by: { $0.exitCode < $1.exitCode }) { throw ExitCode(worst.exitCode) }
        }
    }
}
