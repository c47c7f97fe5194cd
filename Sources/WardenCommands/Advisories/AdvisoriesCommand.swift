import ArgumentParser
import Foundation
import WardenConfig
import WardenCore
import Advisories
import Ledger
import AdvisoryStorage

/// `warden advisories import|update|status`.
struct AdvisoriesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "advisories",
        abstract: "Import, update and list security advisories (OSV, Debian Security Tracker, Alpine secdb).",
        discussion: "Formats, ecosystems and matching rules: docs/advisories.md.",
        subcommands: [Import.self, Update.self, Status.self]
    )

    struct ImportResult: Encodable {
        var path: String
        var formats: [String]
        var counts: ImportCounts
    }

    /// Imports `path` into `store`, recording each source it held.
    static func importPath(_ path: String, location: String, store: AdvisoryStore, meter: ProgressMeter? = nil) throws -> ImportResult {
        var total = ImportCounts()
        var bySource: [String: (AdvisoryFormat, ImportCounts)] = [:]
        let formats = try AdvisoryImporter.read(path: path) { records, format in
            var groups: [String: [AdvisoryRecord]] = [:]
            for r in records { groups[r.source, default: []].append(r) }
            if records.isEmpty { groups[format == .debianTracker ? DebianTracker.source : format.rawValue] = [] }
            for (source, recs) in groups {
                let c = try store.importRecords(recs, file: path)
                meter?.advance(by: UInt64(recs.count))
                total = total + c
                bySource[source] = (format, (bySource[source]?.1 ?? ImportCounts()) + c)
            }
        }
        for (source, (format, counts)) in bySource {
            try store.recordSource(name: source, format: format, location: location, counts: counts)
        }
        return ImportResult(path: location, formats: formats.map(\.rawValue).sorted(), counts: total)
    }

    static func printImport(_ r: ImportResult) {
        let c = r.counts
        Output.stdout.line(oneLine("\(r.path): \(r.formats.joined(separator: ", ")), \(c.seen) records: \(c.added) added, \(c.replaced) replaced, \(c.unchanged) unchanged, \(c.older) older ignored"))
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "import",
            abstract: "Import advisory files: OSV JSON (files, directories, all.zip), Debian tracker JSON, Alpine secdb JSON.",
            discussion: """
                Re-importing is idempotent; a record with a newer `modified` replaces the stored one.
                
                Example:
                  warden advisories import all.zip debian-tracker.json
                """
        )
        @OptionGroup var database: DatabaseOption
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "Files, directories or zip archives.") var paths: [String]

        func validate() throws { if paths.isEmpty { throw ValidationError("name at least one file") } }

        func run() throws {
            let store = SQLiteAdvisoryStore(try database.open())
            var results: [ImportResult] = []
            var failures: [WardenError] = []
            let meter = ProgressMeter("advisories import", unit: .items("records"))
            defer { meter.finish() }
            for p in paths {
                do {
                    results.append(try AdvisoriesCommand.importPath(p, location: p, store: store, meter: meter))
                } catch let e as WardenError {
                    failures.append(e.inFile(p))
                }
            }
            struct Doc: Encodable { var schema = "warden.advisories-import/v1"; var imports: [ImportResult]; var advisories: Int }
            try Output.render(Doc(imports: results, advisories: try store.advisoryCount()), json: json) {
                results.forEach(AdvisoriesCommand.printImport)
            }
            Output.stdout.flush()
            for e in failures { Output.error(e.description) }
            if let worst = failures.max(by: { $0.exitCode < $1.exitCode }) { throw ExitCode(worst.exitCode) }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Sources, record counts, import times, advisories per ecosystem.",
            discussion: """
                Example:
                  warden advisories status
                """)
        @OptionGroup var database: DatabaseOption
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let store = SQLiteAdvisoryStore(try database.open())
            let sources = try store.sources()
            let ecos = try store.ecosystemCounts()
            let total = try store.advisoryCount()
            struct Eco: Encodable { var ecosystem: String; var advisories: Int }
            struct Doc: Encodable {
                var schema = "warden.advisories-status/v1"
                var advisories: Int
                var sources: [AdvisorySourceStatus]
                var ecosystems: [Eco]
                var inventories: Int
            }
            try Output.render(Doc(advisories: total, sources: sources, ecosystems: ecos.map { Eco(ecosystem: $0.0, advisories: $0.1) },
                                                   inventories: try store.inventoryCount()), json: json) {
                Output.stdout.line("advisories: \(total)")
                if sources.isEmpty { Output.stdout.line("no sources imported (warden advisories import PATH, or warden advisories update)") }
                let fmt = ISO8601DateFormatter()
                for s in sources {
                    Output.stdout.line(oneLine("source \(s.name) (\(s.format)): \(s.records) records, \(s.withdrawn) withdrawn; imported \(fmt.string(from: s.importedAt)) from \(s.location)"))
                }
                for e in ecos { Output.stdout.line(oneLine("ecosystem \(e.0): \(e.1) advisories")) }
            }
        }
    }
}
