import Foundation
import WardenCore
import Advisories
import AdvisoryStorage

extension DiskRecord: AdvisoryDisk {}

extension AdvisoryStore {
    /// Appends a `scanned` event to the ledger for every VM with a disk of this content or path.
    /// Returns the VMs. The payload holds the image, the inventory key and counts, never findings' text.
    @discardableResult
    public func recordScan(ledger: any LedgerStore, image: String, key: WardenCore.Digest, findings: [Finding]) throws -> [AffectedVM] {
        let vms = try vms(withContent: key, paths: [image])
        let vuln = findings.filter { $0.status == .vulnerable }
        for vm in vms {
            guard let id = VMID(vm.id) else { continue }
            var payload: [String: JSONValue] = ["image": .string(image), "inventory": .string(key.description),
                                                "vulnerable": .number(Double(vuln.count))]
            if let worst = vuln.map(\.severity).max() { payload["max_severity"] = .string(worst.description) }
            _ = try ledger.append(NewEvent(kind: .scanned, vm: id, payload: payload))
        }
        return vms
    }
}
