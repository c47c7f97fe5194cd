import Foundation
import WardenCore

/// What a host's agent keeps beside the ledger (`agent/state.json`): the last local sequence
/// number the server acknowledged, when it last pulled the fleet's facts, and how old those
/// facts may be before decisions that need them fail closed. The agent writes it; the ledger
/// (and so the libvirt hook) reads it, without the network.
public struct FleetSyncState: Codable, Sendable, Equatable {
    public var ackedSeq: Int64
    /// Microseconds since the epoch of the last successful pull; nil: never.
    public var lastPullUs: Int64?
    /// Seconds the pulled facts stay good (`warden agent enrol --max-staleness`).
    public var maxStalenessSeconds: Double?
    /// Where the pull of the fleet's advisories stopped (the server's opaque cursor).
    public var advisoryCursor: String?
    /// The revision of the fleet policy installed here.
    public var policyRevision: String?
    /// Inventories stored here at or before this time (seconds) were reported to the server.
    public var inventoriesReportedUntil: Double?

    public init(ackedSeq: Int64, lastPullUs: Int64? = nil, maxStalenessSeconds: Double? = nil,
                advisoryCursor: String? = nil, policyRevision: String? = nil) {
        self.ackedSeq = ackedSeq; self.lastPullUs = lastPullUs; self.maxStalenessSeconds = maxStalenessSeconds
        self.advisoryCursor = advisoryCursor; self.policyRevision = policyRevision
    }

    public static let defaultMaxStaleness: Double = 300

    /// `agent/` beside the database.
    public static func directory(databasePath: String) -> String {
        let dir = (databasePath as NSString).deletingLastPathComponent
        return (dir.isEmpty ? "." : dir) + "/agent"
    }

    /// The state in `directory`, nil when there is none (or it cannot be read).
    public static func read(directory: String) -> FleetSyncState? {
        guard let d = FileManager.default.contents(atPath: directory + "/state.json"), d.count < 65536 else { return nil }
        return try? JSONDecoder().decode(FleetSyncState.self, from: d)
    }
}

/// How fresh this host's copy of the fleet's facts is.
public struct FleetFreshness: Sendable, Equatable {
    /// When the agent last pulled from the server; nil: never.
    public var lastPull: Date?
    public var bound: TimeInterval

    /// Throws `.unavailable` with a reason that says so when the facts are older than the bound
    /// (or were never pulled): rules that need fleet facts then fail closed.
    public func requireFresh(now: Date = Date()) throws {
        guard let lastPull else {
            throw WardenError(.unavailable, "this host is enrolled in a fleet but has never pulled the fleet's VMs (run warden agent)")
        }
        let age = now.timeIntervalSince(lastPull)
        if age > bound {
            throw WardenError(.unavailable, "the fleet's facts on this host are \(Int(age)) s old, more than the \(Int(bound)) s allowed (is warden agent running?)")
        }
    }
}
