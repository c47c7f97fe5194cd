import Foundation
import Testing
import Vault
import WardenCore
import WardenTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Data keys wrapped by the local KEK: bound to their VM and layer, refused when tampered with,
/// kept in private files, and gone after a shred.
@Suite struct VaultTests {
    func bytes(_ s: SecretBytes) -> [UInt8] { s.withBytes { Array($0) } }

    @Test func keysRoundTripAndAreBoundToTheirVMAndLayer() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let vault = Vault(directory: dir + "/vault")
            let vm = VMID(), other = VMID()
            let (id, key) = try vault.newKey(for: KeyContext(vm: vm, layer: "disk0"))
            let back = try #require(try vault.key(for: KeyContext(vm: vm, layer: "disk0")))
            #expect(back.id == id && back.key.equals(key) && key.count == 32)
            // The wrapped key moved to another VM or layer does not open.
            let wrapped = try #require(try vault.keys.get(KeyContext(vm: vm, layer: "disk0")))
            #expect(throws: WardenError.self) { try vault.provider.unwrap(wrapped, context: KeyContext(vm: other, layer: "disk0")) }
            #expect(throws: WardenError.self) { try vault.provider.unwrap(wrapped, context: KeyContext(vm: vm, layer: "disk1")) }
            // A flipped bit in the sealed key is refused.
            var tampered = wrapped
            var raw = try #require(Data(base64Encoded: wrapped.sealed))
            raw[20] ^= 1
            tampered.sealed = raw.base64EncodedString()
            #expect(throws: WardenError.self) { try vault.provider.unwrap(tampered, context: KeyContext(vm: vm, layer: "disk0")) }
            // A key for the same layer twice is a conflict, not an overwrite.
            #expect(throws: WardenError.self) { try vault.newKey(for: KeyContext(vm: vm, layer: "disk0")) }
        }
    }

    @Test func theKEKAndKeysArePrivateAndAnOpenKEKIsRefused() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let vault = Vault(directory: dir + "/vault")
            let vm = VMID()
            _ = try vault.newKey(for: KeyContext(vm: vm, layer: "disk0"))
            func mode(_ p: String) -> mode_t { var st = stat(); stat(p, &st); return st.st_mode & 0o777 }
            #expect(mode(dir + "/vault") == 0o700 && mode(dir + "/vault/kek") == 0o600)
            #expect(mode(dir + "/vault/keys/\(vm)") == 0o700 && mode(dir + "/vault/keys/\(vm)/disk0.json") == 0o600)
            chmod(dir + "/vault/kek", 0o644)
            let e = #expect(throws: WardenError.self) { try vault.key(for: KeyContext(vm: vm, layer: "disk0")) }
            #expect(e?.message.contains("0600") == true)
        }
    }

    @Test func aShreddedKeyIsGoneFromEveryFileTheVaultWrote() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let vault = Vault(directory: dir + "/vault")
            let vm = VMID()
            let c = KeyContext(vm: vm, layer: "disk0")
            let (id, key) = try vault.newKey(for: c)
            let sealed = try #require(try vault.keys.get(c)).sealed
            #expect(try vault.keys.shred(c) == id)
            #expect(try vault.key(for: c) == nil)
            // Neither the key, its base64, nor its sealed form is in any file under the vault.
            let needles = [bytes(key), bytes(key.base64()), Array(sealed.utf8)]
            let files = FileManager.default.enumerator(atPath: dir)?.compactMap { $0 as? String } ?? []
            for f in files {
                guard let data = FileManager.default.contents(atPath: dir + "/" + f) else { continue }
                for n in needles { #expect(Array(data).firstRange(of: n) == nil, "\(f) still holds key material") }
            }
        }
    }

    @Test func rotatingTheKEKRewrapsEveryKeyAndRetiresTheOldOne() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let vault = Vault(directory: dir + "/vault")
            let contexts = [KeyContext(vm: VMID(), layer: "disk0"), KeyContext(vm: VMID(), layer: "disk0"), KeyContext(vm: VMID(), layer: "disk1")]
            let made = try contexts.map { try vault.newKey(for: $0) }
            let before = try contexts.map { try #require(try vault.keys.get($0)) }
            let oldKEK = try Data(contentsOf: URL(fileURLWithPath: dir + "/vault/kek"))
            let r = try vault.rotateKEK()
            #expect(r.keys == 3 && r.old != r.new)
            #expect(!FileManager.default.fileExists(atPath: dir + "/vault/kek.next"))
            #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/vault/kek")) != oldKEK)
            for (c, m) in zip(contexts, made) {
                let back = try #require(try vault.key(for: c))
                #expect(back.id == m.id && back.key.equals(m.key))
                #expect(try vault.keys.get(c)?.kek == r.new)
            }
            // A copy of a key wrapped by the old KEK no longer opens: that KEK is gone.
            #expect(throws: WardenError.self) { try vault.provider.unwrap(before[0], context: contexts[0]) }
            // New keys are wrapped by the new KEK.
            _ = try vault.newKey(for: KeyContext(vm: VMID(), layer: "disk0"))
            #expect(vault.keys.list().allSatisfy { $0.key.kek == r.new })
        }
    }

    @Test func base64MatchesFoundation() {
        for n in [1, 2, 3, 4, 31, 32, 33] {
            let s = SecretBytes(random: n)
            #expect(String(decoding: bytes(s.base64()), as: UTF8.self) == Data(bytes(s)).base64EncodedString(), "\(n)")
        }
    }
}
