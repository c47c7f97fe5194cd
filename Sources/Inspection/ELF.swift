import WardenCore
import GuestFS

/// What the ELF header of a guest binary says about the guest's architecture.
public struct ELFArchitecture: Codable, Sendable, Equatable {
    /// `uname -m` style name: x86_64, aarch64, i386, armv7l, riscv64, ppc64le, s390x, ...
    public var name: String
    /// Raw `e_machine` value.
    public var machine: UInt16
    /// 32 or 64 (EI_CLASS).
    public var bits: Int
    /// "little" or "big" (EI_DATA).
    public var endianness: String
    /// The guest path whose header was read (before following symlinks).
    public var binary: String
}

public enum ELF {
    /// Parses only the ELF identification and `e_machine`; never reads past `header`.
    public static func architecture(header: [UInt8], binary: String) throws -> ELFArchitecture {
        guard header.count >= 20 else { throw WardenError.corrupt("\(binary): too short for an ELF header") }
        guard header[0] == 0x7F, header[1] == 0x45, header[2] == 0x4C, header[3] == 0x46 else {
            throw WardenError.corrupt("\(binary): not an ELF file")
        }
        let bits: Int
        switch header[4] {
        case 1: bits = 32
        case 2: bits = 64
        default: throw WardenError.corrupt("\(binary): invalid ELF class \(header[4])")
        }
        let little: Bool
        switch header[5] {
        case 1: little = true
        case 2: little = false
        default: throw WardenError.corrupt("\(binary): invalid ELF data encoding \(header[5])")
        }
        let machine = little ? UInt16(header[18]) | UInt16(header[19]) << 8
                             : UInt16(header[18]) << 8 | UInt16(header[19])
        guard let name = machineName(machine, bits: bits, littleEndian: little) else {
            throw WardenError.unsupported("\(binary): unrecognised ELF machine \(machine)")
        }
        return ELFArchitecture(name: name, machine: machine, bits: bits,
                               endianness: little ? "little" : "big", binary: binary)
    }

    static func machineName(_ m: UInt16, bits: Int, littleEndian: Bool) -> String? {
        switch m {
        case 3: return "i386"
        case 62: return bits == 64 ? "x86_64" : "x32"
        case 183: return bits == 64 ? "aarch64" : nil
        case 40: return "armv7l"
        case 243: return bits == 64 ? "riscv64" : "riscv32"
        case 21: return littleEndian ? "ppc64le" : "ppc64"
        case 20: return "ppc"
        case 22: return bits == 64 ? "s390x" : "s390"
        case 258: return bits == 64 ? "loongarch64" : nil
        case 8: return bits == 64 ? "mips64" : "mips"
        default: return nil
        }
    }

    /// Core binaries tried in order for the architecture.
    public static let probeBinaries = ["/bin/sh", "/usr/bin/sh", "/bin/busybox", "/usr/bin/ls"]

    /// The guest architecture from the first readable core binary.
    static func guestArchitecture(_ g: GuestFiles) -> Fact<ELFArchitecture> {
        var reasons: [String] = []
        for path in probeBinaries {
            do {
                guard let header = try g.readPrefix(path, count: 64) else {
                    reasons.append("\(path) absent")
                    continue
                }
                return .known(try architecture(header: header, binary: path))
            } catch {
                reasons.append("\(error)")
            }
        }
        return .unknown(reason: "no readable ELF core binary: " + reasons.joined(separator: "; "))
    }
}
