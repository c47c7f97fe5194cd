import Foundation
import WardenCore

/// Transfer progress on stderr: bytes, rate, ETA and chunks reused, redrawn at most twice a
/// second on a terminal, and as one line every 10 s otherwise (logs stay short). With `live`
/// false (`--progress never`, or auto off a terminal) only the closing summary is written.
public final class TransferProgress: Sendable {
    struct State {
        var total: Int64 = 0
        var done: Int64 = 0
        var sent: Int64 = 0
        var chunks = 0
        var reused = 0
        var mounted = 0
        var lastDraw: Double = 0
    }
    let verb: String
    let state = Locked(State())
    let start = Date()
    let enabled: Bool
    let live: Bool
    let terminal: Bool
    let write: @Sendable (String) -> Void

    public init(verb: String, enabled: Bool = true, live: Bool = true,
                write: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) }) {
        self.verb = verb; self.enabled = enabled; self.live = live; self.write = write
        terminal = isatty(2) == 1
    }

    public func addTotal(_ bytes: Int64) { state.withLock { $0.total += bytes } }

    /// `guest` bytes of disk handled; `wire` bytes moved over the network; `reused`/`mounted` chunks.
    public func advance(guest: Int64, wire: Int64, chunks: Int = 1, reused: Int = 0, mounted: Int = 0) {
        let line: String? = state.withLock { s in
            s.done += guest; s.sent += wire; s.chunks += chunks; s.reused += reused; s.mounted += mounted
            let now = Date().timeIntervalSince(start)
            guard enabled, live, now - s.lastDraw >= (terminal ? 0.5 : 10) else { return nil }
            s.lastDraw = now
            return render(s, elapsed: now)
        }
        if let line { write(terminal ? "\r\u{1B}[K" + line : line + "\n") }
    }

    func render(_ s: State, elapsed: Double) -> String {
        let rate = elapsed > 0 ? Double(s.sent) / elapsed : 0
        let guestRate = elapsed > 0 ? Double(s.done) / elapsed : 0
        let eta = guestRate > 0 && s.total > s.done ? Int(Double(s.total - s.done) / guestRate) : 0
        return "\(verb) \(Self.size(s.done)) of \(Self.size(s.total)), \(Self.size(s.sent)) over the wire (\(Self.size(Int64(rate)))/s), "
            + "\(s.reused) of \(s.chunks) chunks reused\(s.mounted > 0 ? ", \(s.mounted) mounted" : ""), ETA \(eta / 60):\(String(format: "%02d", eta % 60))"
    }

    /// The closing line (always written when enabled).
    public func finish() {
        guard enabled else { return }
        let s = state.withLock { $0 }
        let elapsed = Date().timeIntervalSince(start)
        write((terminal && live ? "\r\u{1B}[K" : "") + render(s, elapsed: elapsed).replacingOccurrences(of: ", ETA 0:00", with: "") + String(format: ", %.1f s\n", elapsed))
    }

    public static func size(_ b: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(b), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(b) B" : String(format: "%.1f %@", v, units[i])
    }
}
