import Attestation
import Foundation
import Testing
import WardenCore
import WardenNetwork
import WardenServices

/// Every strict YAML reader refuses documents nested deep enough to overflow libyaml's
/// recursion (found by `Fuzz/run tpmpcr` in the host trust policy; the vault and network
/// configurations had the same hole): an error naming the file and the line, not a crash.
@Suite struct ConfigNestingTests {
    static let deep = "a: " + String(repeating: "[", count: 200_000)

    @Test func deepYAMLIsRefusedByEveryConfigurationReader() throws {
        let readers: [(String, (String) throws -> Void)] = [
            ("hosts/trust.yaml", { _ = try HostTrustPolicy.parse($0, file: "hosts/trust.yaml") }),
            ("vault/vault.yaml", { _ = try VaultConfig.parse($0, file: "vault/vault.yaml") }),
            ("network/network.yaml", { _ = try NetworkConfig.parse($0, file: "network/network.yaml") }),
        ]
        for (file, read) in readers {
            do {
                try read(Self.deep)
                Issue.record("\(file): accepted")
            } catch let e as WardenError {
                #expect(e.code == .invalidArgument)
                #expect(e.description == "\(file): line 1, column 67: nests deeper than 64 levels", "\(e.description)")
            }
        }
    }
}
