import Foundation
import Logging
import WardenCore

/// Warden's logging: swift-log with one handler writing plain lines on standard error.
///
/// On a terminal or in a pipe a line is `warden: message` for notices (what commands always
/// said on stderr), `warden: warning: message` and so on for the other levels. Under systemd
/// (`$JOURNAL_STREAM` set) each line starts with its syslog priority (`<4>`) instead, which
/// journald turns into the entry's priority, and carries no timestamp (journald adds one).
/// The level is `--log-level`, `$WARDEN_LOG` or `log_level:` in the configuration; default notice.
public enum WardenLog {
    /// The level in effect: `$WARDEN_LOG` (which `--log-level` and the configuration set), else notice.
    public static var level: Logger.Level {
        Logger.Level(rawValue: ProcessInfo.processInfo.environment["WARDEN_LOG"] ?? "") ?? .notice
    }

    private static let bootstrapped = Locked(false)

    /// Installs the handler once per process.
    public static func bootstrap(journald: Bool = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil) {
        let first = bootstrapped.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        let level = Self.level
        LoggingSystem.bootstrap { label in
            var h = LineLogHandler(label: label, journald: journald)
            h.logLevel = level
            return h
        }
    }

    /// The logger commands use.
    public static var logger: Logger { Logger(label: "warden") }
}

/// One plain line per message on standard error (see ``WardenLog``).
public struct LineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .notice
    let label: String
    let journald: Bool
    let write: @Sendable (String) -> Void

    public init(label: String, journald: Bool,
                write: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) }) {
        self.label = label; self.journald = journald; self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// The line for one message (without its newline).
    public func format(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?) -> String {
        var all = metadata
        if let extra { all.merge(extra) { $1 } }
        var text = TerminalText.line(message.description)
        if !all.isEmpty {
            text += " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\(TerminalText.line("\($0.value)"))" }.joined(separator: " ")
        }
        if journald { return "<\(Self.priority(level))>\(text)" }
        let prefix = label == "warden" ? "warden" : "warden[\(label)]"
        return level == .notice ? "\(prefix): \(text)" : "\(prefix): \(level.rawValue): \(text)"
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?,
                    source: String, file: String, function: String, line: UInt) {
        write(format(level: level, message: message, metadata: metadata) + "\n")
    }

    /// The syslog priority journald reads from a `<N>` prefix.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }
}
