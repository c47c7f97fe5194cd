import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Wall-clock time of the named phases of one command, for benchmarks (`scripts/bench-clone`).
///
/// Off unless `WARDEN_TIMINGS=1`; then ``report()`` prints one line per phase to stderr:
/// `warden-timing PHASE WALL_MS CPU_MS`, where CPU is the CPU time of the thread that ran the
/// phase (steady on a loaded machine, where wall time is not). The first line, `process-start`,
/// covers the kernel starting the process up to the first lap's origin (wall at 10 ms
/// resolution, from `/proc/self/stat`; CPU of the whole process so far). Phases that run on
/// other threads are recorded with ``record(_:wall:cpu:)``.
/// Never prints guest data: only phase names and durations.
public final class PhaseTimer: @unchecked Sendable {
    public static let shared = PhaseTimer(enabled: ProcessInfo.processInfo.environment["WARDEN_TIMINGS"] == "1")

    public let enabled: Bool
    private let lock = NSLock()
    private var last: Double
    private var lastCPU: Double
    private var entries: [(name: String, wall: Double, cpu: Double)] = []

    public init(enabled: Bool) {
        self.enabled = enabled
        last = Self.now()
        lastCPU = Self.threadCPU()
        if enabled, let start = Self.processStartSeconds() {
            entries.append(("process-start", max(0, Self.boottime() - start), Self.cpu(CLOCK_PROCESS_CPUTIME_ID)))
        }
    }

    /// CPU seconds of the calling thread.
    public static func threadCPU() -> Double { cpu(CLOCK_THREAD_CPUTIME_ID) }

    static func cpu(_ clock: clockid_t) -> Double {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Seconds on the monotonic clock.
    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func boottime() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// When the kernel started this process, in seconds since boot (field 22 of /proc/self/stat).
    static func processStartSeconds() -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // Fields after the command name start at field 3 (state), so field 22 is index 19.
        guard fields.count > 19, let ticks = Double(fields[19]) else { return nil }
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        return hz > 0 ? ticks / hz : nil
    }

    /// Ends the current phase, named `name`, and starts the next one.
    /// Laps belong to one thread (the command's); other threads use ``record(_:wall:cpu:)``.
    public func lap(_ name: String) {
        guard enabled else { return }
        let t = Self.now(), c = Self.threadCPU()
        lock.lock(); defer { lock.unlock() }
        entries.append((name, t - last, c - lastCPU))
        last = t
        lastCPU = c
    }

    /// Records a phase measured elsewhere (another thread); does not move the lap origin.
    public func record(_ name: String, wall: Double, cpu: Double) {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        entries.append((name, wall, cpu))
    }

    /// Prints every phase to stderr (when enabled).
    public func report() {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        var out = ""
        for e in entries {
            out += "warden-timing \(e.name) \(String(format: "%.2f %.2f", e.wall * 1000, e.cpu * 1000))\n"
        }
        FileHandle.standardError.write(Data(out.utf8))
    }
}
