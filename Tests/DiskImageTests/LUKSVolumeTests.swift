import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// LUKS1 and LUKS2 volumes (a guest's encrypted partition) made by cryptsetup on plain files —
/// `reencrypt --encrypt` writes the header and encrypts a filesystem image in place, and
/// `convert --type luks1` turns one into LUKS1, no device-mapper needed — read back with the
/// key: the filesystem image they were made from is the oracle, and `cryptsetup luksDump` the
/// oracle for what the header says.
@Suite struct LUKSVolumeTests {
    static let variants = ["luks2-argon2id", "luks2-argon2i-4k", "luks2-pbkdf2-4k", "luks1"]

    /// One ext4 filesystem image per variant (the plaintext), and its encrypted twin.
    static func fixture() throws -> String {
        try Fixtures.cached("luks-volumes", recipe: """
        v1; cryptsetup \((try? Tool.run(["cryptsetup", "--version"]).stdoutText) ?? "?")
        """) { dir in
            try Tool.sh("""
            set -e
            mkdir -p root/etc root/var/data
            printf 'ID=debian\\nVERSION_ID="12"\\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\\n' > root/etc/os-release
            python3 -c 'import random; r = random.Random(11); open("root/var/data/blob", "wb").write(bytes(r.getrandbits(8) for _ in range(3 << 20)))'
            printf 'correct horse battery staple' > key
            mkfs.ext4 -q -F -d root plain-1k.img 12M
            mkfs.ext4 -q -F -b 4096 -d root plain-4k.img 12M
            make() {  # name, plaintext, options
                n=$1; p=$2; shift 2
                cp $p $n.img
                truncate -s 28M $n.img
                cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 16M --key-file key --batch-mode "$@" $n.img
            }
            make luks2-argon2id plain-1k.img --pbkdf argon2id --pbkdf-memory 16384 --pbkdf-force-iterations 4 --pbkdf-parallel 2
            make luks2-argon2i-4k plain-4k.img --pbkdf argon2i --pbkdf-memory 8192 --pbkdf-force-iterations 4 --sector-size 4096 --cipher aes-xts-plain64 --key-size 256
            make luks2-pbkdf2-4k plain-4k.img --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --sector-size 4096
            make luks1 plain-1k.img --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --hash sha512
            cryptsetup convert --type luks1 --batch-mode luks1.img
            for v in luks2-argon2id luks2-argon2i-4k luks2-pbkdf2-4k luks1; do cryptsetup luksDump $v.img > $v.dump; done
            """, cwd: dir)
        }
    }

    static func plaintext(_ variant: String) -> String { variant.hasSuffix("-4k") ? "plain-4k.img" : "plain-1k.img" }

    static func device(_ path: String) throws -> any BlockDevice {
        try ImageOpener.open(path, options: OpenOptions(format: .raw)).device
    }

    static let key = SecretBytes(copying: Array("correct horse battery staple".utf8))

    @Test(arguments: variants)
    func decryptsWhatCryptsetupEncrypted(_ variant: String) throws {
        let dir = try Self.fixture()
        let plain = try Fixtures.read(dir + "/" + Self.plaintext(variant))
        let volume = try LUKSVolume.open(try Self.device(dir + "/\(variant).img"), passphrase: Self.key, name: variant)
        #expect(volume.version == (variant == "luks1" ? .luks1 : .luks2))
        #expect(volume.size >= UInt64(plain.count))
        // The filesystem reads back byte for byte, in reads of every alignment.
        let chunks = [1 << 20, 4096, 65536 + 512, 777, 512, 3 << 20, 1]
        var pos = 0, i = 0
        while pos < plain.count {
            let n = min(chunks[i % chunks.count], plain.count - pos)
            let got = try volume.read(at: UInt64(pos), count: n)
            guard got[...] == plain[pos..<(pos + n)] else {
                Issue.record("\(variant): bytes differ in \(pos)..<\(pos + n)")
                return
            }
            pos += n; i += 1
        }
        // The header as cryptsetup describes it.
        let dump = try String(contentsOfFile: dir + "/\(variant).dump", encoding: .utf8)
        #expect(dump.contains(volume.uuid), "\(volume.uuid)")
        if variant != "luks1" {
            let size = try LUKS2Header.headerSize(try Self.device(dir + "/\(variant).img").read(at: 0, count: 4096), file: variant)
            let h = try LUKS2Header.parse(try Self.device(dir + "/\(variant).img").read(at: 0, count: Int(size)), volumeLength: 28 << 20, file: variant)
            func field(_ name: String) -> String? {
                dump.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix(name + ":") }
                    .map { $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces) }
            }
            #expect(field("offset") == "\(h.segment.offset) [bytes]")
            #expect(field("sector") == "\(h.segment.sectorSize) [bytes]")
            #expect(field("Metadata area") == "\(h.headerSize) [bytes]")
            let slot = try #require(h.keyslots.first)
            #expect(field("AF stripes") == "\(slot.stripes)")
            #expect(field("Area offset") == "\(slot.areaOffset) [bytes]")
            #expect(field("Area length") == "\(slot.areaSize) [bytes]")
            #expect(field("Key") == "\(slot.keyBytes * 8) bits")
            switch slot.kdf {
            case .argon2(let id, let time, let memory, let cpus, _):
                #expect(field("PBKDF") == (id ? "argon2id" : "argon2i"))
                #expect(field("Time cost") == "\(time)" && field("Memory") == "\(memory)" && field("Threads") == "\(cpus)")
            case .pbkdf2(let hash, let iterations, _):
                #expect(field("PBKDF") == "pbkdf2" && field("Hash") == hash)
                #expect(dump.contains("Iterations: \t\(iterations)") || dump.contains("Iterations:         \t\(iterations)") || dump.contains("\(iterations)"))
            }
            #expect(h.digests.first?.iterations.description == field("Iterations") || variant.contains("pbkdf2"))
        }
    }

    @Test func wrongKeysDamagedAndTruncatedHeadersGiveOneLineErrors() throws {
        let dir = try Self.fixture()
        for variant in Self.variants {
            let dev = try Self.device(dir + "/\(variant).img")
            #expect(throws: WardenError.self) {
                do { _ = try LUKSVolume.open(dev, passphrase: SecretBytes(copying: Array("wrong".utf8)), name: variant) } catch let e as WardenError {
                    #expect(e.code == .invalidArgument && e.exitCode == 2 && e.message.contains("does not open"), "\(e)")
                    throw e
                }
            }
            // Truncated volumes: cut inside the header, the JSON, the key material and the data.
            let bytes = try dev.read(at: 0, count: Int(min(dev.size, 1 << 20)))
            for cut in [0, 100, 600, 4096, 5000, 16384, 40000, 300_000] where cut < bytes.count {
                let mem = MemoryDevice(Array(bytes[0..<cut]))
                #expect(throws: WardenError.self, "\(variant) cut at \(cut)") {
                    _ = try LUKSVolume.open(mem, passphrase: Self.key, name: variant)
                }
            }
        }
        // Flipped bytes across the LUKS2 binary header and its JSON: a typed error (the
        // checksum, or the field's own check), never a trap.
        let dev = try Self.device(dir + "/luks2-pbkdf2-4k.img")
        let head = try dev.read(at: 0, count: 16384 + 4096)
        for offset in stride(from: 0, to: 16384, by: 97) {
            var damaged = head
            damaged[offset] ^= 0x5a
            let mem = MemoryDevice(damaged + [UInt8](repeating: 0, count: 1 << 20))
            do { _ = try LUKSVolume.open(mem, passphrase: Self.key, name: "flipped") } catch is WardenError {} catch {
                Issue.record("untyped error at \(offset): \(error)")
            }
        }
    }

    /// Metadata a hostile header could carry, with a valid checksum: each refused in one line.
    @Test func hostileMetadataIsRefusedWithTypedErrors() throws {
        let dir = try Self.fixture()
        let dev = try Self.device(dir + "/luks2-argon2id.img")
        let size = Int(try LUKS2Header.headerSize(try dev.read(at: 0, count: 4096), file: "x"))
        let area = try dev.read(at: 0, count: size)
        let json = String(decoding: area[4096...].prefix { $0 != 0 }, as: UTF8.self)
        func rewrite(_ edit: (String) -> String) -> [UInt8] {
            var out = Array(area[0..<4096]) + Array(edit(json).utf8)
            out += [UInt8](repeating: 0, count: max(0, size - out.count))
            let fixed = LUKS2Header.withChecksumFixed(out)
            // The checksum matches what OpenSSL computes over the same bytes, checksum zeroed.
            var zeroed = fixed
            for i in 448..<512 { zeroed[i] = 0 }
            #expect(Array(fixed[448..<480]) == SHA256Oracle.hash(zeroed))
            return fixed
        }
        let cases: [(String, (String) -> String)] = [
            ("argon2 memory", { $0.replacingOccurrences(of: "\"memory\":16384", with: "\"memory\":4294967295") }),
            ("argon2 time", { $0.replacingOccurrences(of: "\"time\":4", with: "\"time\":99999999") }),
            ("stripes", { $0.replacingOccurrences(of: "\"stripes\":4000", with: "\"stripes\":100000000") }),
            ("area offset", { $0.replacingOccurrences(of: "\"offset\":\"32768\"", with: "\"offset\":\"18446744073709551615\"") }),
            ("cipher", { $0.replacingOccurrences(of: "\"encryption\":\"aes-xts-plain64\",\"sector_size\"", with: "\"encryption\":\"twofish-xts-plain64\",\"sector_size\"") }),
            ("nesting", { $0.replacingOccurrences(of: "\"tokens\":{}", with: "\"tokens\":" + String(repeating: "[", count: 40) + String(repeating: "]", count: 40)) }),
            ("not JSON", { _ in "{\"keyslots\":" }),
        ]
        for (what, edit) in cases {
            let bytes = rewrite(edit)
            #expect(bytes.count == size, "\(what)")
            let mem = MemoryDevice(bytes + (try dev.read(at: UInt64(size), count: Int(dev.size) - size)))
            do {
                _ = try LUKSVolume.open(mem, passphrase: Self.key, name: "hostile")
                Issue.record("\(what): accepted")
            } catch let e as WardenError {
                #expect([.corrupt, .unsupported, .limitExceeded].contains(e.code) && !e.description.contains("\n"), "\(what): \(e)")
            }
        }
    }
}

/// SHA-256 from OpenSSL's command line: the oracle for the checksum Warden recomputes.
enum SHA256Oracle {
    static func hash(_ bytes: [UInt8]) -> [UInt8] {
        let r = try? Tool.run(["openssl", "dgst", "-sha256", "-binary"], stdin: Data(bytes))
        return Array(r?.stdout ?? Data())
    }
}
