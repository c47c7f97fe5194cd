import Foundation
import WardenCore
import Ledger
#if canImport(Glibc)
import Glibc
import Storage
#endif

/// The state port's line protocol (docs/guest-protocol.md). Pure: a request line in,
/// an answer line out; the server does the I/O.
///
/// ```
/// guest → host                 host → guest
/// GENERATION                   OK <generation uuid>
/// RANDOM <n>  (1…4096)         OK <2n lowercase hex digits>
/// COUNTER <name>               OK <decimal value>          (strictly greater than any earlier answer)
/// anything else                ERR <reason>
///                              GENERATION-CHANGED <uuid>   (unsolicited, any time between answers)
/// ```
public enum StateProtocol {
    /// The longest request line accepted (longer lines get `ERR line-too-long` and are discarded).
    public static let maxLine = 256
    public static let maxRandom = 4096

    public enum Request: Equatable, Sendable {
        case generation
        case random(Int)
        case counter(String)
    }

    /// Parses one request line (without its newline). Errors are the `ERR` reason.
    public static func parse(_ line: String) -> Result<Request, ProtocolError> {
        if line.utf8.count > maxLine { return .failure(.init("line-too-long")) }
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        guard let verb = parts.first else { return .failure(.init("empty-request")) }
        switch verb {
        case "GENERATION":
            return parts.count == 1 ? .success(.generation) : .failure(.init("usage: GENERATION"))
        case "RANDOM":
            guard parts.count == 2, let n = Int(parts[1]) else { return .failure(.init("usage: RANDOM N")) }
            guard (1...maxRandom).contains(n) else { return .failure(.init("RANDOM takes 1 to \(maxRandom) bytes")) }
            return .success(.random(n))
        case "COUNTER":
            guard parts.count == 2 else { return .failure(.init("usage: COUNTER NAME")) }
            let name = String(parts[1])
            guard CounterStore.isValidName(name) else { return .failure(.init("bad counter name (1-64 of A-Z a-z 0-9 . _ -)")) }
            return .success(.counter(name))
        default:
            return .failure(.init("unknown request"))
        }
    }

    public struct ProtocolError: Error, Equatable, Sendable {
        public var reason: String
        public init(_ r: String) { reason = r }
    }

    /// Answers `line` for `vm`: looks up the generation, draws random bytes, bumps counters.
    /// Never throws: every failure becomes an `ERR` line (without internal details).
    public static func answer(_ line: String, vm: VMID, generation: () throws -> UUID, counters: CounterStore) -> String {
        switch parse(line) {
        case .failure(let e):
            return "ERR " + e.reason
        case .success(.generation):
            guard let g = try? generation() else { return "ERR generation unavailable" }
            return "OK " + g.uuidString.lowercased()
        case .success(.random(let n)):
            guard let bytes = randomBytes(n) else { return "ERR random unavailable" }
            return "OK " + bytes.hexString
        case .success(.counter(let name)):
            do { return "OK \(try counters.next(vm: vm, name: name))" } catch let e as WardenError where e.code == .limitExceeded {
                return "ERR too many counters"
            } catch {
                return "ERR counter unavailable"
            }
        }
    }

    /// `n` bytes from the host kernel's CSPRNG (`SystemRandomNumberGenerator` is getrandom(2) on Linux).
    static func randomBytes(_ n: Int) -> [UInt8]? {
        var g = SystemRandomNumberGenerator()
        var out: [UInt8] = []
        out.reserveCapacity(n + 8)
        while out.count < n { withUnsafeBytes(of: g.next()) { out.append(contentsOf: $0) } }
        return Array(out.prefix(n))
    }
}
