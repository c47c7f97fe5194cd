import Crypto
import Foundation
import GRDB
import WardenCore

/// Writes ledger events as in-toto Statement v1 JSON lines.
///
/// ```
/// {"_type":"https://in-toto.io/Statement/v1",
///  "predicate":{"entry":"<canonical entry>","event":{…},"leaf_hash":"…","seq":N},
///  "predicateType":"https://warden.dev/attestation/ledger-event/v1",
///  "subject":[{"digest":{"sha256":"<SHA-256 of the uri>"},"name":"vm","uri":"urn:uuid:<vm>"},
///             {"digest":{"sha256":"<fingerprint>"},"name":"disk0:/path/to/disk.qcow2"}, …]}
/// ```
///
/// A subject must carry a digest; a VM's identity is a UUID, not content, so its subject
/// carries the UUID as a `urn:uuid:` URI and, as digest, the SHA-256 of that URI's text.
/// Disks are those recorded for the VM now, with their content fingerprints (disks without
/// a fingerprint are left out). Events without a VM have only a subject naming the ledger
/// entry (`urn:warden:ledger-entry:<seq>`, digest = the leaf hash).
public struct LedgerExporter {
    public static let statementType = "https://in-toto.io/Statement/v1"
    public static let predicateType = "https://warden.dev/attestation/ledger-event/v1"

    public let ledger: SQLiteLedger
    public init(ledger: SQLiteLedger) { self.ledger = ledger }

    /// The canonical entry of an events row (columns: seq, kind, vm, actor, host, time_us,
    /// generation_before, generation_after, payload, reported, leaf_hash), from the stored bytes.
    static func encodeRow(_ r: Row, seq: Int64, into entry: inout [UInt8]) {
        let empty = Data()
        LedgerEntry.encode(into: &entry, seq: seq, kind: r.dataNoCopy(atIndex: 1) ?? empty, vm: r.dataNoCopy(atIndex: 2),
                           actor: r.dataNoCopy(atIndex: 3) ?? empty, host: r.dataNoCopy(atIndex: 4) ?? empty,
                           timeMicros: r[5], generationBefore: r.dataNoCopy(atIndex: 6), generationAfter: r.dataNoCopy(atIndex: 7),
                           payloadText: r.dataNoCopy(atIndex: 8) ?? empty, reported: (r[9] as Int64) != 0)
    }

    public func export(vm: VMID? = nil, fromSeq: Int64 = 1, line: ([UInt8]) throws -> Void) throws {
        var subjects: [String: [UInt8]] = [:]
        var start = max(fromSeq, 1) - 1
        let size = try ledger.eventCount()
        let chunk: Int64 = 10_000
        while start < size {
            let end = min(start + chunk, size)
            try ledger.database.read { db in
                let sql = vm == nil
                    ? "SELECT seq, kind, vm, actor, host, time_us, generation_before, generation_after, payload, reported, leaf_hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq"
                    : "SELECT seq, kind, vm, actor, host, time_us, generation_before, generation_after, payload, reported, leaf_hash FROM events WHERE seq > ? AND seq <= ? AND vm = ? ORDER BY seq"
                var args: StatementArguments = [start, end]
                if let vm { args += [vm.description] }
                let rows = try Row.fetchCursor(db, sql: sql, arguments: args)
                var entry: [UInt8] = []
                while let r = try rows.next() {
                    let seq: Int64 = r[0]
                    entry.removeAll(keepingCapacity: true)
                    Self.encodeRow(r, seq: seq, into: &entry)
                    let leaf: Data = r[10]
                    let vmText: String? = r[2]
                    var o: [UInt8] = []
                    o.reserveCapacity(entry.count * 2 + 512)
                    o.append(contentsOf: #"{"_type":"#.utf8); LedgerEntry.writeString(Self.statementType, into: &o)
                    o.append(contentsOf: #","predicate":{"entry":"#.utf8); LedgerEntry.writeString(entry, into: &o)
                    o.append(contentsOf: #","event":"#.utf8); o.append(contentsOf: entry)
                    o.append(contentsOf: #","leaf_hash":"#.utf8); LedgerEntry.writeString(leaf.hexEncoded, into: &o)
                    o.append(contentsOf: #","seq":"#.utf8); LedgerEntry.writeInt(seq, into: &o)
                    o.append(contentsOf: #"},"predicateType":"#.utf8); LedgerEntry.writeString(Self.predicateType, into: &o)
                    o.append(contentsOf: #","subject":"#.utf8)
                    if let vmText {
                        if subjects[vmText] == nil {
                            subjects[vmText] = try Self.subjects(db, vm: vmText)
                            if subjects.count > 100_000 { subjects.removeAll() }
                        }
                        o.append(contentsOf: subjects[vmText]!)
                    } else {
                        let uri = "urn:warden:ledger-entry:\(seq)"
                        o.append(contentsOf: #"[{"digest":{"sha256":"#.utf8); LedgerEntry.writeString(leaf.hexEncoded, into: &o)
                        o.append(contentsOf: #"},"name":"ledger-entry","uri":"#.utf8); LedgerEntry.writeString(uri, into: &o)
                        o.append(contentsOf: "}]".utf8)
                    }
                    o.append(contentsOf: "}\n".utf8)
                    try line(o)
                }
            }
            start = end
        }
    }

    /// The subject array of a VM (sorted keys, compact).
    static func subjects(_ db: Database, vm: String) throws -> [UInt8] {
        var o: [UInt8] = []
        let uri = "urn:uuid:" + vm
        o.append(contentsOf: #"[{"digest":{"sha256":"#.utf8)
        LedgerEntry.writeString(Data(SHA256.hash(data: Data(uri.utf8))).hexEncoded, into: &o)
        o.append(contentsOf: #"},"name":"vm","uri":"#.utf8); LedgerEntry.writeString(uri, into: &o)
        o.append(0x7D)
        for r in try Row.fetchAll(db, sql: "SELECT idx, path, fingerprint FROM disks WHERE vm = ? AND fingerprint IS NOT NULL ORDER BY idx", arguments: [vm]) {
            guard let d = Digest(r[2] as String) else { continue }
            o.append(contentsOf: #",{"digest":{"#.utf8); LedgerEntry.writeString(d.algorithm, into: &o)
            o.append(0x3A); LedgerEntry.writeString(d.hex, into: &o)
            o.append(contentsOf: #"},"name":"#.utf8); LedgerEntry.writeString("disk\(r[0] as Int64):\(r[1] as String)", into: &o)
            o.append(0x7D)
        }
        o.append(0x5D)
        return o
    }
}
