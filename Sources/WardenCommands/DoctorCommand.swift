import ArgumentParser
import Foundation
import Ledger
import WardenCore
import WardenServices

/// `warden doctor`: finds and cleans what interrupted Warden commands left behind.
struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Clean up after interrupted copies and clones: staged files left by a killed warden.",
        discussion: """
        `vm copy` and `vm clone` write new disks under hidden names (.NAME.warden-VMID) and link them \
        into place in the same ledger transaction that records them. A process killed on the way \
        leaves the hidden file, and at most a final name that the ledger does not know. doctor looks \
        in every folder that holds a ledger disk, and in the folders given: a leftover whose VM is \
        in the ledger loses its hidden name; any other is removed with its final name. Folders \
        where a copy or clone is running are skipped. The next copy or clone into a folder does the same.
        """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "More folders to look in (for example a copy's destination).") var folders: [String] = []
    @Flag(help: "Print JSON (schema warden.doctor/v1).") var json = false

    struct Doc: Encodable {
        var schema = "warden.doctor/v1"
        var leftovers: [Staging.Leftover]
    }

    func run() throws {
        let store = try database.open(create: false)
        let found = try Upkeep.recoverLeftovers(store: store, directories: folders)
        try Output.render(Doc(leftovers: found), json: json) {
            if found.isEmpty { Output.stdout.line("no leftovers"); return }
            for l in found {
                Output.stdout.line(oneLine("\(l.action == "committed" ? "removed staging name" : "rolled back") \(l.temp)\(l.action == "committed" ? "" : " (and \(l.final) if it was linked)")"))
            }
        }
    }
}
