import ArgumentParser
import Foundation
import Ledger
import Policy
import WardenCore
#if canImport(Glibc)
import Glibc
import Storage
#endif

/// `--db`, shared by every command that reads or writes Warden's database (the ledger,
/// the advisory store, assessments). The ledger's keys and witness live in keys/ beside it
/// unless $WARDEN_KEYS is set.
struct DatabaseOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The Warden database (default: $WARDEN_DB, else $WARDEN_HOME/warden.db, else ~/.local/share/warden/warden.db). Keys and the witness live in keys/ beside it unless $WARDEN_KEYS is set.",
                               valueName: "path"))
    var db: String?

    var path: String { WardenDatabase.defaultPath(explicit: db) }

    /// Opens the ledger. Read commands pass `create: false` and fail closed on a missing database.
    func open(create: Bool, readOnly: Bool = false) throws -> SQLiteLedger {
        try SQLiteLedger.open(path, readOnly ? .readOnly : (create ? .create : .existing))
    }

    /// Opens the database itself (advisory store, assessments), creating it if needed.
    func open() throws -> WardenDatabase {
        try WardenDatabase(path: path)
    }
}

/// The names the advisory and ledger-log commands use for the same option group.
typealias DatabaseOption = DatabaseOptions
typealias LedgerLogOptions = DatabaseOptions

/// `--policy DIR`, shared by every command that decides (copy, clone, transfer, retire, the
/// lifecycle commands, `policy check`). Without it the policy is `$WARDEN_POLICY` (which must
/// exist), else `$WARDEN_HOME/policy` or `~/.local/share/warden/policy` (docs/policy.md).
struct PolicyOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The policy directory or file (must exist; default: $WARDEN_POLICY, which must exist too, else $WARDEN_HOME/policy, else ~/.local/share/warden/policy).",
                               valueName: "dir"))
    var policy: String?

    var source: PolicyGate.Source { policy.map { .explicit($0) } ?? .defaultDirectory }
}

/// Test-only pauses at commit points, so crash tests can kill a process there
/// deterministically: `NAME=SECONDS`, honoured only with `WARDEN_TEST_HOOKS=1`.
enum TestHooks {
    static func pause(_ name: String) -> (() throws -> Void)? {
        let env = ProcessInfo.processInfo.environment
        guard env["WARDEN_TEST_HOOKS"] == "1", let s = env[name].flatMap(Double.init), s > 0, s < 60 else { return nil }
        return { Thread.sleep(forTimeInterval: s) }
    }

    /// `WARDEN_TEST_BATCH_PAUSE=SECONDS`: a pause after the first batch of chunks of a push or
    /// pull (the test kills the registry during it); `WARDEN_TEST_BATCH_MARKER=FILE` is created
    /// when the pause begins, so the test knows when to.
    static func batchPause() -> (@Sendable () -> Void)? {
        guard let p = pause("WARDEN_TEST_BATCH_PAUSE") else { return nil }
        let marker = ProcessInfo.processInfo.environment["WARDEN_TEST_BATCH_MARKER"]
        let once = Locked(false)
        nonisolated(unsafe) let sleep = p
        return {
            guard once.withLock({ let first = !$0; $0 = true; return first }) else { return }
            if let marker { FileManager.default.createFile(atPath: marker, contents: Data()) }
            try? sleep()
        }
    }
}

/// Times on the command line: `now`, RFC 3339 / ISO 8601 with a zone (`2026-11-26T18:00:00Z`,
/// `…+01:00`, fractional seconds allowed), a date alone (`2026-11-26`, midnight UTC), or
/// `@SECONDS` since the Unix epoch.
enum TimeArgument {
    static func parse(_ text: String, now: Date = Date()) throws -> Date {
        let s = text.trimmingCharacters(in: .whitespaces)
        if s == "now" { return now }
        if s.hasPrefix("@"), let secs = Double(s.dropFirst()), secs.isFinite, abs(secs) < 1e11 {
            return Date(timeIntervalSince1970: secs)
        }
        let full = ISO8601DateFormatter()
        full.formatOptions = [.withInternetDateTime]
        if let d = full.date(from: s) { return d }
        full.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = full.date(from: s) { return d }
        let day = ISO8601DateFormatter()
        day.formatOptions = [.withFullDate]
        day.timeZone = TimeZone(identifier: "UTC")
        if s.count == 10, let d = day.date(from: s) { return d }
        throw WardenError(.invalidArgument,
                          "not a time: \(oneLine(s)) (use RFC 3339 with a zone, e.g. 2026-11-26T18:00:00Z, a date 2026-11-26, @EPOCH or now)")
    }

    /// RFC 3339 in UTC with microseconds, as the ledger stores times.
    static func format(_ date: Date) -> String { LedgerTime.rfc3339(LedgerTime.micros(date)) }
}

/// `k=v` labels.
enum LabelArgument {
    static func parse(_ items: [String]) throws -> [String: String] {
        var out: [String: String] = [:]
        for item in items {
            guard let eq = item.firstIndex(of: "=") else {
                throw ValidationError("a label is KEY=VALUE, not \(oneLine(item))")
            }
            let k = String(item[..<eq]), v = String(item[item.index(after: eq)...])
            guard !k.isEmpty, k.count <= 128, v.count <= 1024,
                  !k.contains(where: { $0.isWhitespace || $0.isNewline || $0 == "=" }),
                  !v.contains(where: { $0.isNewline || ($0.asciiValue.map { $0 < 0x20 } ?? false) }) else {
                throw ValidationError("bad label \(oneLine(item)): the key must be 1-128 characters without spaces, the value at most 1024 without control characters")
            }
            guard out[k] == nil else { throw ValidationError("label \(k) given twice") }
            out[k] = v
        }
        return out
    }
}

/// Names and owners: one line, non-empty, bounded.
enum NameArgument {
    static func check(_ value: String, what: String) throws -> String {
        guard !value.isEmpty, value.count <= 256,
              !value.contains(where: { $0.isNewline || ($0.asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false) }) else {
            throw ValidationError("\(what) must be 1-256 characters without control characters")
        }
        return value
    }
}

extension Output {
    /// Sorted-key, snake_case JSON with times as RFC 3339 strings in UTC (microseconds).
    static func ledgerJSON<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try LedgerJSON.encoder().encode(value), as: UTF8.self)
    }
}

/// `1a2b3c4d` for humans; JSON always has full ids.
func shortID(_ id: VMID) -> String { String(id.description.prefix(8)) }

/// Pads the columns of `rows` to a table.
func table(_ rows: [[String]]) -> [String] {
    guard let width = rows.map(\.count).max() else { return [] }
    var widths = [Int](repeating: 0, count: width)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    return rows.map { r in
        r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
}

/// Wall and process CPU time of `body`, for the hidden `--timing` flags of the query commands
/// (CPU time separates the query's own cost from waiting on a busy machine).
func timed<T>(_ body: () throws -> T) rethrows -> (T, wallMs: Double, cpuMs: Double) {
    func cpu() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) * 1e3 + Double(ts.tv_nsec) / 1e6
    }
    let w0 = DispatchTime.now().uptimeNanoseconds, c0 = cpu()
    let r = try body()
    return (r, Double(DispatchTime.now().uptimeNanoseconds - w0) / 1e6, cpu() - c0)
}
