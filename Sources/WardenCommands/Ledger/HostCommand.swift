import ArgumentParser
import Foundation
import Ledger
import WardenCore

/// `warden host …`: the hosts VMs run and are stored on.
struct HostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host", abstract: "Add and list hosts.",
        subcommands: [HostAdd.self, HostList.self])
}

struct HostAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Add a host to the ledger.")
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The host's name (one token, no spaces or '/').") var name: String
    @Option(name: .customLong("label"), help: ArgumentHelp("A label KEY=VALUE (repeatable).", valueName: "key=value"))
    var labels: [String] = []

    func validate() throws {
        guard HostName(name) != nil else { throw ValidationError("not a host name: \(oneLine(name))") }
        _ = try LabelArgument.parse(labels)
    }

    func run() throws {
        let store = try database.open(create: true)
        let host = HostName(name)!
        if try store.host(host) != nil { throw WardenError(.conflict, "host \(host) is already in the ledger") }
        try store.addHost(HostRecord(name: host, labels: try LabelArgument.parse(labels)))
        Output.stdout.line(host.value)
    }
}

struct HostList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the hosts.", aliases: ["ls"])
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "Print JSON (docs/json-schemas/host-list.v1.json).") var json = false

    struct HostJSON: Encodable {
        var name: String
        var labels: [String: String]
        var publicKey: String?
        var addedAt: Date
        func encode(to encoder: Encoder) throws {
            enum K: String, CodingKey { case name, labels, publicKey, addedAt }
            var c = encoder.container(keyedBy: K.self)
            try c.encode(name, forKey: .name); try c.encode(labels, forKey: .labels)
            try c.encode(publicKey, forKey: .publicKey); try c.encode(addedAt, forKey: .addedAt)
        }
    }
    struct Doc: Encodable { var schema = "warden.host-list/v1"; var hosts: [HostJSON] }

    func run() throws {
        let store = try database.open(create: false)
        let hosts = try store.listHosts().sorted { $0.name < $1.name }
        let doc = Doc(hosts: hosts.map { HostJSON(name: $0.name.value, labels: $0.labels,
                                                  publicKey: $0.publicKey?.base64EncodedString(), addedAt: $0.addedAt) })
        try Output.render(doc, json: json, style: .ledger) {
            var rows = [["NAME", "ADDED", "KEY", "LABELS"]]
            for h in hosts {
                rows.append([h.name.value, TimeArgument.format(h.addedAt), h.publicKey == nil ? "-" : "ed25519",
                             oneLine(h.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))])
            }
            for l in table(rows) { Output.stdout.line(l) }
        }
    }
}
