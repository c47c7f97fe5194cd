import Foundation
import Ledger
import Policy
import WardenCore
#if canImport(Glibc)
import Glibc
import Storage
#endif

/// The whole hook process, shared by the lean `warden-hook` executable and `warden libvirt-hook`:
/// `[--db PATH] [--policy DIR] DOMAIN OPERATION SUB-OPERATION EXTRA`, the domain XML on standard
/// input. Returns the exit status; the one-line reason goes to standard error.
///
/// It fails closed like ``LibvirtHook/run(arguments:domainXML:host:time:policy:openStore:findVM:)``:
/// a bad command line, an unreadable standard input, an oversized or malformed XML, a missing
/// or unreadable database or policy all exit non-zero for the vetoable calls, so libvirt
/// refuses the operation.
public enum LibvirtHookProcess {
    /// The parsed command line.
    public struct Options: Sendable, Equatable {
        public var db: String?
        public var policy: String?
        public var hookArguments: [String] = []
    }

    public static let usage = "usage: warden-hook [--db PATH] [--policy DIR] DOMAIN OPERATION SUB-OPERATION EXTRA (libvirt's qemu hook; the domain XML on stdin)"

    /// Parses `--db`/`--policy` (also `--db=PATH`) before the hook's own arguments, which are
    /// taken as they are from the first one that is not an option (or after `--`).
    public static func parse(_ args: [String]) throws -> Options {
        var o = Options()
        var k = 0
        while k < args.count {
            let a = args[k]
            if a == "--" { o.hookArguments = Array(args[(k + 1)...]); return o }
            var name = a, value: String? = nil
            if a.hasPrefix("--"), let eq = a.firstIndex(of: "=") {
                name = String(a[..<eq]); value = String(a[a.index(after: eq)...])
            }
            switch name {
            case "--db", "--policy":
                if value == nil {
                    guard k + 1 < args.count else { throw WardenError(.invalidArgument, "\(name) needs a value") }
                    k += 1; value = args[k]
                }
                guard let v = value, !v.isEmpty else { throw WardenError(.invalidArgument, "\(name) needs a value") }
                if name == "--db" { o.db = v } else { o.policy = v }
                k += 1
            default:
                if a.hasPrefix("--") { throw WardenError(.invalidArgument, "unknown option \(a)") }
                o.hookArguments = Array(args[k...])
                return o
            }
        }
        return o
    }

    /// Reads standard input to its end, keeping at most `LibvirtDomain.maxSize + 1` bytes.
    /// The rest is still drained, so libvirtd never writes into a closed pipe.
    public static func readStandardInput(fd: Int32 = 0) throws -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return out }
            if n < 0 {
                if errno == EINTR { continue }
                throw WardenError(.io, "cannot read the domain XML from standard input: \(String(cString: strerror(errno)))")
            }
            if out.count <= LibvirtDomain.maxSize { out.append(contentsOf: chunk[0..<min(n, LibvirtDomain.maxSize + 1 - out.count)]) }
        }
    }

    /// Runs the hook with `args` (without the program name) and returns the exit status.
    public static func main(_ args: [String], environment: [String: String] = ProcessInfo.processInfo.environment) -> Int32 {
        // Standard input first, whatever follows, so libvirtd never writes into a closed pipe.
        let input: [UInt8]
        do { input = try readStandardInput() } catch let e as WardenError {
            // Fail closed: the XML is part of the decision.
            writeError(e.message)
            return 1
        } catch { return 1 }
        let options: Options
        do { options = try parse(args) } catch let e as WardenError {
            writeError("\(e.message); \(usage)")
            return 2
        } catch { return 2 }
        let dbPath = WardenDatabase.defaultPath(explicit: options.db, environment: environment)
        let source: PolicyGate.Source = options.policy.map { .explicit($0) } ?? .defaultDirectory
        // The host name is looked up once (it is a resolver call) and used for everything.
        let host = HostName.current
        let outcome = LibvirtHook.run(arguments: options.hookArguments, domainXML: Data(input), host: host, policy: source,
                                      openStore: { try LibvirtHook.openLedger(dbPath, host: host) }, findVM: LibvirtHook.vmByDiskPath)
        if let message = outcome.message { writeError(message) }
        return outcome.status
    }

    /// One line on standard error, newlines flattened (libvirt shows it in virsh's error).
    public static func writeError(_ message: String) {
        // Domain names and reasons reach virsh's terminal: one sanitised line.
        let line = Array(("warden: " + TerminalText.line(message) + "\n").utf8)
        var off = 0
        while off < line.count {
            let n = line[off...].withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            off += n
        }
    }
}
