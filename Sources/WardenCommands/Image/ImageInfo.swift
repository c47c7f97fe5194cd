import ArgumentParser
import Foundation
import WardenCore
import DiskImage
import Partitions
import GuestFS

/// `warden image info IMAGE`: format, sizes, backing chain, snapshots, partitions, filesystems.
struct ImageInfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show an image's format, sizes, backing chain, snapshots, partitions and filesystems.",
        discussion: """
            Examples:
              warden image info disk.qcow2
              warden image info --json --probe-backing overlay.qcow2
            """
    )

    @OptionGroup var image: ImageOptions

    @Option(help: "Describe the partitions and filesystems as they were at this internal snapshot.")
    var snapshot: String?

    @Flag(help: "Print JSON (schema: docs/json-schemas/image-info.v1.json).")
    var json = false

    /// The JSON document (`schema` = "warden.image.info/v1").
    struct Report: Encodable {
        var schema = "warden.image.info/v1"
        var image: ImageInfo
        var backingChain: [ImageInfo]
        var partitionTable: PartitionTable
        var volumes: [GuestVolume]
        var warnings: [String]
    }

    func run() throws {
        let img = try image.open(snapshot: snapshot)
        let layout: GuestDiskLayout
        do { layout = try GuestDisk.layout(of: img.device) } catch let e as WardenError { throw e.inFile(image.image) }
        let report = Report(image: img.info, backingChain: Array(img.chain.dropFirst()),
                            partitionTable: layout.table, volumes: layout.volumes, warnings: layout.warnings)
        try Output.render(report, json: json) {
            let out = Output.stdout
            let info = img.info
            out.line("image: \(info.path)")
            out.line("file format: \(info.format.rawValue)")
            out.line("virtual size: \(humanSize(info.virtualSize)) (\(info.virtualSize) bytes)")
            out.line("disk size: \(humanSize(info.allocatedSize))")
            for key in info.details.keys.sorted() {
                out.line("\(key): \(oneLine(info.details[key] ?? ""))")
            }
            if let backing = info.backingFile {
                out.line(oneLine("backing file: \(backing)" + (info.backingFormat.map { " (format: \($0))" } ?? "")))
            }
            if img.chain.count > 1 {
                out.line("backing chain:")
                for (i, link) in img.chain.enumerated() {
                    out.line(oneLine("  \(i): \(link.path) (\(link.format.rawValue), \(humanSize(link.virtualSize)))"))
                }
            }
            if !info.snapshots.isEmpty {
                out.line("snapshots:")
                out.line(table([["ID", "TAG", "VM SIZE", "DATE", "VM CLOCK"]] + info.snapshots.map { s in
                    [s.id, s.name, humanSize(s.vmStateSize), formatDate(s.dateSeconds), formatClock(s.vmClockNanoseconds)]
                }, indent: "  "))
            }
            let t = layout.table
            out.line("partition table: \(t.scheme.rawValue)" + (t.diskID.map { " (disk id \($0))" } ?? ""))
            for w in t.warnings { out.line(oneLine("  warning: \(w)")) }
            if !t.partitions.isEmpty {
                out.line(table([["#", "TYPE", "START", "SIZE", "NAME"]] + t.partitions.map { p in
                    ["\(p.index)", "\(p.typeName) (\(p.typeCode))", "\(p.start)", "\(p.size) (\(humanSize(p.size)))", p.name ?? ""]
                }, indent: "  "))
            }
            for w in layout.warnings { out.line(oneLine("warning: \(w)")) }
            let found = layout.volumes.filter { $0.filesystem != nil }
            out.line("filesystems:" + (found.isEmpty ? " none found" : ""))
            if !found.isEmpty {
                out.line(table([["VOLUME", "TYPE", "LABEL", "UUID"]] + found.map { v in
                    [v.displayName, v.filesystem?.type ?? "", v.filesystem?.label ?? "", v.filesystem?.uuid ?? ""]
                }, indent: "  "))
            }
        }
    }
}

/// Left-aligned columns separated by two spaces; no trailing spaces.
func table(_ rows: [[String]], indent: String = "") -> String {
    guard let cols = rows.map(\.count).max() else { return "" }
    // Cells may hold guest-controlled text (labels, partition names): keep each on one line.
    let rows = rows.map { $0.map(oneLine) }
    var widths = [Int](repeating: 0, count: cols)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    return rows.map { r in
        var line = indent
        for (i, c) in r.enumerated() {
            line += c
            if i < r.count - 1 { line += String(repeating: " ", count: widths[i] - c.count + 2) }
        }
        while line.hasSuffix(" ") { line.removeLast() }
        return line
    }.joined(separator: "\n")
}

func formatDate(_ seconds: UInt64) -> String {
    let f = DateFormatter()
    f.locale = Locale(identifier: "en_US_POSIX")
    f.timeZone = TimeZone(identifier: "UTC")
    f.dateFormat = "yyyy-MM-dd HH:mm:ss"
    return f.string(from: Date(timeIntervalSince1970: TimeInterval(seconds))) + "Z"
}

func formatClock(_ ns: UInt64) -> String {
    let total = ns / 1_000_000
    let ms = total % 1000, s = (total / 1000) % 60, m = (total / 60_000) % 60, h = total / 3_600_000
    func p(_ v: UInt64, _ w: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
    return "\(p(h, 4)):\(p(m, 2)):\(p(s, 2)).\(p(ms, 3))"
}

/// Guest-, feed- and user-controlled text on one terminal-safe line (``TerminalText/line(_:)``).
func oneLine(_ s: String) -> String { TerminalText.line(s) }
