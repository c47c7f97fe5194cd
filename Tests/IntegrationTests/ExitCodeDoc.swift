import Foundation
import Testing
import WardenTestSupport

/// docs/exit-codes.md as data: each command's documented exit codes.
enum ExitCodeDoc {
    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/exit-codes.md").path

    /// "vm start" → [0, 2, 3, 4].
    static let table: [String: Set<Int32>] = {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
        var out: [String: Set<Int32>] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("| `warden") {
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 3 else { continue }
            let command = cells[1].trimmingCharacters(in: CharacterSet(charactersIn: "`")).dropFirst("warden ".count)
            out[String(command)] = Set(cells[2].split(separator: ",").compactMap { Int32($0.trimmingCharacters(in: .whitespaces)) })
        }
        return out
    }()

    /// The command an argument list runs: the longest documented prefix of its words.
    static func command(for args: [String]) -> String? {
        var words: [String] = []
        var best: String?
        for a in args {
            if a.hasPrefix("-") { break }
            words.append(a)
            let key = words.joined(separator: " ")
            if table[key] != nil { best = key }
            if words.count >= 3 { break }
        }
        return best
    }

    /// Records an issue when `status` is not documented for the command `args` run.
    /// Help, version and global-option errors are the same for every command; deaths by a
    /// signal (128 + n) are not Warden's.
    static func check(_ args: [String], status: Int32) {
        guard status < 128, !table.isEmpty else { return }
        guard let command = command(for: args) else { return }
        let allowed = table[command] ?? []
        if !allowed.contains(status) {
            Issue.record("warden \(args.joined(separator: " ")) exited \(status), not documented for `warden \(command)` in docs/exit-codes.md (\(allowed.sorted()))")
        }
    }
}
