import ArgumentParser
import Foundation
import Storage
import Sysprep
import WardenCore

/// `warden keys status|refill`: the pool of host keys made ahead of time for clones.
struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "The pool of SSH host keys made ahead of time, so clones need not wait for RSA key generation (docs/sysprep.md).",
        subcommands: [Status.self, Refill.self])

    /// The pool beside the database (`<db dir>/keypool`).
    static func pool(database: String) -> KeyPool {
        KeyPool(directory: (database as NSString).deletingLastPathComponent + "/keypool")
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "How many keys are ready.",
            discussion: """
                Example:
                  warden keys status
                """)
        @Option(help: "The ledger database (the pool lives beside it).") var db: String?
        @Flag(help: "JSON output.") var json = false
        func run() throws {
            let pool = KeysCommand.pool(database: WardenDatabase.defaultPath(explicit: db))
            struct Doc: Encodable { var schema = "warden.keys-status/v1"; var directory: String; var rsa: Int; var target: Int }
            try Output.render(Doc(directory: pool.directory, rsa: pool.count, target: KeyPool.defaultSize), json: json) {
                Output.stdout.line("\(pool.count) RSA-3072 host keys ready in \(pool.directory) (refills to \(KeyPool.defaultSize))")
            }
        }
    }

    struct Refill: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "refill", abstract: "Generate keys until the pool holds --count of them.",
            discussion: """
                Example:
                  warden keys refill --count 32
                """)
        @Option(help: "The ledger database (the pool lives beside it).") var db: String?
        @Option(help: "Keys to keep ready.") var count = KeyPool.defaultSize
        @Flag(help: "Print nothing (background refills).") var quiet = false
        func validate() throws { guard (1...256).contains(count) else { throw ValidationError("--count is 1 to 256") } }
        func run() throws {
            let pool = KeysCommand.pool(database: WardenDatabase.defaultPath(explicit: db))
            // One refill at a time: a second waits, then finds the pool full.
            let lock = try FileLock(path: NSTemporaryDirectory() + "/warden-keypool-\(getuid()).lock", timeout: 600, holder: "another refill is running")
            defer { withExtendedLifetime(lock) {} }
            let made = try pool.refill(to: count)
            if !quiet { Output.stdout.line("made \(made) key(s); \(pool.count) ready") }
        }
    }
}
