import ArgumentParser
import Foundation
import Testing
import WardenTestSupport
@testable import WardenCommands

/// Help texts are documentation (and the man pages are made from them): every command has an
/// abstract and at least one example, and every example parses as the command it shows.
@Suite struct HelpTextTests {
    /// Every leaf command of `warden --experimental-dump-help`: path and discussion.
    static func leaves() throws -> [(path: String, abstract: String, discussion: String)] {
        let r = try WardenRun.run(["--experimental-dump-help"])
        let tree = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
        var out: [(String, String, String)] = []
        func walk(_ c: [String: Any], _ path: [String]) {
            let subs = c["subcommands"] as? [[String: Any]] ?? []
            if subs.isEmpty { out.append((path.joined(separator: " "), c["abstract"] as? String ?? "", c["discussion"] as? String ?? "")) }
            for s in subs { walk(s, path + [s["commandName"] as? String ?? "?"]) }
        }
        walk(tree["command"] as? [String: Any] ?? [:], [])
        return out
    }

    /// Shell words of one example line, up to a pipe or redirection; `VAR=…` prefixes dropped.
    static func words(_ line: String) -> [String] {
        var words: [String] = [], cur = "", quote: Character? = nil, inWord = false
        for ch in line {
            if let q = quote {
                if ch == q { quote = nil } else { cur.append(ch) }
                continue
            }
            if ch == "'" || ch == "\"" { quote = ch; inWord = true; continue }
            if ch == " " { if inWord { words.append(cur); cur = ""; inWord = false }; continue }
            if (ch == "|" || ch == ">" || ch == "<") && !inWord { break }
            cur.append(ch); inWord = true
        }
        if inWord { words.append(cur) }
        while let first = words.first, first.contains("="), !first.hasPrefix("-") { words.removeFirst() }
        return words
    }

    @Test func everyCommandHasAnAbstractAndAnExampleThatParses() throws {
        let leaves = try Self.leaves()
        #expect(leaves.count > 100)
        // `help` is swift-argument-parser's own command.
        for leaf in leaves where leaf.path != "help" {
            #expect(!leaf.abstract.isEmpty, "warden \(leaf.path) has no abstract")
            guard let range = leaf.discussion.range(of: "Example") else {
                Issue.record("warden \(leaf.path) has no example in its help"); continue
            }
            let lines = leaf.discussion[range.upperBound...].split(separator: "\n")
                .map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { $0.contains("warden ") }
            #expect(!lines.isEmpty, "warden \(leaf.path): an Example heading without examples")
            for line in lines {
                let w = Self.words(line)
                guard let i = w.firstIndex(of: "warden") else { Issue.record("\(line): no warden command"); continue }
                let args = Array(w[(i + 1)...])
                #expect(args.joined(separator: " ").hasPrefix(leaf.path), "example under warden \(leaf.path) runs another command: \(line)")
                do {
                    _ = try Warden.parseAsRoot(args)
                } catch {
                    Issue.record("example for warden \(leaf.path) does not parse: \(line): \(Warden.fullMessage(for: error))")
                }
            }
        }
    }

    @Test func theImageHelpNamesWhatIsRead() throws {
        let image = try WardenRun.run(["image", "--help"]).stdoutText
        for word in ["qcow2", "VMDK", "VHDX", "ext2/3/4", "XFS", "btrfs", "FAT", "NTFS", "LVM"] {
            #expect(image.contains(word), "warden image --help does not name \(word)")
        }
    }
}
