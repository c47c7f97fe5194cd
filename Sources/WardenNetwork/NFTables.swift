import Foundation
import WardenCore

/// Runs `nft` (from Debian's nftables): a script on standard input as one transaction, and the
/// table's counters as JSON. Never through a shell; every name in a script was checked first.
public struct NFTables: Sendable {
    public let binary: String
    public init(binary: String? = nil) {
        self.binary = binary ?? ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "nft"
    }

    public var available: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    /// Applies `script` atomically (`nft -f -`).
    public func apply(_ script: String) throws {
        _ = try run(["-f", "-"], input: script)
    }

    /// Packets dropped per counter name in Warden's table (empty when the table does not exist).
    public func counters() throws -> [String: Int64] {
        let out: Data
        do { out = try run(["-j", "list", "counters", "table", "netdev", NFTRules.table], input: nil) } catch let e as WardenError where e.message.contains("No such file") {
            return [:]
        }
        guard let doc = try? JSONSerialization.jsonObject(with: out) as? [String: Any], let items = doc["nftables"] as? [[String: Any]] else {
            throw WardenError(.unavailable, "nft printed counters Warden cannot read")
        }
        var result: [String: Int64] = [:]
        for item in items {
            guard let c = item["counter"] as? [String: Any], let name = c["name"] as? String, let n = c["packets"] as? NSNumber else { continue }
            result[name] = n.int64Value
        }
        return result
    }

    /// The script of the table as the kernel holds it (`nft list table`), for status.
    public func listTable() throws -> String? {
        do { return String(decoding: try run(["list", "table", "netdev", NFTRules.table], input: nil), as: UTF8.self) } catch let e as WardenError where e.message.contains("No such file") {
            return nil
        }
    }

    func run(_ args: [String], input: String?) throws -> Data {
        guard available else {
            throw WardenError(.unavailable, "nft is not installed (Debian: apt-get install nftables); network states cannot be enforced")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()
        p.standardInput = stdin; p.standardOutput = stdout; p.standardError = stderr
        do { try p.run() } catch { throw WardenError(.unavailable, "cannot run \(binary): \(error)") }
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try? stdin.fileHandleForWriting.close()
        let out = stdout.fileHandleForReading.readDataToEndOfFile()
        let err = stderr.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            let first = String(decoding: err, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "exit \(p.terminationStatus)"
            throw WardenError(.unavailable, "nft refused the rules: \(TerminalText.line(String(first.prefix(300))))")
        }
        return out
    }
}
