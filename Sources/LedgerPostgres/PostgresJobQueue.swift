import Foundation
import PostgresNIO
import Ledger
import WardenCore

/// The job queue on PostgreSQL: claims lock the rows they take and skip the rows other
/// claimers hold (`FOR UPDATE SKIP LOCKED`), so any number of agents and server replicas
/// share it without taking a job twice.
public struct PostgresJobQueue: JobQueue {
    public let store: PostgresStore
    public init(store: PostgresStore) { self.store = store }

    static let columns = "id, kind, host, target, state, attempts, lease_owner, lease_until_us, created_us, finished_us, result"

    func job(_ row: PostgresRow) throws -> Job {
        let c = Cells(row, "jobs", store.location)
        guard let kind = Job.Kind(rawValue: try c.get("kind")), let state = Job.State(rawValue: try c.get("state")) else {
            throw WardenError(.corrupt, "a jobs row has an unknown kind or state", file: store.location)
        }
        return Job(id: try c.get("id"), kind: kind, host: try c.optional("host"), target: try c.get("target"), state: state,
                   attempts: Int(try c.get("attempts", Int32.self)), leaseOwner: try c.optional("lease_owner"),
                   leaseUntil: try c.optionalTime("lease_until_us"), createdAt: try c.time("created_us"),
                   finishedAt: try c.optionalTime("finished_us"), result: try c.optional("result"))
    }

    public func enqueue(_ kind: Job.Kind, host: String?, target: String, at now: Date) throws -> (job: Job, created: Bool) {
        try JobQueueLimits.check(host: host, target: target)
        return try store.transaction {
            // One open job per (kind, host, target): racing enqueuers serialise on its key.
            try store.query("SELECT pg_advisory_xact_lock(hashtextextended(\("job:\(kind.rawValue):\(host ?? ""):\(target)"), 0))")
            if let row = try store.query("""
                SELECT \(unescaped: Self.columns) FROM jobs
                WHERE kind = \(kind.rawValue) AND host IS NOT DISTINCT FROM \(host) AND target = \(target) AND state IN ('queued', 'leased')
                """).first {
                return (try job(row), false)
            }
            let row = try store.query("""
                INSERT INTO jobs (kind, host, target, state, attempts, created_us)
                VALUES (\(kind.rawValue), \(host), \(target), 'queued', 0, \(LedgerTime.micros(now)))
                RETURNING \(unescaped: Self.columns)
                """)
            return (try job(row[0]), true)
        }
    }

    public func claim(host: String?, worker: String, lease: TimeInterval, limit: Int, at now: Date) throws -> [Job] {
        try JobQueueLimits.check(host: host, worker: worker, lease: lease, limit: limit)
        let t = LedgerTime.micros(now), until = LedgerTime.micros(now + lease)
        return try store.query("""
            UPDATE jobs SET state = 'leased', lease_owner = \(worker), lease_until_us = \(until), attempts = attempts + 1
            WHERE id IN (
                SELECT id FROM jobs
                WHERE host IS NOT DISTINCT FROM \(host) AND (state = 'queued' OR (state = 'leased' AND lease_until_us < \(t)))
                ORDER BY id
                FOR UPDATE SKIP LOCKED
                LIMIT \(limit))
            RETURNING \(unescaped: Self.columns)
            """).map(job).sorted { $0.id < $1.id }
    }

    public func complete(_ id: Int64, worker: String, result: String, at now: Date) throws -> Bool {
        let t = LedgerTime.micros(now)
        return !(try store.query("""
            UPDATE jobs SET state = 'done', finished_us = \(t), result = \(String(result.prefix(4096))), lease_until_us = NULL
            WHERE id = \(id) AND state = 'leased' AND lease_owner = \(worker) AND lease_until_us >= \(t)
            RETURNING id
            """)).isEmpty
    }

    public func fail(_ id: Int64, worker: String, reason: String, at now: Date) throws -> Bool {
        let t = LedgerTime.micros(now), max = JobQueueLimits.maxAttempts
        return !(try store.query("""
            UPDATE jobs SET state = CASE WHEN attempts >= \(max) THEN 'failed' ELSE 'queued' END,
                   finished_us = CASE WHEN attempts >= \(max) THEN \(t) ELSE NULL END,
                   result = \(String(reason.prefix(4096))), lease_owner = NULL, lease_until_us = NULL
            WHERE id = \(id) AND state = 'leased' AND lease_owner = \(worker) AND lease_until_us >= \(t)
            RETURNING id
            """)).isEmpty
    }

    public func job(_ id: Int64) throws -> Job? {
        try store.query("SELECT \(unescaped: Self.columns) FROM jobs WHERE id = \(id)").first.map(job)
    }

    public func jobs(state: Job.State?, limit: Int) throws -> [Job] {
        try store.query("""
            SELECT \(unescaped: Self.columns) FROM jobs WHERE \(state == nil) OR state = \(state?.rawValue ?? "")
            ORDER BY id DESC LIMIT \(Swift.max(1, Swift.min(limit, 10_000)))
            """).map(job)
    }

    public func depth() throws -> [Job.State: Int] {
        var out: [Job.State: Int] = [:]
        for row in try store.query("SELECT state, count(*) FROM jobs GROUP BY state") {
            let (s, n) = try row.decode((String, Int64).self)
            if let state = Job.State(rawValue: s) { out[state] = Int(n) }
        }
        return out
    }
}

