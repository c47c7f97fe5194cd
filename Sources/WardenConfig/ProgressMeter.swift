import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// When progress of long work is shown (`--progress`, `$WARDEN_PROGRESS`, `progress:` in the
/// configuration): `auto` when standard error is a terminal, `always`, or `never`.
public enum ProgressMode: String, Sendable, CaseIterable {
    case auto, always, never

    /// The mode in effect: `$WARDEN_PROGRESS` (which `--progress` and the configuration file
    /// set at start-up), else `auto`.
    public static var current: ProgressMode {
        ProgressMode(rawValue: ProcessInfo.processInfo.environment["WARDEN_PROGRESS"] ?? "") ?? .auto
    }

    /// Whether progress is drawn, given whether standard error is a terminal.
    public func shows(terminal: Bool) -> Bool {
        switch self {
        case .auto: return terminal
        case .always: return true
        case .never: return false
        }
    }
}

/// Progress of one long piece of work, on standard error only: done of total (bytes or items),
/// rate and ETA. On a terminal the line is redrawn in place at most five times a second;
/// elsewhere (with `--progress always`) a plain line is written at most every 5 s, so logs stay
/// short. Standard output is never touched, so `--json` and other output stay clean.
public final class ProgressMeter: Sendable {
    public enum Unit: Sendable { case bytes, items(String) }

    struct State {
        var total: UInt64?
        var done: UInt64 = 0
        var lastDraw: Double = -1
        var drawn = false
        var finished = false
    }
    let label: String
    let unit: Unit
    let state: Locked<State>
    let start: Double
    /// Whether anything is written at all.
    public let enabled: Bool
    let terminal: Bool
    let write: @Sendable (String) -> Void
    let now: @Sendable () -> Double

    /// - Parameters:
    ///   - label: what is being done ("export", "discover").
    ///   - total: the amount expected, when known (an ETA needs it).
    ///   - mode: normally ``ProgressMode/current``.
    public init(_ label: String, total: UInt64? = nil, unit: Unit = .bytes, mode: ProgressMode = .current,
                terminal: Bool = isatty(2) == 1,
                write: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) },
                now: @escaping @Sendable () -> Double = { Date().timeIntervalSinceReferenceDate }) {
        self.label = label; self.unit = unit
        self.enabled = mode.shows(terminal: terminal)
        self.terminal = terminal; self.write = write; self.now = now
        self.start = now()
        self.state = Locked(State(total: total))
    }

    public func setTotal(_ total: UInt64?) { state.withLock { $0.total = total } }

    /// Records `amount` more done and redraws when it is time.
    public func advance(by amount: UInt64 = 1) {
        update { $0.done &+= amount }
    }

    /// Records that `done` in all is done.
    public func set(done: UInt64) {
        update { $0.done = done }
    }

    func update(_ change: (inout State) -> Void) {
        guard enabled else { return }
        let t = now()
        let text: String? = state.withLock { s in
            change(&s)
            guard !s.finished else { return nil }
            let interval = terminal ? 0.2 : 5.0
            // The first line waits a moment: quick work draws nothing.
            guard t - start >= (terminal ? 0.5 : 5.0), s.lastDraw < 0 || t - s.lastDraw >= interval else { return nil }
            s.lastDraw = t
            s.drawn = true
            return render(s, elapsed: t - start)
        }
        if let text { write(terminal ? "\r\u{1B}[K" + text : text + "\n") }
    }

    /// Ends the meter: on a terminal the line is cleared (the command's own output follows);
    /// elsewhere a last line is written if any was.
    public func finish() {
        guard enabled else { return }
        let t = now()
        let (drawn, text): (Bool, String) = state.withLock { s in
            defer { s.finished = true }
            if s.finished { return (false, "") }
            return (s.drawn, render(s, elapsed: t - start))
        }
        guard drawn else { return }
        write(terminal ? "\r\u{1B}[K" : text + "\n")
    }

    /// `label: 1.2 GiB of 4.0 GiB (30%), 210 MiB/s, ETA 0:14`.
    func render(_ s: State, elapsed: Double) -> String {
        func amount(_ n: UInt64) -> String {
            switch unit {
            case .bytes: return Self.size(n)
            case .items: return "\(n)"
            }
        }
        var line = "warden: \(label): \(amount(s.done))"
        if let total = s.total, total > 0 {
            let pct = Int(min(100, Double(s.done) / Double(total) * 100))
            line += " of \(amount(total))"
            if case .items(let noun) = unit { line += " \(noun)" }
            line += " (\(pct)%)"
        } else if case .items(let noun) = unit {
            line += " \(noun)"
        }
        if elapsed > 0 {
            let rate = Double(s.done) / elapsed
            switch unit {
            case .bytes: line += ", \(Self.size(UInt64(rate)))/s"
            case .items: line += String(format: ", %.0f/s", rate)
            }
            if let total = s.total, total > s.done, rate > 0 {
                let eta = Int((Double(total - s.done) / rate).rounded(.up))
                line += eta >= 3600 ? ", ETA \(eta / 3600):\(String(format: "%02d:%02d", eta / 60 % 60, eta % 60))"
                                    : ", ETA \(eta / 60):\(String(format: "%02d", eta % 60))"
            }
        }
        return line
    }

    /// Sizes in binary units, one decimal: `512 B`, `1.5 MiB`.
    public static func size(_ b: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(b), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(b) B" : String(format: "%.1f %@", v, units[i])
    }
}
