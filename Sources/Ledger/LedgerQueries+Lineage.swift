import Foundation
import WardenCore

// MARK: - Lineage

/// A snapshot as lineage shows it.
public struct LineageSnapshot: Codable, Sendable, Equatable {
    public var name: String
    public var generation: UUID
    public var createdAt: Date
}

/// One change of a VM's generation: creation, rollback, restore, clone or copy.
public struct GenerationStep: Codable, Sendable, Equatable {
    public var generation: UUID
    /// The generation this one branched from: the previous one, or, for a rollback,
    /// the generation captured by the snapshot rolled back to.
    public var parentGeneration: UUID?
    public var kind: EventKind
    public var seq: Int64
    public var time: Date
    /// The snapshot rolled back to, when the payload names one.
    public var snapshot: String?

    public init(generation: UUID, parentGeneration: UUID?, kind: EventKind, seq: Int64, time: Date, snapshot: String?) {
        self.generation = generation; self.parentGeneration = parentGeneration; self.kind = kind
        self.seq = seq; self.time = time; self.snapshot = snapshot
    }
}

/// One VM in a lineage tree.
public struct LineageNode: Codable, Sendable, Equatable {
    public enum Role: String, Codable, Sendable { case ancestor, `self`, descendant }
    public var id: VMID
    public var name: String
    public var owner: String
    public var state: VMState
    public var generation: UUID
    public var parent: VMID?
    public var parentGeneration: UUID?
    public var createdAt: Date
    public var role: Role
    /// Distance from the root (0 for the root).
    public var depth: Int
    /// How the VM came to be: the kind of its first event (`registered`, `cloned`, `copied`…).
    public var relation: String
    public var snapshots: [LineageSnapshot]
    /// Generation changes in log order; a rollback shows as a branch from a snapshot's generation.
    public var generations: [GenerationStep]
}

/// `warden vm lineage VM`: the queried VM's ancestors (up to the root) and all its descendants.
public struct Lineage: Codable, Sendable, Equatable {
    public var schema = "warden.lineage/v1"
    public var vm: VMID
    public var root: VMID
    /// Depth-first from the root: a node comes after its parent, siblings by creation time.
    public var nodes: [LineageNode]
}

extension LedgerQueries {
    /// The tree of `id`'s ancestors and descendants, with snapshots and generation branches.
    ///
    /// Read as one lineage family (the root and all its descendants, one range of the family
    /// index), then walked in memory: no query per generation of the tree.
    public func lineage(of id: VMID, maxNodes: Int = 100_000) throws -> Lineage {
        guard let members = try family(of: id, limit: maxNodes) else { throw WardenError.notFound("no VM \(id)") }
        var byID: [VMID: FamilyMember] = [:]
        byID.reserveCapacity(members.count)
        for m in members { byID[m.id] = m }
        guard let me = byID[id] else { throw WardenError.notFound("no VM \(id)") }
        // Ancestors, nearest first, then root first.
        var seen: Set<VMID> = [id]
        var chain = [me]
        while let p = chain.last!.parent {
            guard let a = byID[p] else {
                throw WardenError(.corrupt, "the lineage of \(id) names parent \(p), which is not in its family")
            }
            guard seen.insert(a.id).inserted else { throw WardenError(.corrupt, "the lineage of \(id) has a cycle at \(a.id)") }
            chain.append(a)
        }
        let ordered = Array(chain.reversed())
        // Descendants: the family's members below `id`.
        var kids: [VMID: [FamilyMember]] = [:]
        for m in members { if let p = m.parent { kids[p, default: []].append(m) } }
        var frontier = [id]
        while let v = frontier.popLast() {
            for c in kids[v] ?? [] where seen.insert(c.id).inserted { frontier.append(c.id) }
        }
        let all = Array(seen)
        var steps = try generationEvents(of: all)
        var snaps: [VMID: [SnapshotRecord]] = [:]
        for s in try snapshots(ofVMs: all) { snaps[s.vm, default: []].append(s) }
        func node(_ r: FamilyMember, role: LineageNode.Role, depth: Int) -> LineageNode {
            let mine = (snaps[r.id] ?? []).sorted { ($0.createdAt, $0.name) < ($1.createdAt, $1.name) }
            let events = steps.removeValue(forKey: r.id) ?? []
            var out: [GenerationStep] = []
            for e in events {
                var step = e
                if e.kind == .rolledBack, let name = e.snapshot,
                   let s = mine.last(where: { $0.name == name && $0.createdAt <= e.time }) ?? mine.last(where: { $0.name == name }) {
                    step.parentGeneration = s.generation
                }
                if e.kind != .rolledBack { step.snapshot = nil }
                out.append(step)
            }
            return LineageNode(id: r.id, name: r.name, owner: r.owner, state: r.state, generation: r.generation,
                               parent: r.parent, parentGeneration: r.parentGeneration, createdAt: r.createdAt,
                               role: role, depth: depth, relation: events.first?.kind.rawValue ?? "unknown",
                               snapshots: mine.map { LineageSnapshot(name: $0.name, generation: $0.generation, createdAt: $0.createdAt) },
                               generations: out)
        }
        var nodes: [LineageNode] = []
        nodes.reserveCapacity(seen.count)
        for (i, a) in ordered.enumerated() {
            nodes.append(node(a, role: a.id == id ? .self : .ancestor, depth: i))
        }
        // Depth-first below `id`, siblings by creation time then id.
        var stack: [(FamilyMember, Int)] = (kids[id] ?? []).sorted(by: Self.older).reversed().map { ($0, ordered.count) }
        while let (r, d) = stack.popLast() {
            nodes.append(node(r, role: .descendant, depth: d))
            for c in (kids[r.id] ?? []).sorted(by: Self.older).reversed() { stack.append((c, d + 1)) }
        }
        return Lineage(vm: id, root: ordered[0].id, nodes: nodes)
    }

    static func older(_ a: FamilyMember, _ b: FamilyMember) -> Bool { (a.createdAt, a.id) < (b.createdAt, b.id) }
}
